package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

// expectSessions checks that every id had exactly one online and one
// offline event, with increasing versions.
func (e *env) expectSessions(users []string, timeout time.Duration) {
	e.t.Helper()
	evs := e.waitEvents(2*len(users), timeout)
	counts := map[string]int{}
	for _, ev := range evs {
		counts[ev.UserID+":"+string(ev.Status)]++
	}
	for _, id := range users {
		if counts[id+":online"] != 1 || counts[id+":offline"] != 1 {
			e.t.Fatalf("user %s: %d online, %d offline events", id, counts[id+":online"], counts[id+":offline"])
		}
	}
	if len(evs) != 2*len(users) {
		e.t.Fatalf("%d events, want %d", len(evs), 2*len(users))
	}
	checkVersions(e.t, evs)
}

func TestKeyspacePathSurvivesPubsubKill(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 400*time.Millisecond)
	m := metrics.New()
	// Sweeps only at start (to set the marker), so expiries after that can
	// only be found through keyspace events.
	rep := e.startReplica(func(o *worker.Options, p *presence.Options) {
		o.ReconcileInterval = time.Hour
		o.Metrics = m
		p.OutageThreshold = 2 * time.Hour
	})
	ctx := context.Background()
	flags := e.rdb.ConfigGet(ctx, "notify-keyspace-events").Val()["notify-keyspace-events"]
	if flags != "xE" && flags != "Ex" {
		t.Fatalf("notify-keyspace-events = %q, want E and x merged in", flags)
	}
	round := func(name string, want int) {
		users := ids(name, 20)
		e.heartbeat(users...)
		testenv.Eventually(t, 20*time.Second, func() bool {
			return testutil.ToFloat64(m.Expiries.WithLabelValues("keyspace")) >= float64(want)
		}, "keyspace claims did not reach %d", want)
	}
	round("before", 20)
	for i := range 3 {
		n := e.rdb.ClientKillByFilter(ctx, "TYPE", "pubsub").Val()
		if n < 1 {
			t.Fatalf("CLIENT KILL TYPE pubsub killed %d clients", n)
		}
		testenv.Eventually(t, 10*time.Second, func() bool { return rep.listenerReconnects() >= int64(i+1) }, "listener did not reconnect")
		round(fmt.Sprintf("after%d", i), 20*(i+2))
	}
	e.expectSessions(append(append(append(ids("before", 20), ids("after0", 20)...), ids("after1", 20)...), ids("after2", 20)...), 10*time.Second)
}

func TestRedisRestartLosesNoOffline(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Second, testenv.WithAOF())
	e.startReplica()
	users := ids("r", 50)
	e.heartbeat(users...)
	e.waitEvents(len(users), 5*time.Second)
	// Restart while the sessions run out; the restarted Redis has no
	// notify-keyspace-events until the worker sets it again.
	e.redis.Restart(t)
	e.expectSessions(users, 30*time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return e.rdb.ConfigGet(context.Background(), "notify-keyspace-events").Val()["notify-keyspace-events"] != ""
	}, "notify-keyspace-events not restored after restart")
}

func TestDueWhileNoWorkerRan(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 300*time.Millisecond)
	rep := e.startReplica(func(_ *worker.Options, p *presence.Options) { p.OutageThreshold = time.Second })
	users := ids("gone", 10)
	e.heartbeat(users...)
	e.waitEvents(len(users), 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rep.w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Every deadline passes while no worker runs, for longer than the outage
	// threshold.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return e.rdb.Exists(ctx, e.prefix+"user:"+users[0]).Val() == 0
	}, "keys did not lapse")
	// Wait on Redis's clock until the gap since the last sweep exceeds the threshold.
	testenv.Eventually(t, 10*time.Second, func() bool {
		last, err := e.rdb.Get(ctx, e.prefix+"sweep").Int64()
		now, terr := e.rdb.Time(ctx).Result()
		return err == nil && terr == nil && now.UnixMilli()-last > 1200
	}, "no outage gap on the Redis clock")
	if n := e.count(); n != len(users) {
		t.Fatalf("%d events while no worker ran", n)
	}
	e.startReplica(func(_ *worker.Options, p *presence.Options) { p.OutageThreshold = time.Second })
	// After one TTL of grace the offline events come, once each.
	e.expectSessions(users, 10*time.Second)
}

