// Package status serves presenced's operational HTTP endpoint on one
// address: Prometheus /metrics, /healthz (the process is alive), /readyz
// (Redis, NATS and the expiry subscription are up) and, when enabled,
// /debug/pprof.
package status

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/presenced/presenced/metrics"
)

// Check reports why a dependency is not ready, or nil.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Options configures a Server.
type Options struct {
	Addr    string // listen address, e.g. ":8080"
	Pprof   bool
	Checks  []Check // all must pass for /readyz
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// OnFatal, if set, is called when serving fails after Start (the process
	// should shut down rather than run without health and metrics).
	OnFatal func(error)
	// Extra mounts more handlers (e.g. the status page) on the same mux.
	Extra map[string]http.Handler
}

// Server is the HTTP endpoint. Start listens (failing fast if the address
// is taken) and serves on its own goroutine; Stop shuts down gracefully.
type Server struct {
	opts Options
	mux  *http.ServeMux
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	// cancelRequests cancels the context of every request, so long-lived
	// streams (the status page's /events) end when Stop is called instead
	// of holding Shutdown until its deadline.
	cancelRequests context.CancelFunc
}

// New returns a Server; it does no I/O until Start.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	s := &Server{opts: opts, mux: mux}
	mux.HandleFunc("GET /readyz", s.ready)
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	for p, h := range opts.Extra {
		mux.Handle(p, h)
	}
	base, cancel := context.WithCancel(context.Background())
	s.cancelRequests = cancel
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		BaseContext: func(net.Listener) context.Context { return base }}
	return s
}

// Handle mounts h on pattern (http.ServeMux syntax), like Options.Extra, for
// handlers built after the Server (the status page). Safe to call at any
// time; call it before Start so that no request sees the route missing.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var failed []error
	for _, c := range s.opts.Checks {
		if err := c.Fn(ctx); err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", c.Name, err))
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(failed) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n", errors.Join(failed...))
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Addr returns the address listened on (after Start), useful with ":0".
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Start listens on Addr and serves until Stop.
func (s *Server) Start(context.Context) error {
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("listen on HTTP_ADDR %s: %w", s.opts.Addr, err)
	}
	s.ln = ln
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.opts.Logger.Error("http server failed", "err", err)
			if s.opts.OnFatal != nil {
				s.opts.OnFatal(err)
			}
		}
	}()
	s.opts.Logger.Info("http listening", "addr", ln.Addr().String())
	return nil
}

// Stop shuts the server down, bounded by ctx. It first cancels the context
// of the requests in flight, so those that watch it (SSE streams such as the
// status page's /events, pprof profiles, /readyz checks) return at once
// instead of holding the shutdown until ctx expires; the others finish.
func (s *Server) Stop(ctx context.Context) error {
	s.cancelRequests()
	if s.ln == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	<-s.done
	return err
}
