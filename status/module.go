package status

import (
	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/metrics"
	"log/slog"
)

// Module provides the metrics registry and the HTTP endpoint (when HTTP_ADDR
// is not "off"). Readiness checks come from the value group "checks": any
// module can add one with fx.Annotate(f, fx.ResultTags(`group:"checks"`)).
var Module = fx.Module("status",
	fx.Provide(metrics.New),
	fx.Provide(fx.Annotate(NewFromConfig, fx.ParamTags(``, ``, ``, ``, ``, `group:"checks"`))),
	fx.Invoke(func(*Server) {}),
)

// NewFromConfig returns the HTTP endpoint for cfg tied to lc; with HTTP_ADDR
// "off" it returns a Server that never listens.
// A serving failure after start shuts the application down with exit code 1.
func NewFromConfig(lc fx.Lifecycle, sd fx.Shutdowner, cfg config.Config, m *metrics.Metrics, log *slog.Logger, checks []Check) *Server {
	s := New(Options{Addr: cfg.HTTPAddr, Checks: checks, Metrics: m, Logger: log.With("component", "status"),
		OnFatal: func(error) { _ = sd.Shutdown(fx.ExitCode(1)) }})
	if cfg.HTTPAddr != "" && cfg.HTTPAddr != "off" {
		lc.Append(fx.StartStopHook(s.Start, s.Stop))
	}
	return s
}