func TestDataLossPublishesOneReset(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2*time.Second)
	resets := testenv.Collect(t, e.nats.Conn(t), e.subjects.Reset())
	e.startReplica()
	e.startReplica()
	users := ids("flush", 20)
	e.heartbeat(users...)
	e.waitEvents(len(users), 5*time.Second)
	// The first start on an empty data set is announced once.
	resets.WaitFor(t, 1, 5*time.Second)
	ctx := context.Background()
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// One reset for the loss, whichever replica or script notices it first.
	resets.WaitFor(t, 2, 10*time.Second)
	// Users still connected heartbeat again: one online each, and no offline
	// for anyone (their sessions are unknowable, not ended).
	e.heartbeat(users...)
	evs := e.waitEvents(2*len(users), 10*time.Second)
	for _, ev := range evs {
		if ev.Status != "online" {
			t.Fatalf("event after data loss: %+v", ev)
		}
	}
	// Before counting: both replicas have swept well after the flush (a
	// doubled reset would come from a sweep) and the outbox is fully relayed.
	after := e.rdb.Time(ctx).Val().Add(300 * time.Millisecond).UnixMilli()
	testenv.Eventually(t, 10*time.Second, func() bool {
		marker, err := e.rdb.Get(ctx, e.prefix+"sweep").Int64()
		pending := e.rdb.XPending(ctx, e.prefix+"outbox", "presenced").Val()
		return err == nil && marker > after && pending != nil && pending.Count == 0
	}, "sweeps or relay did not settle")
	if n := resets.Len(); n != 2 {
		t.Fatalf("%d reset events, want 2 (first start, then the flush)", n)
	}
	for _, m := range resets.Msgs() {
		var ev struct {
			Status, Reason string
			Version        int64
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Status != "reset" || ev.Reason != "data_loss" || ev.Version <= 0 {
			t.Fatalf("reset event %s: %v", m.Data, err)
		}
	}
}

func TestPubsubKilledRepeatedlyDuringExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Second)
	rep := e.startReplica()
	ctx := context.Background()
	var users []string
	// Waves of users expire while the subscriber connection is killed every
	// 150ms; the sweep and the reconnected listener race for the claims.
	for wave := range 10 {
		batch := ids(fmt.Sprintf("w%d", wave), 20)
		users = append(users, batch...)
		e.heartbeat(batch...)
		killed := e.rdb.ClientKillByFilter(ctx, "TYPE", "pubsub").Val()
		_ = killed // 0 when the listener is between connections
		testenv.Eventually(t, 5*time.Second, func() bool { return rep.listener.Connected() }, "listener not back")
		time.Sleep(150 * time.Millisecond) // kill pacing, not a wait for a condition
	}
	if rep.listenerReconnects() < 5 {
		t.Fatalf("listener reconnected %d times, want the kills to have hit it", rep.listenerReconnects())
	}
	e.expectSessions(users, 30*time.Second)
}

