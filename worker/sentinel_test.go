package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/app"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// TestSentinelFailoverCoveredByReset: one master, one replica, three
// sentinels (quorum 2) and three presenced replicas whose Redis clients
// are the product's (internal/app, REDIS_SENTINEL_* settings). The
// replica's replication link is cut (it can no longer authenticate to the
// master), so that what happens next exists on the master alone: users
// come online, users disconnect, and the relays publish those events.
// Then the master is SIGKILLed while users heartbeat; the sentinels
// promote the replica, which lacks those writes.
//
// Afterwards: the presenced replicas follow the new master (they left the
// queue group while Redis failed and rejoined), the expiry subscription is
// up again on it with the keyspace flags set; a reset is published above
// every version published before the kill; every session the new master
// holds ends with exactly one offline after the reset; users who kept
// heartbeating have no offline at all; and a consumer applying events by
// version (a reset drops the users below it) ends with the users Redis
// holds online, and no one else: what was lost was covered by the reset,
// not by silence.
func TestSentinelFailoverCoveredByReset(t *testing.T) {
	const ttl = 8 * time.Second // longer than the cut plus the failover, so heartbeating users never lapse
	ss := newSentinelSet(t, ttl)
	ctx := context.Background()
	master, mc, rc, client, n, e := ss.master, ss.mc, ss.rc, ss.client, ss.e.nats, ss.e
	resets := testenv.Collect(t, e.nc, e.subjects.Reset())
	var reps []*replica
	var ms []*metrics.Metrics
	for range 3 {
		m := metrics.New()
		ms = append(ms, m)
		reps = append(reps, e.startReplicaOn(client("presenced"), client("presenced-expiry"), n.URL(), func(o *worker.Options, _ *presence.Options) { o.Metrics = m }))
	}
	resets.WaitFor(t, 1, 5*time.Second) // the first start on an empty data set

	// Before the cut: sessions the replica will hold.
	keepers, expirers, early, late := ids("keep", 20), ids("exp", 20), ids("early", 10), ids("late", 10)
	e.keepAlive(300*time.Millisecond, keepers...)
	e.heartbeat(slices.Concat(expirers, early, late)...)
	e.disconnect(early...)
	e.online.WaitFor(t, 60, 10*time.Second)
	e.offline.WaitFor(t, 10, 10*time.Second)
	sent := replInfo(ctx, mc)["master_repl_offset"]
	testenv.Eventually(t, 10*time.Second, func() bool {
		return atoi(replInfo(ctx, rc)["slave_repl_offset"]) >= atoi(sent)
	}, "replica did not catch up with the master")

	// The cut: the replica's reconnections fail to authenticate.
	if err := rc.ConfigSet(ctx, "masterauth", "wrong").Err(); err != nil {
		t.Fatal(err)
	}
	if err := mc.ClientKillByFilter(ctx, "TYPE", "replica").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		return replInfo(ctx, rc)["master_link_status"] == "down"
	}, "replica still linked to the master")

	// On the master alone: new users, some of whom keep heartbeating, and
	// disconnects of sessions the replica holds. Their events go out.
	ghosts, lateKeepers := ids("ghost", 10), ids("lkeep", 10)
	e.heartbeat(ghosts...)
	e.keepAlive(300*time.Millisecond, lateKeepers...)
	e.disconnect(late...)
	e.online.WaitFor(t, 80, 10*time.Second)
	e.offline.WaitFor(t, 20, 10*time.Second)
	var before int64 // the highest version published before the kill
	for _, ev := range append(e.received(), decodeAll(t, resets.Msgs())...) {
		before = max(before, ev.Version)
	}

	killed := time.Now()
	master.Stop(t)
	ss.waitPromoted()
	t.Logf("failover: the sentinels name the standby %s after the kill", time.Since(killed).Round(10*time.Millisecond))

	// Settled: the walk after the reset is done, every user that is not
	// heartbeating has its last event an offline above the last reset or
	// is below that reset, and Redis holds exactly the heartbeating users.
	online := slices.Concat(keepers, lateKeepers)
	store := presence.NewStore(e.rdb, presence.Options{Prefix: e.prefix, TTL: ttl})
	why := []string{""} // a slice, so that the message shows the last reason
	testenv.Eventually(t, 40*time.Second, func() bool {
		why[0] = settled(ctx, e, store, resets, before, online)
		return why[0] == ""
	}, "not settled after the failover: %v", &why)
	t.Logf("settled %s after the kill", time.Since(killed).Round(10*time.Millisecond))
	// A doubled offline, a late republish or another reset would come
	// within a relay's check and a claim time.
	quiet := time.Now().Add(3 * time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return time.Now().After(quiet) }, "")

	evs := e.received()
	rs := decodeAll(t, resets.Msgs())
	var last int64 // the last reset's version
	for _, r := range rs[1:] {
		if r.Status != contract.StatusReset || r.Reason != "data_loss" {
			t.Fatalf("reset event %+v", r)
		}
		last = max(last, r.Version)
	}
	if len(rs) < 2 || last <= before {
		t.Fatalf("resets %+v after the kill: want one above %d, every version published before it", rs[1:], before)
	}
	t.Logf("%d reset(s) after the failover, the last at version %d (published before the kill: up to %d)", len(rs)-1, last, before)

	byUser := map[string][]contract.Event{}
	for _, ev := range evs {
		byUser[ev.UserID] = append(byUser[ev.UserID], ev)
	}
	held := map[string]bool{} // sessions the new master held after the failover
	for _, id := range slices.Concat(keepers, expirers, late) {
		held[id] = true
	}
	for _, id := range slices.Concat(keepers, lateKeepers, expirers, early, late, ghosts) {
		list := byUser[id]
		sort.Slice(list, func(i, j int) bool { return list[i].Version < list[j].Version })
		var after []contract.Event // above the last reset
		for _, ev := range list {
			if ev.Version > last {
				after = append(after, ev)
			}
		}
		for i := 1; i < len(after); i++ {
			if after[i].Status == after[i-1].Status {
				t.Fatalf("user %s: two %s events in a row after the reset: %+v", id, after[i].Status, list)
			}
		}
		offlines := 0
		for _, ev := range after {
			if ev.Status == contract.StatusOffline {
				offlines++
			}
		}
		switch {
		case slices.Contains(online, id):
			// No flap: heartbeating users never get an offline.
			for _, ev := range list {
				if ev.Status == contract.StatusOffline {
					t.Fatalf("user %s kept heartbeating but got %+v (events %+v)", id, ev, list)
				}
			}
			if len(after) == 0 || after[len(after)-1].Status != contract.StatusOnline {
				t.Fatalf("user %s kept heartbeating: no online after the reset (events %+v)", id, list)
			}
		case held[id]:
			// A session Redis still held: exactly one offline after the
			// reset (re-announced first, unless it ended before the walk
			// reached it).
			if offlines != 1 || after[len(after)-1].Status != contract.StatusOffline {
				t.Fatalf("user %s: session held by the new master, %d offline events after the reset, want 1 (events %+v)", id, offlines, list)
			}
		default:
			// Ended before the cut, or lost with the master: nothing after
			// the reset; the reset (above their last event) ends them.
			if len(after) != 0 {
				t.Fatalf("user %s: no session on the new master, yet events after the reset: %+v", id, list)
			}
		}
	}

	// Each presenced replica left the queue group while Redis failed and
	// rejoined on the new master; its expiry subscription is up there again,
	// with the keyspace flags it set on the new master.
	for i, rep := range reps {
		if n := testutil.ToFloat64(ms[i].QueueGroupLeaves); n < 1 {
			t.Errorf("replica %d never left the queue group", i)
		}
		if err := rep.w.Ready(); err != nil {
			t.Errorf("replica %d not ready after the failover: %v", i, err)
		}
		if !rep.listener.Connected() || rep.listener.Reconnects() < 1 {
			t.Errorf("replica %d: expiry subscription connected %v after %d reconnects", i, rep.listener.Connected(), rep.listener.Reconnects())
		}
	}
	flags := rc.ConfigGet(ctx, "notify-keyspace-events").Val()["notify-keyspace-events"]
	if !strings.Contains(flags, "E") || !strings.ContainsAny(flags, "xA") {
		t.Errorf("notify-keyspace-events on the new master = %q, want expired keyevents", flags)
	}
	subs := 0
	for _, line := range strings.Split(rc.ClientList(ctx).Val(), "\n") {
		if strings.Contains(line, "name=presenced-expiry") && strings.Contains(line, " psub=1 ") {
			subs++
		}
	}
	if subs != len(reps) {
		t.Errorf("%d expiry subscriptions on the new master, want one per presenced replica (%d)", subs, len(reps))
	}
}

