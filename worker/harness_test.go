package worker_test

import (
	"context"
	"encoding/json"
	"sort"
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

// env is one test's Redis, NATS, key prefix and subjects.
type env struct {
	t        *testing.T
	redis    *testenv.Redis
	nats     *testenv.NATS
	rdb      *redis.Client
	nc       *nats.Conn
	prefix   string // key prefix
	subjects contract.Subjects
	ttl      time.Duration
	online   *testenv.Collector
	offline  *testenv.Collector
	// masterAddr, with Sentinel, is the listeners' ExpiryOptions.MasterAddr.
	masterAddr func(context.Context) (string, error)
}

func newEnv(t *testing.T, ttl time.Duration, ropts ...testenv.RedisOption) *env {
	t.Helper()
	return newEnvWith(t, ttl, nil, ropts...)
}

// newEnvWith is newEnv with options for the NATS server.
func newEnvWith(t *testing.T, ttl time.Duration, nopts []testenv.NATSOption, ropts ...testenv.RedisOption) *env {
	t.Helper()
	r := testenv.StartRedis(t, ropts...)
	n := testenv.StartNATS(t, nopts...)
	p := testenv.Prefix(t)
	e := &env{t: t, redis: r, nats: n, rdb: r.Client(t), nc: n.Conn(t), prefix: p + ":", subjects: contract.Subjects{Prefix: p}, ttl: ttl}
	e.online = testenv.Collect(t, e.nc, e.subjects.Online())
	e.offline = testenv.Collect(t, e.nc, e.subjects.Offline())
	return e
}

type replica struct {
	w        *worker.Worker
	listener *presence.ExpiryListener
	store    *presence.Store
	bus      *bus.Bus
	rdb      *redis.Client
}

// startReplica starts one worker on its own Redis and NATS connections, as a
// separate process would. It stops at the end of the test.
func (e *env) startReplica(opt ...func(*worker.Options, *presence.Options)) *replica {
	e.t.Helper()
	return e.startReplicaVia(e.redis.URL(), e.nats.URL(), opt...)
}

// startReplicaVia is startReplica with other Redis and NATS URLs (a fault
// proxy in front of the real servers).
func (e *env) startReplicaVia(redisURL, natsURL string, opt ...func(*worker.Options, *presence.Options)) *replica {
	e.t.Helper()
	rdbOpts, err := redis.ParseURL(redisURL)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.startReplicaOn(redis.NewClient(rdbOpts), redis.NewClient(rdbOpts), natsURL, opt...)
}

// startReplicaOn is startReplica on the given Redis clients (the store's
// and the expiry listener's), which it closes when the test ends.
func (e *env) startReplicaOn(rdb, sub *redis.Client, natsURL string, opt ...func(*worker.Options, *presence.Options)) *replica {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	popts := presence.Options{Prefix: e.prefix, TTL: e.ttl, OutageThreshold: 3 * time.Second}
	wopts := worker.Options{Subjects: e.subjects, Queue: "q", ReconcileInterval: 50 * time.Millisecond, ClaimAfter: 2 * time.Second}
	for _, f := range opt {
		f(&wopts, &popts)
	}
	store := presence.NewStore(rdb, popts)
	if err := store.Ping(ctx); err != nil {
		e.t.Fatal(err)
	}
	b := bus.New(bus.Options{URL: natsURL, PingInterval: 300 * time.Millisecond})
	if err := b.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	l := presence.NewExpiryListener(sub, presence.ExpiryOptions{UserPrefix: store.Keys().UserPrefix(), HealthInterval: time.Second, MasterAddr: e.masterAddr})
	w := worker.New(store, store.Outbox(worker.ConsumerName()), b, l, wopts)
	if err := w.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	stopped := false
	rep := &replica{w: w, listener: l, store: store, bus: b, rdb: rdb}
	e.t.Cleanup(func() {
		if stopped {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			e.t.Errorf("stop worker: %v", err)
		}
		_ = b.Stop(ctx)
		_ = rdb.Close()
		_ = sub.Close()
	})
	testenv.Eventually(e.t, 5*time.Second, func() bool { return w.Ready() == nil }, "worker not ready: %v", w.Ready())
	return rep
}

func (r *replica) listenerReconnects() int64 { return r.listener.Reconnects() }

// request publishes a heartbeat or disconnect and returns the reply.
func (e *env) request(subject string, payload any) contract.Reply {
	e.t.Helper()
	data, ok := payload.([]byte)
	if !ok {
		var err error
		if data, err = json.Marshal(payload); err != nil {
			e.t.Fatal(err)
		}
	}
	msg, err := e.nc.Request(subject, data, 5*time.Second)
	if err != nil {
		e.t.Fatalf("request %s: %v", subject, err)
	}
	var r contract.Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		e.t.Fatalf("decode reply %q: %v", msg.Data, err)
	}
	return r
}