// Redis restarted from an RDB snapshot keeps the data-set marker but loses
// what happened after the snapshot: sessions whose onlines were published
// are gone without an offline. The relay sees the version clock below what
// it published and announces it: exactly one reset, above every version
// published before; then every session that survived in Redis is online
// again through an event after the reset (re-announced, or opened again by
// its user's heartbeats), and no second reset follows (two replicas check).
func TestPartialDataLossResetsAndReannounces(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3*time.Second)
	resets := testenv.Collect(t, e.nats.Conn(t), e.subjects.Reset())
	m := metrics.New()
	// Two replicas share the events to publish; whichever published lost
	// ones notices the loss, and one reset goes out.
	for range 2 {
		e.startReplica(func(o *worker.Options, p *presence.Options) {
			o.Metrics = m
			p.OutboxRetention = 30 * time.Second // the default
		})
	}
	ctx := context.Background()
	kept, later := ids("kept", 20), ids("later", 20)
	e.keepAlive(300*time.Millisecond, kept...)
	e.waitEvents(len(kept), 10*time.Second)
	resets.WaitFor(t, 1, 5*time.Second) // the first start on an empty data set
	if err := e.rdb.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// Online after the snapshot: published, then lost with the restart.
	e.keepAlive(300*time.Millisecond, later...)
	evs := e.waitEvents(len(kept)+len(later), 10*time.Second)
	var before int64
	for _, ev := range evs {
		before = max(before, ev.Version)
	}
	for _, m := range resets.Msgs() {
		before = max(before, decodeEvent(t, m.Data).Version)
	}
	e.redis.Restart(t) // reloads dump.rdb: the snapshot
	resets.WaitFor(t, 2, 15*time.Second)
	reset := decodeEvent(t, resets.Msgs()[1].Data)
	if reset.Status != "reset" || reset.Reason != "data_loss" || reset.Version <= before {
		t.Fatalf("reset %+v, want reason data_loss and a version above %d (every event published before)", reset, before)
	}
	// Every session open in Redis has an online event after the reset
	// carrying its version; every user still heartbeating is among them.
	store := presence.NewStore(e.rdb, presence.Options{Prefix: e.prefix, TTL: e.ttl})
	var missing []string
	var err error
	testenv.Eventually(t, 15*time.Second, func() bool {
		onlineAt := map[string]int64{} // user -> version of the latest online after the reset
		for _, ev := range e.received() {
			if ev.Status == "online" && ev.Version > reset.Version && ev.Version > onlineAt[ev.UserID] {
				onlineAt[ev.UserID] = ev.Version
			}
		}
		missing = missing[:0]
		all, err := store.GetAllOnlineUsers(ctx)
		if err != nil {
			missing = append(missing, err.Error())
			return false
		}
		open := map[string]bool{}
		for _, id := range all {
			open[id] = true
			st, err := store.Status(ctx, id)
			if err != nil || st.Version == 0 || onlineAt[id] != st.Version {
				missing = append(missing, fmt.Sprintf("%s (session %d, online after the reset %d)", id, st.Version, onlineAt[id]))
			}
		}
		for _, id := range append(slices.Clone(kept), later...) {
			if !open[id] {
				missing = append(missing, id+" (heartbeating, no session)")
			}
		}
		return len(missing) == 0
	}, "sessions without an online after the reset: %v", &missing)
	if n := testutil.ToFloat64(m.Events.WithLabelValues("online", "resync")); n < 1 {
		t.Fatalf("%v sessions re-announced, want the snapshot's", n)
	}
	// No second reset: the relay checks the clock every second.
	after := time.Now().Add(3 * time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return time.Now().After(after) }, "")
	if n := resets.Len(); n != 2 {
		t.Fatalf("%d reset events, want 2 (first start, then the loss)", n)
	}
	if v := e.rdb.Exists(ctx, e.prefix+"resync").Val(); v != 0 {
		t.Fatal("the re-announce walk did not finish")
	}
	// Each open session keeps exactly one index entry, with its new version.
	var f presence.Footprint
	testenv.Eventually(t, 10*time.Second, func() bool {
		f, err = store.Footprint(ctx)
		return err == nil && f.Sessions == int64(len(kept)+len(later)) && f.IndexEntries == f.Sessions && f.Count == f.Sessions
	}, "footprint %+v: want one index entry per open session", &f)
}

func decodeEvent(t *testing.T, data []byte) contract.Event {
	t.Helper()
	var ev contract.Event
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatalf("decode event %s: %v", data, err)
	}
	return ev
}