// sentinelSet is a master, its replica (the standby) and three sentinels
// watching them (quorum 2), and an env whose clients are the product's
// (app.NewRedisClient on REDIS_SENTINEL_* settings; the listeners ask the
// sentinels for the master, as internal/app's do).
type sentinelSet struct {
	t               *testing.T
	master, standby *testenv.Redis
	mc, rc          *redis.Client // direct clients of the master and the standby
	sentinels       []*testenv.Redis
	sc              testenv.SentinelConfig
	cfg             config.Config
	e               *env
}

func newSentinelSet(t *testing.T, ttl time.Duration) *sentinelSet {
	t.Helper()
	ss := &sentinelSet{t: t, master: testenv.StartRedis(t)}
	ss.standby = testenv.StartRedis(t, testenv.WithReplicaOf(ss.master))
	ctx := context.Background()
	ss.mc, ss.rc = ss.master.Client(t), ss.standby.Client(t)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return replInfo(ctx, ss.rc)["master_link_status"] == "up"
	}, "replica not linked to the master")
	ss.sc = testenv.SentinelConfig{Master: "pm", Quorum: 2, DownAfter: 700 * time.Millisecond, FailoverTimeout: 4 * time.Second}
	ss.sentinels = testenv.StartSentinels(t, ss.master, 3, ss.sc)
	var addrs []string
	for _, s := range ss.sentinels {
		addrs = append(addrs, s.Addr)
	}
	ss.cfg = config.Default()
	ss.cfg.RedisSentinelAddrs, ss.cfg.RedisSentinelMaster = strings.Join(addrs, ","), ss.sc.Master
	if err := ss.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n := testenv.StartNATS(t)
	p := testenv.Prefix(t)
	ss.e = &env{t: t, nats: n, rdb: ss.client("test"), nc: n.Conn(t), prefix: p + ":", subjects: contract.Subjects{Prefix: p}, ttl: ttl}
	t.Cleanup(func() { _ = ss.e.rdb.Close() })
	sm, err := app.NewSentinelMaster(ss.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sm.Close() })
	ss.e.masterAddr = sm.Addr
	ss.e.online = testenv.Collect(t, ss.e.nc, ss.e.subjects.Online())
	ss.e.offline = testenv.Collect(t, ss.e.nc, ss.e.subjects.Offline())
	return ss
}

