package presence_test

// Tests of the Redis Cluster store with presenced's client options, when a
// master hangs or loses its scripts, and of the mirror's refresh path.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/app"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// prodClusterClient is a cluster client as presenced makes it
// (app.NewRedisClusterClient: ContextTimeoutEnabled, a 1 s slot-map reload,
// the pool for the partitions' blocking reads).
func prodClusterClient(t *testing.T, rc *testenv.RedisCluster) *redis.ClusterClient {
	t.Helper()
	cfg := config.Default()
	cfg.RedisURL, cfg.RedisClusterAddrs, cfg.RedisPassword = "", strings.Join(rc.Addrs(), ","), rc.Password
	cc, err := app.NewRedisClusterClient(cfg, "presenced")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// partitionOn returns an id whose partition lives on master addr and whose
// mirror key lives on master mirrorAddr.
func idOn(t *testing.T, cc *redis.ClusterClient, c *presence.Cluster, addr, mirrorAddr string) string {
	t.Helper()
	owners := map[int]string{}
	slots, err := cc.ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	owner := func(slot int) string {
		if a, ok := owners[slot]; ok {
			return a
		}
		for _, s := range slots {
			if slot >= s.Start && slot <= s.End {
				owners[slot] = s.Nodes[0].Addr
				return s.Nodes[0].Addr
			}
		}
		return ""
	}
	for i := 0; i < 100000; i++ {
		id := "u" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+(i/26)%26)) + string(rune('a'+(i/676)%26))
		if owner(presence.KeySlot(c.Partitions()[c.PartitionOf(id)].Keys().Epoch())) == addr &&
			owner(presence.KeySlot(c.MirrorKey(id))) == mirrorAddr {
			return id
		}
	}
	t.Fatal("no id found")
	return ""
}

// TestClusterNoScriptResentWithAMasterHung: master M1 lost its scripts
// (NOSCRIPT) while master M2 hangs. A heartbeat whose partition and mirror
// are on M1 is resent with the script's body at once: the hung master does
// not fail the partitions of others.
func TestClusterNoScriptResentWithAMasterHung(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0)
	cc := prodClusterClient(t, rc)
	c := clusterOn(t, cc, 6, presence.Options{})
	ctx := context.Background()
	ms := rc.Masters(t)
	m1, m2 := ms[0], ms[1]
	id := idOn(t, cc, c, m1, m1)
	if _, err := c.Heartbeat(ctx, []string{id}); err != nil {
		t.Fatal(err)
	}
	// M1 restarted: no scripts. M2 hangs for 8 s (the cluster has not failed it over yet).
	if err := rc.Node(t, m1).Client(t).ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Node(t, m2).Client(t).Do(ctx, "CLIENT", "PAUSE", 8000, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.Heartbeat(ctx, []string{id})
	t.Logf("heartbeat took %v, err %v", time.Since(start).Round(time.Millisecond), err)
	if err != nil {
		t.Fatalf("heartbeat of %s (partition and mirror on healthy master %s) failed after %v while master %s hangs: %v",
			id, m1, time.Since(start).Round(time.Millisecond), m2, err)
	}
}

// TestClusterHungMirrorMasterDoesNotHoldHeartbeat: a hung master holds no
// partition of the batch, only the user's mirror. The heartbeat returns
// within the mirror's bound (mirrorWait), not after the hang, and the
// failed mirror write is counted.
func TestClusterHungMirrorMasterDoesNotHoldHeartbeat(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0)
	cc := prodClusterClient(t, rc)
	c := clusterOn(t, cc, 6, presence.Options{})
	ctx := context.Background()
	ms := rc.Masters(t)
	m1, m2 := ms[0], ms[1]
	id := idOn(t, cc, c, m1, m2)
	if _, err := c.Heartbeat(ctx, []string{id}); err != nil {
		t.Fatal(err)
	}
	if err := rc.Node(t, m2).Client(t).Do(ctx, "CLIENT", "PAUSE", 15000, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.Heartbeat(ctx, []string{id})
	took := time.Since(start)
	t.Logf("heartbeat took %v (err %v), mirror failures %d", took.Round(time.Millisecond), err, c.MirrorFailures())
	if took > 5*time.Second {
		t.Fatalf("heartbeat of %s (partition on healthy master %s) took %v because its mirror lives on hung master %s",
			id, m1, took.Round(time.Millisecond), m2)
	}
}

