package bus

import (
	"log/slog"
	"os"

	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
)

// Module provides the *Bus. It owns the NATS connection: connects in
// OnStart (failing within PRESENCE_CONNECT_TIMEOUT) and drains it in OnStop.
var Module = fx.Module("bus",
	fx.Provide(NewFromConfig),
)

// NewFromConfig returns a Bus for cfg tied to lc.
func NewFromConfig(lc fx.Lifecycle, cfg config.Config, log *slog.Logger) *Bus {
	host, _ := os.Hostname()
	b := New(Options{
		URL:            cfg.NATSURL,
		Name:           "presenced@" + host,
		ConnectTimeout: cfg.ConnectTimeout,
		Logger:         log.With("component", "bus"),
	})
	lc.Append(fx.Hook{OnStart: b.Start, OnStop: b.Stop})
	return b
}

// SubjectsFromConfig returns the subjects under cfg's prefix.
func SubjectsFromConfig(cfg config.Config) Subjects { return Subjects{Prefix: cfg.SubjectPrefix} }
