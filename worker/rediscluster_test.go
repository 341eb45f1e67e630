package worker_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/app"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// clusterReplica is one presenced replica on a Redis Cluster, built as
// internal/app builds it: a presence.Cluster, one relay per partition and
// a ClusterExpiry.
type clusterReplica struct {
	w      *worker.Worker
	store  *presence.Cluster
	expiry *presence.ClusterExpiry
}

func startClusterReplica(t *testing.T, rc *testenv.RedisCluster, natsURL, prefix string, subjects contract.Subjects, ttl time.Duration, partitions int) *clusterReplica {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cfg := config.Default()
	cfg.RedisURL, cfg.RedisClusterAddrs, cfg.RedisClusterPartitions = "", strings.Join(rc.Addrs(), ","), partitions
	cfg.RedisPassword = rc.Password
	cc, err := app.NewRedisClusterClient(cfg, "presenced")
	if err != nil {
		t.Fatal(err)
	}
	store := presence.NewCluster(cc, presence.Options{Prefix: prefix, TTL: ttl, OutageThreshold: 3 * time.Second, Shards: 256}, partitions, nil)
	if err := store.Writable(ctx); err != nil {
		t.Fatal(err)
	}
	b := bus.New(bus.Options{URL: natsURL, PingInterval: 300 * time.Millisecond})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	exp := presence.NewClusterExpiry(cc, func(addr string) *redis.Client {
		return redis.NewClient(&redis.Options{Addr: addr, Password: rc.Password, DisableIdentity: true})
	}, presence.ExpiryOptions{KeyID: presence.ClusterKeyID(prefix), HealthInterval: 500 * time.Millisecond})
	consumer := worker.ConsumerName()
	var parts []worker.Partition
	for i, o := range store.Outboxes(consumer) {
		parts = append(parts, worker.Partition{Outbox: o, Loss: store.Partitions()[i]})
	}
	w := worker.NewPartitioned(store, parts, b, exp, worker.Options{Subjects: subjects, Queue: "q", ReconcileInterval: 100 * time.Millisecond, ClaimAfter: 2 * time.Second})
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			t.Errorf("stop worker: %v", err)
		}
		_ = b.Stop(ctx)
		_ = cc.Close()
	})
	testenv.Eventually(t, 10*time.Second, func() bool { return w.Ready() == nil }, "worker not ready: %v", w.Ready())
	return &clusterReplica{w: w, store: store, expiry: exp}
}

// consumerView is a downstream consumer's view, kept by the Go client's
// Subscribe (which drops events not above a user's last version and below
// a covering reset's floor): the users online with their versions, and
// every event passed on, for the exactly-once checks.
type consumerView struct {
	mu     sync.Mutex
	online map[string]int64
	events map[string][]client.Event // by user
	resets []client.Event
}

func (v *consumerView) apply(ev client.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch ev.Status {
	case client.StatusReset:
		v.resets = append(v.resets, ev)
		for id, ver := range v.online {
			if ver < ev.Version && ev.Covers(id) {
				delete(v.online, id)
			}
		}
	case client.StatusOnline:
		v.online[ev.UserID] = ev.Version
		v.events[ev.UserID] = append(v.events[ev.UserID], ev)
	case client.StatusOffline:
		delete(v.online, ev.UserID)
		v.events[ev.UserID] = append(v.events[ev.UserID], ev)
	}
}

// clusterScenario is three presenced replicas on a Redis Cluster with one
// NATS server, and a downstream consumer keeping its view through the Go
// client.
type clusterScenario struct {
	cl    *client.Client
	view  *consumerView
	reps  []*clusterReplica
	store *presence.Cluster // replica 0's, to read what the cluster holds
}

func startClusterScenario(t *testing.T, rc *testenv.RedisCluster, ttl time.Duration, partitions int) *clusterScenario {
	t.Helper()
	n := testenv.StartNATS(t)
	prefix := testenv.Prefix(t) + ":"
	subjects := contract.Subjects{Prefix: testenv.Prefix(t)}
	sc := &clusterScenario{view: &consumerView{online: map[string]int64{}, events: map[string][]client.Event{}}}
	sc.cl = client.New(n.Conn(t), client.WithPrefix(subjects.Prefix), client.WithTimeout(3*time.Second))
	stop, err := sc.cl.Subscribe(context.Background(), sc.view.apply)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	for range 3 {
		sc.reps = append(sc.reps, startClusterReplica(t, rc, n.URL(), prefix, subjects, ttl, partitions))
	}
	sc.store = sc.reps[0].store
	return sc
}

