package worker_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// BenchmarkWorkerHeartbeats is message handling end to end through a real
// worker (decode, validate, coalesce into batches, store through the Lua
// scripts, reply), against a real redis-server and an embedded nats-server
// in this process: b.N messages are published as requests, with at most
// 4096 awaiting their reply, and the benchmark ends when every reply has
// come (a reply means the ids are stored; for new users the online events
// are still on their way through the outbox relay, which the bench command
// measures). The batch building and store path (execute, storeRun) is
// unexported, so it is measured through here. Each run of a case starts a
// worker of its own under a new key prefix.
//
//	go test -run '^$' -bench WorkerHeartbeats -benchmem ./worker/
//
// Everything (worker, NATS, client) shares this process and machine with
// redis-server: compare runs on one machine, not with the bench command.
func BenchmarkWorkerHeartbeats(b *testing.B) {
	r := testenv.StartRedis(b)
	n := testenv.StartNATS(b)
	cases := []struct {
		name  string
		batch int
		users int // distinct users cycled through; 0 means every id is new
	}{
		{"single-id/refresh", 1, 10000},
		{"single-id/new", 1, 0},
		{"batch-100/refresh", 100, 20000},
		{"batch-100/new", 100, 0},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			p := testenv.Prefix(b)
			subjects := contract.Subjects{Prefix: p}
			startBenchWorker(b, r, n, p+":", subjects)
			nc := n.Conn(b)
			req := newWindow(b, nc, 4096)
			payload := func(seq int) []byte {
				buf := make([]byte, 0, 16+c.batch*16)
				if c.batch == 1 {
					buf = append(buf, `{"userId":"u`...)
					buf = strconv.AppendInt(buf, int64(userOf(seq, c.users)), 10)
					return append(buf, `"}`...)
				}
				buf = append(buf, `{"userIds":[`...)
				for k := range c.batch {
					if k > 0 {
						buf = append(buf, ',')
					}
					buf = append(buf, `"u`...)
					buf = strconv.AppendInt(buf, int64(userOf(seq*c.batch+k, c.users)), 10)
					buf = append(buf, '"')
				}
				return append(buf, "]}"...)
			}
			if c.users > 0 { // the users are online before timing starts
				for seq := 0; seq*c.batch < c.users; seq++ {
					req.send(b, subjects.Heartbeat(), payload(seq))
				}
				req.wait(b)
			}
			// Not b.Loop: the timing must include waiting for the last
			// replies, after the loop.
			b.ResetTimer()
			for seq := range b.N {
				req.send(b, subjects.Heartbeat(), payload(seq))
			}
			req.wait(b)
			b.StopTimer()
			if f := req.failed.Load(); f > 0 {
				b.Fatalf("%d requests failed", f)
			}
			b.ReportMetric(float64(b.N*c.batch)/b.Elapsed().Seconds(), "ids/s")
		})
	}
}

// userOf maps the k-th id sent to a user: cycling over users, or always new.
func userOf(k, users int) int {
	if users == 0 {
		return k
	}
	return k % users
}

func startBenchWorker(b *testing.B, r *testenv.Redis, n *testenv.NATS, keyPrefix string, subjects contract.Subjects) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts, err := redis.ParseURL(r.URL())
	if err != nil {
		b.Fatal(err)
	}
	rdb, sub := redis.NewClient(opts), redis.NewClient(opts)
	store := presence.NewStore(rdb, presence.Options{Prefix: keyPrefix, TTL: time.Hour})
	if err := store.Ping(ctx); err != nil {
		b.Fatal(err)
	}
	bs := bus.New(bus.Options{URL: n.URL()})
	if err := bs.Start(ctx); err != nil {
		b.Fatal(err)
	}
	l := presence.NewExpiryListener(sub, presence.ExpiryOptions{UserPrefix: store.Keys().UserPrefix()})
	w := worker.New(store, store.Outbox(worker.ConsumerName()), bs, l, worker.Options{Subjects: subjects, Queue: "bench"})
	if err := w.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			b.Errorf("stop worker: %v", err)
		}
		_ = bs.Stop(ctx)
		_ = rdb.Close()
		_ = sub.Close()
	})
	testenv.Eventually(b, 5*time.Second, func() bool { return w.Ready() == nil }, "worker not ready: %v", w.Ready())
}

// window publishes requests with at most size awaiting a reply; every reply
// comes to one wildcard inbox.
type window struct {
	nc      *nats.Conn
	inbox   string
	slots   chan struct{}
	sent    atomic.Int64
	replies atomic.Int64
	failed  atomic.Int64
	seq     atomic.Int64
}

func newWindow(b *testing.B, nc *nats.Conn, size int) *window {
	w := &window{nc: nc, inbox: nats.NewInbox(), slots: make(chan struct{}, size)}
	sub, err := nc.Subscribe(w.inbox+".*", func(m *nats.Msg) {
		if len(m.Data) == 0 || m.Data[len(m.Data)-1] != '}' || containsError(m.Data) {
			w.failed.Add(1)
		}
		w.replies.Add(1)
		<-w.slots
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	return w
}

func containsError(data []byte) bool {
	const key = `"error"`
	for i := 0; i+len(key) <= len(data); i++ {
		if string(data[i:i+len(key)]) == key {
			return true
		}
	}
	return false
}

func (w *window) send(b *testing.B, subject string, data []byte) {
	w.slots <- struct{}{}
	w.sent.Add(1)
	if err := w.nc.PublishRequest(subject, fmt.Sprintf("%s.%d", w.inbox, w.seq.Add(1)), data); err != nil {
		b.Fatal(err)
	}
}

func (w *window) wait(b *testing.B) {
	deadline := time.Now().Add(time.Minute)
	for w.replies.Load() < w.sent.Load() {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d replies after a minute", w.replies.Load(), w.sent.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
