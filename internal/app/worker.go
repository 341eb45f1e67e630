package app

import (
	"log/slog"

	"go.uber.org/fx"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/worker"
)

// workerModule provides the *Worker and starts it with the application: it
// subscribes after the bus has connected and stops (draining its
// subscriptions and finishing work in flight) before the bus drains.
var workerModule = fx.Module("worker",
	fx.Provide(newWorker),
	fx.Invoke(func(*worker.Worker) {}),
)

// workerDeps are the worker's dependencies in the fx graph.
type workerDeps struct {
	fx.In
	Lifecycle fx.Lifecycle
	Config    config.Config
	Backend   *backend
	Bus       *bus.Bus
	Metrics   *metrics.Metrics
	Logger    *slog.Logger
}

// newWorker builds the worker from the presence and bus modules.
func newWorker(d workerDeps) *worker.Worker {
	lc, cfg, be, b, m, log := d.Lifecycle, d.Config, d.Backend, d.Bus, d.Metrics, d.Logger
	expiry := be.expiry
	w := worker.NewPartitioned(be.store, be.parts(worker.ConsumerName()), b, expiry, worker.Options{
		Subjects:          SubjectsFromConfig(cfg),
		Queue:             cfg.QueueGroup,
		MaxBatch:          cfg.MaxBatch,
		InFlight:          cfg.InFlight,
		IntakeBytes:       int64(cfg.IntakeMB) << 20,
		ReconcileInterval: cfg.ReconcileInterval,
		ClaimAfter:        cfg.OutboxClaimAfter,
		Logger:            log.With("component", "worker"),
		Metrics:           m,
	})
	m.Observe(metrics.Sources{
		NATSReconnects:       b.Reconnects,
		SubscriberReconnects: expiry.Reconnects,
		SlowConsumerDrops:    b.SlowConsumerDrops,
		ExpiryDropped:        expiry.Dropped,
		IntakeBytes:          func() int64 { now, _ := w.IntakeBytes(); return now },
		IntakeHighWater:      func() int64 { _, high := w.IntakeBytes(); return high },
		MirrorFailures:       be.mirrorFailures,
	})
	lc.Append(fx.StartStopHook(w.Start, w.Stop))
	return w
}
