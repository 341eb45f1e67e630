package app

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	"go.uber.org/fx"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/status"
)

// statusModule provides the metrics registry and the HTTP endpoint (when HTTP_ADDR
// is not "off"). Readiness checks come from the value group "checks": any
// module can add one with fx.Annotate(f, fx.ResultTags(`group:"checks"`)).
var statusModule = fx.Module("status",
	fx.Provide(metrics.New),
	fx.Provide(fx.Annotate(newStatusServer, fx.ParamTags(``, ``, ``, ``, ``, `group:"checks"`))),
	fx.Invoke(func(*status.Server) {}),
)

// newStatusServer returns the HTTP endpoint for cfg tied to lc; with HTTP_ADDR
// "off" it returns a Server that never listens.
// A serving failure after start shuts the application down with exit code 1.
func newStatusServer(lc fx.Lifecycle, sd fx.Shutdowner, cfg config.Config, m *metrics.Metrics, log *slog.Logger, checks []status.Check) *status.Server {
	s := status.New(status.Options{Addr: cfg.HTTPAddr, Checks: checks, Metrics: m, Logger: log.With("component", "status"),
		OnFatal: func(error) { _ = sd.Shutdown(fx.ExitCode(1)) }})
	if cfg.HTTPAddr != "" && cfg.HTTPAddr != "off" {
		lc.Append(fx.StartStopHook(s.Start, s.Stop))
	}
	return s
}

// pageModule serves the status page, and pprof when enabled, on the status
// address (STATUS_ADDR; see PageServer): it needs the *bus.Bus and the
// *presence.Store. With STATUS_ADDR "off" it does nothing.
var pageModule = fx.Module("statuspage",
	fx.Provide(newPageServer, newPage),
	fx.Invoke(func(s *status.PageServer, p *status.Page) { s.Handle("/", p.Handler()) }),
)

// newPageServer returns the status address's server for cfg tied
// to lc; with STATUS_ADDR "off" it returns one that never listens. A
// serving failure after start shuts the application down with exit code 1.
func newPageServer(lc fx.Lifecycle, sd fx.Shutdowner, cfg config.Config, log *slog.Logger) *status.PageServer {
	log = log.With("component", "statuspage")
	s := status.NewPageServer(status.PageOptions{Addr: cfg.StatusAddr, Pprof: cfg.Pprof, Logger: log,
		OnFatal: func(error) { _ = sd.Shutdown(fx.ExitCode(1)) }})
	if cfg.StatusAddr != "" {
		lc.Append(fx.Hook{
			OnStart: func(ctx context.Context) error {
				if err := s.Start(ctx); err != nil {
					return err
				}
				if !isLoopback(s.Addr()) {
					log.Warn("the status page shows user ids without authentication and listens beyond loopback; keep STATUS_ADDR private", "addr", s.Addr(), "pprof", cfg.Pprof)
				}
				return nil
			},
			OnStop: s.Stop,
		})
	}
	return s
}

// isLoopback reports whether addr (host:port, as listened on) is on a
// loopback interface only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// newPage returns the page for cfg: a consumer of the events through the
// Go client on the bus's connection, counting through the query service.
// It starts after the bus has connected and stops before it drains.
func newPage(lc fx.Lifecycle, cfg config.Config, b *bus.Bus, log *slog.Logger) *status.Page {
	p := status.NewPage(nil, nil, log.With("component", "statuspage"))
	if cfg.StatusAddr == "" {
		return p
	}
	lc.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			c := client.New(b.Conn(), client.WithPrefix(cfg.SubjectPrefix), client.WithLogger(log.With("component", "statuspage")))
			p.UseClient(c, c.Count)
			return p.Start(ctx)
		},
		OnStop: p.Stop,
	})
	return p
}