func (e *env) heartbeat(ids ...string) contract.Reply {
	e.t.Helper()
	return e.request(e.subjects.Heartbeat(), map[string]any{"userIds": ids})
}

func (e *env) disconnect(ids ...string) contract.Reply {
	e.t.Helper()
	return e.request(e.subjects.Disconnect(), map[string]any{"userIds": ids})
}

// received decodes every event collected so far.
func (e *env) received() []contract.Event {
	e.t.Helper()
	var out []contract.Event
	for _, m := range append(e.online.Msgs(), e.offline.Msgs()...) {
		var ev contract.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			e.t.Fatalf("decode event %q: %v", m.Data, err)
		}
		if m.Subject != e.subjects.Event(ev.Status) {
			e.t.Fatalf("event %+v on subject %s", ev, m.Subject)
		}
		if got, want := m.Header.Get(nats.MsgIdHdr), ev.MsgID(); got != want {
			e.t.Fatalf("Nats-Msg-Id %q, want %q", got, want)
		}
		out = append(out, ev)
	}
	return out
}

// waitEvents waits until n events arrived and returns them.
func (e *env) waitEvents(n int, timeout time.Duration) []contract.Event {
	e.t.Helper()
	testenv.Eventually(e.t, timeout, func() bool { return e.count() >= n }, "%d events after %v, want %d: %v", e.count(), timeout, n, summaryOf(e))
	return e.received()
}

// count is the number of events received so far.
func (e *env) count() int { return e.online.Len() + e.offline.Len() }

func summaryOf(e *env) []string { return summary(e.received()) }

// summary is "user:status:reason" per event, sorted, for exact comparisons.
func summary(evs []contract.Event) []string {
	out := make([]string, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.UserID+":"+string(ev.Status)+":"+string(ev.Reason))
	}
	sort.Strings(out)
	return out
}

// checkVersions fails unless each user's events alternate online/offline,
// starting with online, with strictly increasing versions.
func checkVersions(t *testing.T, evs []contract.Event) {
	t.Helper()
	byUser := map[string][]contract.Event{}
	for _, ev := range evs {
		byUser[ev.UserID] = append(byUser[ev.UserID], ev)
	}
	for u, list := range byUser {
		sort.Slice(list, func(i, j int) bool { return list[i].Version < list[j].Version })
		for i, ev := range list {
			want := "online"
			if i%2 == 1 {
				want = "offline"
			}
			if string(ev.Status) != want {
				t.Fatalf("user %s: event %d is %s, want %s (events %+v)", u, i, ev.Status, want, list)
			}
			if i > 0 && ev.Version <= list[i-1].Version {
				t.Fatalf("user %s: versions not increasing: %+v", u, list)
			}
		}
	}
}

// waitNoResidue waits until nothing per user is left in Redis: no open
// session, a zero count and an empty deadline index (stale index entries
// stay until their slot comes due, up to one TTL after the last session
// ended). The outbox is checked by the callers that need it.
func (e *env) waitNoResidue(timeout time.Duration) {
	e.t.Helper()
	store := presence.NewStore(e.rdb, presence.Options{Prefix: e.prefix, TTL: e.ttl})
	var f presence.Footprint
	testenv.Eventually(e.t, timeout, func() bool {
		var err error
		f, err = store.Footprint(context.Background())
		return err == nil && f.Sessions == 0 && f.Count == 0 && f.IndexEntries == 0 && f.Buckets == 0
	}, "presence data left behind: %+v", &f)
}