// every runs f every interval until ctx is done, on a goroutine the test
// waits for when it ends.
func every(t *testing.T, ctx context.Context, interval time.Duration, f func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			f()
			sleepCtx(ctx, interval)
		}
	}()
	t.Cleanup(wg.Wait)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// TestRedisClusterFailoverAndReshard runs three presenced replicas on a
// Redis Cluster of three masters and three replicas (redis-cli --cluster
// create) while users heartbeat, expire and disconnect, moves a third of
// the slots with redis-cli --cluster reshard under that load, then
// SIGKILLs a master so that its replica takes over. Afterwards: users who
// kept heartbeating never got an offline; every other session got exactly
// one offline (or was lost in the failover and is covered by a reset of
// its partition, never by silence); per user, the events a consumer
// applies alternate online/offline with strictly increasing versions; the
// consumer's view equals what the cluster holds; the seed's keys
// (presence:user:<id>) exist exactly for the users online; and every
// replica's expiry subscriptions follow the masters.
func TestRedisClusterFailoverAndReshard(t *testing.T) {
	const (
		ttl        = 5 * time.Second
		partitions = 12
	)
	rc := testenv.StartRedisCluster(t, 3, 1)
	sc := startClusterScenario(t, rc, ttl, partitions)
	cl, view, reps, store := sc.cl, sc.view, sc.reps, sc.store
	ctx := context.Background()

	// Load: keepers heartbeat every 400 ms throughout; every 150 ms a new
	// wave of 40 users comes online, and half of each wave disconnects a
	// moment later while the other half expires. Requests that fail are
	// retried, as a gateway does (a partition answers TRYAGAIN while its
	// slot moves, and nothing while its master fails over).
	keepers := make([]string, 60)
	for i := range keepers {
		keepers[i] = fmt.Sprintf("keep-%d", i)
	}
	send := func(f func(context.Context, ...string) (client.Reply, error), ids []string) {
		for attempt := 0; ; attempt++ {
			r, err := f(ctx, ids...)
			if err == nil && r.Error == "" {
				return
			}
			if attempt > 100 {
				t.Errorf("request for %d ids failed 100 times: %v %+v", len(ids), err, r)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var (
		mu     sync.Mutex
		others []string // every non-keeper that came online
		waves  atomic.Int64
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	load.Add(2)
	go func() {
		defer load.Done()
		for loadCtx.Err() == nil {
			send(cl.Heartbeat, keepers)
			time.Sleep(400 * time.Millisecond)
		}
	}()
	go func() {
		defer load.Done()
		for w := 0; loadCtx.Err() == nil; w++ {
			wave := make([]string, 40)
			for i := range wave {
				wave[i] = fmt.Sprintf("w%d-%d", w, i)
			}
			send(cl.Heartbeat, wave)
			mu.Lock()
			others = append(others, wave...)
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			send(cl.Disconnect, wave[:20])
			waves.Add(1)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	testenv.Eventually(t, 20*time.Second, func() bool { return waves.Load() >= 10 }, "load did not start")

	// A third of the slots, with the keys of the partitions in them, move
	// from the first master to the second under load.
	masters := rc.Masters(t)
	sort.Strings(masters)
	from, to := masters[0], masters[1]
	owners := func() map[int]string { // partition -> the master serving its slot
		slots, err := rc.Client(t).ClusterSlots(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		out := map[int]string{}
		for p, tag := range presence.PartitionTags(partitions) {
			slot := presence.KeySlot("{" + tag + "}")
			for _, r := range slots {
				if slot >= r.Start && slot <= r.End {
					out[p] = r.Nodes[0].Addr
				}
			}
		}
		return out
	}
	before := owners()
	began := time.Now()
	rs := rc.StartReshard(t, from, to, rc.Slots(t, from)/2)
	rs.Wait(t)
	moved := 0
	for p, a := range owners() {
		if a != before[p] {
			moved++
		}
	}
	if moved == 0 {
		t.Fatalf("the reshard moved no partition's slot (owners before %v)", before)
	}
	t.Logf("resharded half of %s's slots, %d of %d partitions with them, under load in %s", from, moved, partitions, time.Since(began).Round(10*time.Millisecond))
	wavesAtKill := waves.Load()

	// The second master (now holding more partitions) crashes; its replica
	// takes over.
	killed := time.Now()
	rc.Kill(t, to)
	rc.WaitFailover(t, to, 30*time.Second)
	t.Logf("failover of %s settled %s after the kill", to, time.Since(killed).Round(10*time.Millisecond))
	testenv.Eventually(t, 20*time.Second, func() bool { return waves.Load() >= wavesAtKill+10 }, "load did not resume after the failover")
	stopLoad()
	load.Wait()

	// Settle: every non-keeper's session ends (by disconnect or expiry, or
	// was lost and covered by a reset), so the cluster holds the keepers
	// alone, and the consumer's view agrees.
	mu.Lock()
	all := slices.Concat(keepers, others)
	mu.Unlock()
	// Keep the keepers alive while the rest expires.
	keepCtx, stopKeep := context.WithCancel(ctx)
	defer stopKeep()
	every(t, keepCtx, 400*time.Millisecond, func() { send(cl.Heartbeat, keepers) })
	why := ""
	testenv.Eventually(t, 60*time.Second, func() bool {
		got, err := store.GetOnlineUsers(ctx, all)
		if err != nil {
			why = err.Error()
			return false
		}
		sort.Strings(got)
		want := slices.Clone(keepers)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			why = fmt.Sprintf("cluster holds %d users online, want the %d keepers", len(got), len(want))
			return false
		}
		view.mu.Lock()
		defer view.mu.Unlock()
		if len(view.online) != len(keepers) {
			why = fmt.Sprintf("consumer sees %d online, want %d keepers", len(view.online), len(keepers))
			return false
		}
		for _, k := range keepers {
			if _, ok := view.online[k]; !ok {
				why = "consumer misses keeper " + k
				return false
			}
		}
		return true
	}, "not settled: %v", &why)
	stopKeep()
	// A doubled offline or a late republish would arrive within a claim
	// time and a relay check.
	time.Sleep(3 * time.Second)

	view.mu.Lock()
	defer view.mu.Unlock()
	resets := slices.Clone(view.resets)
	covered := func(id string, ver int64) bool { // below a reset covering id
		for _, r := range resets {
			if r.Covers(id) && ver < r.Version {
				return true
			}
		}
		return false
	}
	lost := 0
	for _, id := range all {
		evs := view.events[id]
		for i := 1; i < len(evs); i++ {
			if evs[i].Version <= evs[i-1].Version {
				t.Fatalf("user %s: versions not increasing: %+v", id, evs)
			}
			if evs[i].Status == evs[i-1].Status && !covered(id, evs[i].Version-1) && !covered(id, evs[i-1].Version) {
				t.Fatalf("user %s: two %s events in a row, not across a reset: %+v (resets %+v)", id, evs[i].Status, evs, resets)
			}
		}
		if len(evs) == 0 {
			t.Fatalf("user %s: no event at all", id)
		}
		last := evs[len(evs)-1]
		isKeeper := slices.Contains(keepers, id)
		switch {
		case isKeeper:
			for _, ev := range evs {
				if ev.Status == client.StatusOffline {
					t.Fatalf("keeper %s got an offline: %+v", id, evs)
				}
			}
		case last.Status == client.StatusOnline:
			// Lost with the failover: a reset of its partition covers it.
			if !covered(id, last.Version) {
				t.Fatalf("user %s: last event online, no offline and no covering reset: %+v (resets %+v)", id, evs, resets)
			}
			lost++
		}
	}
	for _, r := range resets {
		if r.Partitions != partitions {
			t.Fatalf("reset %+v does not name its partition of %d", r, partitions)
		}
	}
	t.Logf("%d users, %d resets (the first start's included), %d sessions lost in the failover and covered by a reset", len(all), len(resets), lost)

	// The seed's keys: present for the keepers, gone for everyone else
	// (after the TTL at the latest, for sessions lost in the failover).
	testenv.Eventually(t, ttl+5*time.Second, func() bool {
		cc := rc.Client(t)
		for _, id := range all {
			want := int64(0)
			if slices.Contains(keepers, id) {
				want = 1
			}
			if got := cc.Exists(ctx, store.MirrorKey(id)).Val(); got != want {
				why = fmt.Sprintf("EXISTS %s = %d, want %d", store.MirrorKey(id), got, want)
				return false
			}
		}
		return true
	}, "seed keys: %v", &why)

	// Every replica's expiry subscriptions are on the masters of now.
	now := rc.Masters(t)
	sort.Strings(now)
	for i, r := range reps {
		got := r.expiry.Masters()
		sort.Strings(got)
		if !slices.Equal(got, now) || !r.expiry.Connected() {
			t.Errorf("replica %d: expiry subscriptions on %v (connected %v), masters %v", i, got, r.expiry.Connected(), now)
		}
	}
}

// TestRedisClusterFailoverLosingWritesResetsItsPartitions cuts one
// master's replica off (it can no longer authenticate), lets users come
// online and disconnect on that master alone (their events go out), then
// SIGKILLs the master: the replica, promoted, lacks those writes. The
// relays of that master's partitions find published entries gone and
// publish a reset naming each partition that lost them, above every
// version they published, and no other partition resets. Afterwards
// heartbeating users have no offline, and a consumer applying events by
// version (a reset clears only the users it covers) ends with exactly the
// users the cluster holds online: what was lost is covered by resets, the
// users of other partitions are kept.
func TestRedisClusterFailoverLosingWritesResetsItsPartitions(t *testing.T) {
	const (
		ttl        = 8 * time.Second // above the cut and the failover, so heartbeating users never lapse
		partitions = 12
	)
	rc := testenv.StartRedisCluster(t, 3, 1, testenv.WithPassword("pw"))
	scn := startClusterScenario(t, rc, ttl, partitions)
	cl, view, store := scn.cl, scn.view, scn.store
	ctx := context.Background()
	keepAlive := func(ctx context.Context, ids []string) {
		every(t, ctx, 300*time.Millisecond, func() { _, _ = cl.Heartbeat(ctx, ids...) })
	}
	named := func(p string, k int) []string {
		out := make([]string, k)
		for i := range out {
			out[i] = fmt.Sprintf("%s-%d", p, i)
		}
		return out
	}
	keepCtx, stopKeep := context.WithCancel(ctx)
	defer stopKeep()
	keepers, early := named("keep", 40), named("early", 40)
	keepAlive(keepCtx, keepers)
	if _, err := cl.Heartbeat(ctx, early...); err != nil {
		t.Fatal(err)
	}

	// The victim: the first master; its replica stops receiving its writes.
	victim := rc.Masters(t)[0]
	vc := rc.Node(t, victim).Client(t)
	var standby string
	testenv.Eventually(t, 10*time.Second, func() bool {
		info := replicationInfo(ctx, vc)
		standby = info["slave0"]
		return standby != ""
	}, "no replica of %s", victim)
	// slave0:ip=127.0.0.1,port=1234,state=online,offset=...,lag=0
	fields := map[string]string{}
	for _, kv := range strings.Split(standby, ",") {
		k, v, _ := strings.Cut(kv, "=")
		fields[k] = v
	}
	standby = fields["ip"] + ":" + fields["port"]
	sc := rc.Node(t, standby).Client(t)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return replicationInfo(ctx, sc)["slave_repl_offset"] == replicationInfo(ctx, vc)["master_repl_offset"]
	}, "replica %s did not catch up with %s", standby, victim)
	if err := sc.ConfigSet(ctx, "masterauth", "wrong").Err(); err != nil {
		t.Fatal(err)
	}
	if err := vc.ClientKillByFilter(ctx, "TYPE", "replica").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return replicationInfo(ctx, sc)["master_link_status"] == "down" }, "replica still linked")

	// On the victim alone (for its partitions): new users, some of whom
	// keep heartbeating, and disconnects. Their events go out.
	ghosts, lateKeepers := named("ghost", 60), named("lkeep", 30)
	if _, err := cl.Heartbeat(ctx, ghosts...); err != nil {
		t.Fatal(err)
	}
	keepAlive(keepCtx, lateKeepers)
	if _, err := cl.Disconnect(ctx, early...); err != nil {
		t.Fatal(err)
	}
	victimParts := map[int]bool{}
	for p, tag := range presence.PartitionTags(partitions) {
		if slotOwner(t, rc, presence.KeySlot("{"+tag+"}")) == victim {
			victimParts[p] = true
		}
	}
	lostUsers := 0
	for _, id := range append(slices.Clone(ghosts), early...) {
		if victimParts[contract.PartitionOf(id, partitions)] {
			lostUsers++
		}
	}
	if len(victimParts) == 0 || lostUsers == 0 {
		t.Fatalf("the victim %s holds partitions %v and %d of the users written during the cut", victim, victimParts, lostUsers)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		view.mu.Lock()
		defer view.mu.Unlock()
		for _, id := range slices.Concat(ghosts, early) {
			evs := view.events[id]
			if len(evs) == 0 {
				return false
			}
			want := client.StatusOnline
			if slices.Contains(early, id) {
				want = client.StatusOffline
			}
			if evs[len(evs)-1].Status != want {
				return false
			}
		}
		return true
	}, "the events of the cut were not all published")
	view.mu.Lock()
	resetsBefore := len(view.resets)
	view.mu.Unlock()

	killed := time.Now()
	rc.Kill(t, victim)
	rc.WaitFailover(t, victim, 30*time.Second)
	t.Logf("the standby %s took over %s after the kill", standby, time.Since(killed).Round(10*time.Millisecond))

	// Settled: the cluster holds exactly the heartbeating users, and the
	// consumer agrees.
	alive := slices.Concat(keepers, lateKeepers)
	all := slices.Concat(keepers, lateKeepers, ghosts, early)
	why := ""
	testenv.Eventually(t, 60*time.Second, func() bool {
		got, err := store.GetOnlineUsers(ctx, all)
		if err != nil {
			why = err.Error()
			return false
		}
		if !sameSet(got, alive) {
			why = fmt.Sprintf("the cluster holds %d users online, want the %d heartbeating", len(got), len(alive))
			return false
		}
		view.mu.Lock()
		defer view.mu.Unlock()
		var seen []string
		for id := range view.online {
			seen = append(seen, id)
		}
		if !sameSet(seen, alive) {
			why = fmt.Sprintf("the consumer sees %d users online, want the %d heartbeating", len(seen), len(alive))
			return false
		}
		return true
	}, "not settled after the failover: %v", &why)
	stopKeep()

	view.mu.Lock()
	defer view.mu.Unlock()
	after := view.resets[resetsBefore:]
	resetParts := map[int]bool{}
	for _, r := range after {
		if r.Partitions != partitions || !victimParts[r.Partition] {
			t.Fatalf("reset %+v after the kill: want only resets of the victim's partitions %v", r, victimParts)
		}
		resetParts[r.Partition] = true
	}
	if len(resetParts) == 0 {
		t.Fatalf("no reset after the failover lost writes of partitions %v", victimParts)
	}
	for _, id := range alive {
		for _, ev := range view.events[id] {
			if ev.Status == client.StatusOffline {
				t.Fatalf("heartbeating user %s got an offline: %+v", id, view.events[id])
			}
		}
	}
	t.Logf("%d resets after the failover, partitions %v of the victim's %v; %d users written during the cut lived there", len(after), keysOf(resetParts), keysOf(victimParts), lostUsers)
}

func replicationInfo(ctx context.Context, c *redis.Client) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(c.Info(ctx, "replication").Val(), "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out
}

// slotOwner returns the address of the master serving slot.
func slotOwner(t *testing.T, rc *testenv.RedisCluster, slot int) string {
	t.Helper()
	slots, err := rc.Client(t).ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if slot >= s.Start && slot <= s.End {
			return s.Nodes[0].Addr
		}
	}
	t.Fatalf("no master serves slot %d", slot)
	return ""
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	sort.Strings(a)
	sort.Strings(b)
	return slices.Equal(a, b)
}

func keysOf(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}
