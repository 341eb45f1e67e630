package client_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/query"
	"github.com/presenced/presenced/worker"
)

// presenced is a real presenced for a test or an example: its own
// redis-server and embedded NATS, one worker replica and the query service,
// all under one prefix. Everything stops when the test ends.
type presenced struct {
	nats     *testenv.NATS
	redis    *testenv.Redis
	rdb      *redis.Client
	store    *presence.Store
	prefix   string
	subjects contract.Subjects
}

// startPresenced starts it with prefix as both the subject prefix and (with
// ":") the key prefix, and waits until the worker is ready.
func startPresenced(t testing.TB, prefix string, ttl time.Duration) *presenced {
	t.Helper()
	return startPresencedWith(t, prefix, presence.Options{TTL: ttl})
}

// startPresencedWith starts it with the store's options (the gateway lease,
// the connection limit); their Prefix is set from prefix.
func startPresencedWith(t testing.TB, prefix string, opts presence.Options) *presenced {
	t.Helper()
	p := &presenced{nats: testenv.StartNATS(t), redis: testenv.StartRedis(t), prefix: prefix, subjects: contract.Subjects{Prefix: prefix}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	rdbOpts, err := redis.ParseURL(p.redis.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb, sub := redis.NewClient(rdbOpts), redis.NewClient(rdbOpts)
	p.rdb = rdb
	opts.Prefix = prefix + ":"
	store := presence.NewStore(rdb, opts)
	p.store = store
	if err := store.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	b := bus.New(bus.Options{URL: p.nats.URL()})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// On an empty Redis the worker announces the empty data set with a
	// reset before anything else; wait for it so that tests and examples
	// subscribing afterwards see only their own events.
	resets := testenv.Collect(t, p.nats.Conn(t), p.subjects.Reset())
	l := presence.NewExpiryListener(sub, presence.ExpiryOptions{UserPrefix: store.Keys().UserPrefix(), HealthInterval: time.Second})
	w := worker.New(store, store.Outbox(worker.ConsumerName()), b, l, worker.Options{Subjects: p.subjects, ReconcileInterval: 50 * time.Millisecond})
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			t.Errorf("stop worker: %v", err)
		}
		_ = b.Stop(ctx)
		_ = rdb.Close()
		_ = sub.Close()
	})
	// The service shares the worker's connection, as in presenced, and
	// stops before it (cleanups run last first).
	svc, err := query.Start(b.Conn(), store, query.Options{Subjects: p.subjects})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := svc.Stop(); err != nil {
			t.Errorf("stop query service: %v", err)
		}
	})
	testenv.Eventually(t, 5*time.Second, func() bool { return w.Ready() == nil }, "worker ready")
	resets.WaitFor(t, 1, 10*time.Second)
	return p
}

// exampleTB runs testenv outside a test, for the examples: cleanups run at
// close, a failure panics (failing the example). Only the methods testenv
// and startPresenced call are implemented; the others panic on the nil TB.
type exampleTB struct {
	testing.TB
	name     string
	cleanups []func()
}

func (e *exampleTB) Helper()          {}
func (e *exampleTB) Name() string     { return e.name }
func (e *exampleTB) Cleanup(f func()) { e.cleanups = append(e.cleanups, f) }

func (e *exampleTB) TempDir() string {
	dir, err := os.MkdirTemp("", "presenced-example-")
	if err != nil {
		e.Fatal(err)
	}
	e.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (e *exampleTB) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (e *exampleTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (e *exampleTB) Errorf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

func (e *exampleTB) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

// runPresenced starts presenced under the default prefix for an example and
// returns a connection to its NATS and a function that stops everything.
func runPresenced(name string) (nc *nats.Conn, shutdown func()) {
	tb := &exampleTB{name: name}
	p := startPresenced(tb, "presence", time.Minute)
	return p.nats.Conn(tb), tb.close
}
