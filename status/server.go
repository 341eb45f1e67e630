// Package status serves presenced's HTTP endpoints on two addresses. The
// health and metrics endpoint (Server, HTTP_ADDR) serves Prometheus
// /metrics, /healthz (the process is alive) and /readyz (Redis, NATS and
// the expiry subscription are up), and nothing else: it may listen on every
// interface for probes and scrapes. The status address (PageServer,
// STATUS_ADDR) serves the status page, which shows user ids, and, when
// enabled, /debug/pprof (never /debug/pprof/cmdline, which would show
// secrets given as flags): only where the operator asks.
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

// Options configures the health and metrics endpoint.
type Options struct {
	Addr    string  // listen address, e.g. ":8080"
	Checks  []Check // all must pass for /readyz
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// OnFatal, if set, is called when serving fails after Start (the process
	// should shut down rather than run without health and metrics).
	OnFatal func(error)
	// Extra mounts more handlers on the same mux.
	Extra map[string]http.Handler
}

// Server is an HTTP endpoint. Start listens (failing fast if the address
// is taken) and serves on its own goroutine; Stop shuts down gracefully.
type Server struct {
	setting string // the setting naming the address, for errors
	addr    string
	log     *slog.Logger
	onFatal func(error)
	checks  []Check
	mux     *http.ServeMux
	srv     *http.Server
	ln      net.Listener
	done    chan struct{}
	// cancelRequests cancels the context of every request, so long-lived
	// streams (the status page's /events) end when Stop is called instead
	// of holding Shutdown until its deadline.
	cancelRequests context.CancelFunc
}

// New returns the health and metrics endpoint: /metrics, /healthz and
// /readyz. It does no I/O until Start.
func New(opts Options) *Server {
	s := newServer("HTTP_ADDR", opts.Addr, opts.Logger, opts.OnFatal)
	s.checks = opts.Checks
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Metrics.Registry, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.ready)
	for p, h := range opts.Extra {
		s.mux.Handle(p, h)
	}
	return s
}

// PageOptions configures the status address.
type PageOptions struct {
	Addr   string // listen address, e.g. "127.0.0.1:8081"
	Pprof  bool   // serve /debug/pprof (except cmdline)
	Logger *slog.Logger
	// OnFatal, if set, is called when serving fails after Start.
	OnFatal func(error)
}

// PageServer is the status address: the status page is mounted on it with
// Handle (the composition root, internal/app, mounts the page), and with PageOptions.Pprof the profiles of
// net/http/pprof. /debug/pprof/cmdline is always 404: the command line
// may hold passwords given as flags.
type PageServer struct {
	*Server
}

// NewPageServer returns the status address's server. It does no I/O until
// Start.
func NewPageServer(opts PageOptions) *PageServer {
	s := newServer("STATUS_ADDR", opts.Addr, opts.Logger, opts.OnFatal)
	if opts.Pprof {
		s.mux.HandleFunc("/debug/pprof/", pprof.Index)
		s.mux.Handle("/debug/pprof/cmdline", http.NotFoundHandler())
		s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		s.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return &PageServer{Server: s}
}

func newServer(setting, addr string, log *slog.Logger, onFatal func(error)) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{setting: setting, addr: addr, log: log, onFatal: onFatal, mux: http.NewServeMux()}
	base, cancel := context.WithCancel(context.Background())
	s.cancelRequests = cancel
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second,
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
	for _, c := range s.checks {
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

// Start listens on its address and serves until Stop.
func (s *Server) Start(context.Context) error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listen on %s %s: %w", s.setting, s.addr, err)
	}
	s.ln = ln
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server failed", "setting", s.setting, "err", err)
			if s.onFatal != nil {
				s.onFatal(err)
			}
		}
	}()
	s.log.Info("http listening", "setting", s.setting, "addr", ln.Addr().String())
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