// TestClusterWritableWithAReplicaHung: one replica hangs (or is loading,
// or down and not yet marked failed) while every master answers: Writable
// (the start-up check and the rejoin check) succeeds, since scripts are
// loaded on the masters only.
func TestClusterWritableWithAReplicaHung(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 1)
	cc := prodClusterClient(t, rc)
	c := presence.NewCluster(cc, presence.Options{Prefix: testenv.Prefix(t) + ":", TTL: time.Minute, Shards: 64}, 6, nil)
	ctx := context.Background()
	masters := map[string]bool{}
	for _, m := range rc.Masters(t) {
		masters[m] = true
	}
	var replica string
	for _, a := range rc.Addrs() {
		if !masters[a] {
			replica = a
			break
		}
	}
	// A client in use (a replica rejoining the queue group) has the
	// commands' routing table already: go-redis asks one node, picked at
	// random, for it (COMMAND) before its first routed command.
	if err := cc.Get(ctx, "warm").Err(); err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	if err := rc.Node(t, replica).Client(t).Do(ctx, "CLIENT", "PAUSE", 5000, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	// The masters answer.
	mctx, mcancel := context.WithTimeout(ctx, 2*time.Second)
	defer mcancel()
	for m := range masters {
		if err := rc.Node(t, m).Client(t).Ping(mctx).Err(); err != nil {
			t.Fatalf("setup: master %s: %v", m, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second) // the rejoin check's bound is 1 s
	defer cancel()
	if err := c.Writable(wctx); err != nil {
		t.Fatalf("every master answers, replica %s hangs: Writable = %v", replica, err)
	}
}

// TestClusterCountBoundedWhenAMasterHangs: the worker reads Count after
// every sweep. With a master hung, Count returns within the per-partition
// wait (the sum of the partitions that answered, with a PartitionsError),
// so the reconcile loop is not held for the length of the hang.
func TestClusterCountBoundedWhenAMasterHangs(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0)
	cc := prodClusterClient(t, rc)
	c := clusterOn(t, cc, 6, presence.Options{})
	ctx := context.Background()
	hung := rc.Masters(t)[1]
	if err := rc.Node(t, hung).Client(t).Do(ctx, "CLIENT", "PAUSE", 10000, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.Count(ctx) // as worker.sweepAll calls it
	took := time.Since(start)
	if took > 2*time.Second {
		t.Fatalf("Count with master %s hung took %v (err %v): the worker's sweep loop waits as long; OutageThreshold is 5 s",
			hung, took.Round(time.Millisecond), err)
	}
}

// TestClusterHungMasterSweepLoopClaimsHealthyPartitions: the worker's
// loop (a Sweep, then Count, every 200 ms) with presenced's client options
// and a master hung past OutageThreshold: a user due on a healthy master is
// claimed at its deadline, not graced as after an outage.
func TestClusterHungMasterSweepLoopClaimsHealthyPartitions(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0)
	cc := prodClusterClient(t, rc)
	const ttl = 3 * time.Second
	c := clusterOn(t, cc, 6, presence.Options{TTL: ttl, OutageThreshold: 2 * time.Second})
	ctx := context.Background()
	u := "user-u"
	uMaster := slotOwner(t, cc, presence.KeySlot(c.Partitions()[c.PartitionOf(u)].Keys().Epoch()))
	hung := otherMaster(t, rc, uMaster)
	if _, err := c.Sweep(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeat(ctx, []string{u}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	var graced, claimed int
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			r, _ := c.Sweep(ctx, 1000)
			graced += r.Graced
			claimed += r.Claimed
			_, _ = c.Count(ctx)
		}
	}()
	pause := 3 * time.Second
	if err := rc.Node(t, hung).Client(t).Do(ctx, "CLIENT", "PAUSE", pause.Milliseconds(), "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + time.Second)
	close(stop)
	<-done
	st, err := c.Status(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if graced > 0 || claimed == 0 || st.Online {
		t.Fatalf("master %s hung for %v; user %s on healthy master %s: online %v, graced %d, claimed %d; want the offline, not an outage's grace",
			hung, pause, u, uMaster, st.Online, graced, claimed)
	}
}

// TestClusterScriptsAfterManualFailover: a replica promoted by CLUSTER
// FAILOVER has none of the scripts (SCRIPT LOAD is not replicated). The
// next heartbeat of that master's partition finds no script there and is
// resent with the script's body: it succeeds, and the session replicated
// before the failover is refreshed, not opened again.
func TestClusterScriptsAfterManualFailover(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 1)
	cc := prodClusterClient(t, rc)
	c := clusterOn(t, cc, 6, presence.Options{})
	ctx := context.Background()
	if _, err := c.Heartbeat(ctx, []string{"alice"}); err != nil {
		t.Fatal(err)
	}
	slot := presence.KeySlot(c.Partitions()[c.PartitionOf("alice")].Keys().Epoch())
	old := slotOwner(t, cc, slot)
	var standby string
	for _, a := range rc.Addrs() {
		info := rc.Node(t, a).Client(t).Info(ctx, "replication").Val()
		if strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+old[strings.LastIndex(old, ":")+1:]) {
			standby = a
		}
	}
	if standby == "" {
		t.Fatalf("no replica of %s", old)
	}
	sc := rc.Node(t, standby).Client(t)
	if err := sc.Do(ctx, "CLUSTER", "FAILOVER").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		role, _ := sc.Do(ctx, "ROLE").Slice()
		return len(role) > 0 && role[0] == "master"
	}, "%s not promoted", standby)
	res, err := c.Heartbeat(ctx, []string{"alice", "bob"})
	if err != nil {
		t.Fatalf("heartbeat after the failover: %v", err)
	}
	if res[0] != 0 {
		t.Fatalf("alice's heartbeat after the failover = %d, want a refresh (0): her session was replicated", res[0])
	}
}
