// Package app is presenced's composition root: the only package that reads
// config and builds the fx application. Every other package (presence, bus,
// worker, status) exports plain constructors taking an Options struct and
// imports neither config nor go.uber.org/fx; this package maps the settings
// onto those Options and ties each component to the application's
// lifecycle. cmd/presenced runs it; the demo and the tests of the wiring
// use it too.
package app

import (
	"context"
	"log/slog"

	"github.com/redis/go-redis/v9"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/status"
	"github.com/presenced/presenced/worker"
)

// Modules is the whole worker for cfg, every component wired in one place,
// with extra options (a version, test hooks, fx.Populate) appended. cfg is
// validated when the application is built, so a hand-made Config fails
// fast with the same error as config.Load.
func Modules(cfg config.Config, log *slog.Logger, extra ...fx.Option) fx.Option {
	return fx.Options(
		fx.Provide(func() (config.Config, error) {
			if err := cfg.Validate(); err != nil {
				return config.Config{}, err
			}
			return cfg, nil
		}),
		fx.Supply(log),
		fx.WithLogger(func() fxevent.Logger {
			l := &fxevent.SlogLogger{Logger: log.With("component", "fx")}
			l.UseLogLevel(slog.LevelDebug)
			return l
		}),
		presenceModule,
		busModule,
		workerModule,
		statusModule,
		pageModule,
		fx.Provide(
			readiness("redis", func(rdb redis.UniversalClient) func(context.Context) error {
				return func(ctx context.Context) error { return rdb.Ping(ctx).Err() }
			}),
			readiness("worker", func(w *worker.Worker) func(context.Context) error {
				return func(context.Context) error { return w.Ready() }
			}),
		),
		fx.Options(extra...),
	)
}

// readiness adapts a dependency's check into the status "checks" group.
func readiness[T any](name string, f func(T) func(context.Context) error) any {
	return fx.Annotate(func(t T) status.Check { return status.Check{Name: name, Fn: f(t)} }, fx.ResultTags(`group:"checks"`))
}