// waitPromoted waits until every sentinel names the standby the master.
func (ss *sentinelSet) waitPromoted() {
	ss.t.Helper()
	testenv.Eventually(ss.t, 20*time.Second, func() bool {
		for _, s := range ss.sentinels {
			if s.MasterAddr(ss.sc.Master) != ss.standby.Addr {
				return false
			}
		}
		return true
	}, "the sentinels did not promote the replica")
}

// client returns a new failover client named name; the caller closes it.
func (ss *sentinelSet) client(name string) *redis.Client {
	c, err := app.NewRedisClient(ss.cfg, name)
	if err != nil {
		ss.t.Fatal(err)
	}
	return c
}

// settled says why the data set and the events have not settled after a
// failover, or "" once they have: the re-announce walk is done, Redis holds
// exactly the sessions of online, and a consumer that applies events by
// version, a reset dropping the users below it, sees exactly online online.
func settled(ctx context.Context, e *env, store *presence.Store, resets *testenv.Collector, before int64, online []string) string {
	var last int64
	for _, m := range resets.Msgs() {
		var ev contract.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return err.Error()
		}
		last = max(last, ev.Version)
	}
	if last <= before {
		return fmt.Sprintf("no reset above version %d yet", before)
	}
	if n, err := e.rdb.Exists(ctx, e.prefix+"resync").Result(); err != nil || n != 0 {
		return fmt.Sprintf("re-announce walk under way (%v)", err)
	}
	all, err := store.GetAllOnlineUsers(ctx)
	if err != nil {
		return err.Error()
	}
	slices.Sort(all)
	want := slices.Sorted(slices.Values(online))
	if !slices.Equal(all, want) {
		return fmt.Sprintf("Redis holds %d sessions %v, want the %d heartbeating users", len(all), all, len(want))
	}
	latest := map[string]contract.Event{}
	for _, ev := range e.received() {
		if ev.Version > latest[ev.UserID].Version {
			latest[ev.UserID] = ev
		}
	}
	var seen []string
	for id, ev := range latest {
		if ev.Version > last && ev.Status == contract.StatusOnline {
			seen = append(seen, id)
		}
	}
	slices.Sort(seen)
	if !slices.Equal(seen, want) {
		return fmt.Sprintf("a consumer sees %d users online %v, want %d", len(seen), seen, len(want))
	}
	return ""
}

