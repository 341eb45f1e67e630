package worker

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"

	"go.uber.org/fx"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
)

// Module provides the *Worker and starts it with the application: it
// subscribes after the bus has connected and stops (draining its
// subscriptions and finishing work in flight) before the bus drains.
var Module = fx.Module("worker",
	fx.Provide(NewFromConfig),
	fx.Invoke(func(*Worker) {}),
)

// Deps are the worker's dependencies in the fx graph.
type Deps struct {
	fx.In
	Lifecycle fx.Lifecycle
	Config    config.Config
	Store     *presence.Store
	Expiry    *presence.ExpiryListener
	Bus       *bus.Bus
	Metrics   *metrics.Metrics
	Logger    *slog.Logger
}

// NewFromConfig builds the worker from the presence and bus modules.
func NewFromConfig(d Deps) *Worker {
	lc, cfg, store, expiry, b, m, log := d.Lifecycle, d.Config, d.Store, d.Expiry, d.Bus, d.Metrics, d.Logger
	w := New(store, store.Outbox(ConsumerName()), b, expiry, Options{
		Subjects:          bus.SubjectsFromConfig(cfg),
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
	})
	lc.Append(fx.StartStopHook(w.Start, w.Stop))
	return w
}

// ConsumerName is a name unique to this process for the outbox group:
// hostname, pid and a random suffix (pids repeat across containers).
func ConsumerName() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}