// replInfo returns the fields of INFO replication.
func replInfo(ctx context.Context, c *redis.Client) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(c.Info(ctx, "replication").Val(), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func decodeAll(t *testing.T, msgs []*nats.Msg) []contract.Event {
	t.Helper()
	out := make([]contract.Event, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, decodeEvent(t, m.Data))
	}
	return out
}

// TestSentinelManualFailoverMovesExpirySubscription: one master, one
// replica, three sentinels and two presenced replicas on the product's
// failover clients, the sweep idle (only at start), so that offlines can
// only come from keyspace events. SENTINEL FAILOVER promotes the replica
// while the old master stays up: the sentinels reconfigure it as a replica
// only when they next poll it (about 10 s later; under a partition, when it
// heals), and until then it is a master that no longer takes the writes.
// Within a bound of the sentinels naming the new master, every expiry
// subscription is on it (none left on the old one), and users expiring
// there go offline through the keyspace path.
func TestSentinelManualFailoverMovesExpirySubscription(t *testing.T) {
	const ttl = 600 * time.Millisecond
	ss := newSentinelSet(t, ttl)
	ctx := context.Background()
	mc, rc, sentinels, sc, client, n, e := ss.mc, ss.rc, ss.sentinels, ss.sc, ss.client, ss.e.nats, ss.e
	const reps = 2
	m := metrics.New() // shared: the keyspace claims of both replicas
	for range reps {
		e.startReplicaOn(client("presenced"), client("presenced-expiry"), n.URL(), func(o *worker.Options, p *presence.Options) {
			o.ReconcileInterval = time.Hour // the sweep runs once, at start
			o.Metrics = m
			p.OutageThreshold = 2 * time.Hour
		})
	}
	keyspace := func() int { return int(testutil.ToFloat64(m.Expiries.WithLabelValues("keyspace"))) }
	subs := func(c *redis.Client) int {
		n := 0
		for _, line := range strings.Split(c.ClientList(ctx).Val(), "\n") {
			if strings.Contains(line, "name=presenced-expiry") && strings.Contains(line, " psub=1 ") {
				n++
			}
		}
		return n
	}
	round := func(name string, want int) {
		t.Helper()
		users := ids(name, 20)
		e.heartbeat(users...)
		testenv.Eventually(t, 4*time.Second, func() bool { return keyspace() >= want },
			"round %s: %d keyspace claims, want %d (subscriptions: %d on the old master, %d on the new one)", name, keyspace(), want, subs(mc), subs(rc))
	}
	round("before", 20)
	if got := subs(mc); got != reps {
		t.Fatalf("%d expiry subscriptions on the master, want %d", got, reps)
	}

	// A failover by hand: the old master is not killed, it is demoted.
	s0 := sentinels[0].Client(t)
	testenv.Eventually(t, 20*time.Second, func() bool {
		return s0.Do(ctx, "SENTINEL", "FAILOVER", sc.Master).Err() == nil
	}, "SENTINEL FAILOVER refused")
	started := time.Now()
	ss.waitPromoted()
	switched := time.Now()
	role := func() string {
		r, _ := mc.Do(ctx, "ROLE").Slice()
		if len(r) == 0 {
			return "?"
		}
		return fmt.Sprint(r[0])
	}
	t.Logf("the sentinels name the standby %s after SENTINEL FAILOVER; the old master's role: %s", switched.Sub(started).Round(10*time.Millisecond), role())

	// The bound: the listener's check (every HealthInterval, 1s in the
	// harness) and a reconnect, well before the sentinels demote the old
	// master.
	testenv.Eventually(t, 4*time.Second, func() bool { return subs(rc) == reps && subs(mc) == 0 },
		"expiry subscriptions: %d on the old master (role %s), %d on the new one, want 0 and %d", subs(mc), role(), subs(rc), reps)
	t.Logf("expiry subscriptions on the new master %s after the switch (the old master's role: %s)", time.Since(switched).Round(10*time.Millisecond), role())
	round("after", 40)
	t.Logf("keyspace offlines from the new master %s after the switch", time.Since(switched).Round(10*time.Millisecond))
	e.expectSessions(append(ids("before", 20), ids("after", 20)...), 5*time.Second)
}
