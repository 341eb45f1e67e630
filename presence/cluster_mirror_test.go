package presence_test

// Tests of presence.Cluster's mirror of the seed key
// ("presence:user:<id>") when a partition is blocked or replicas race.

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// idsInDistinctPartitions returns n ids, each in a partition of its own.
func idsInDistinctPartitions(c *presence.Cluster, n int, base string) []string {
	seen := map[int]bool{}
	var out []string
	for i := 0; len(out) < n; i++ {
		id := base + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		if p := c.PartitionOf(id); !seen[p] {
			seen[p] = true
			out = append(out, id)
		}
	}
	return out
}

// blockPartition marks the slot of id's partition MIGRATING (and
// IMPORTING on another master), as redis-cli --cluster reshard does
// while it moves the slot: every script call of the partition gets
// TRYAGAIN (the fence). It returns a function that ends the migration.
func blockPartition(t *testing.T, rc *testenv.RedisCluster, cc *redis.ClusterClient, c *presence.Cluster, id string) func() {
	t.Helper()
	ctx := context.Background()
	slot := presence.KeySlot(c.Partitions()[c.PartitionOf(id)].Keys().Epoch())
	src := slotOwner(t, cc, slot)
	dst := otherMaster(t, rc, src)
	srcC, dstC := rc.Node(t, src).Client(t), rc.Node(t, dst).Client(t)
	if err := dstC.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", rc.NodeID(t, src)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := srcC.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", rc.NodeID(t, dst)).Err(); err != nil {
		t.Fatal(err)
	}
	return func() {
		_ = srcC.Do(ctx, "CLUSTER", "SETSLOT", slot, "STABLE").Err()
		_ = dstC.Do(ctx, "CLUSTER", "SETSLOT", slot, "STABLE").Err()
	}
}

// TestClusterMirrorsWrittenOnPartialFailure: a heartbeat batch that spans
// a partition whose slot is migrating fails with a PartitionsError, but
// the other partitions' scripts ran: their users' mirrors are written
// (EXISTS true just after the session is stored), although the gateway
// retries the batch for as long as the one partition is blocked.
func TestClusterMirrorsWrittenOnPartialFailure(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0)
	cc := rc.Client(t)
	const ttl = 2 * time.Second
	c := clusterOn(t, cc, 6, presence.Options{TTL: ttl})
	ctx := context.Background()
	ids := idsInDistinctPartitions(c, 3, "u")
	known, blocked, fresh := ids[0], ids[1], ids[2]
	if _, err := c.Heartbeat(ctx, []string{known, blocked}); err != nil {
		t.Fatal(err)
	}
	if cc.Exists(ctx, c.MirrorKey(known)).Val() != 1 {
		t.Fatal("setup: no mirror after the first heartbeat")
	}
	unblock := blockPartition(t, rc, cc, c, blocked)
	defer unblock()

	// The gateway sends its batch and retries it, as the reply asks.
	batch := []string{known, blocked, fresh}
	deadline := time.Now().Add(ttl + time.Second)
	for time.Now().Before(deadline) {
		_, err := c.Heartbeat(ctx, batch)
		if err == nil {
			t.Fatal("heartbeat succeeded although a partition is migrating")
		}
		if !presence.IsRetryable(err) {
			t.Fatalf("heartbeat error not retryable: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var problems []string
	for _, id := range []string{known, fresh} {
		st, err := c.Status(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		mirror := cc.Exists(ctx, c.MirrorKey(id)).Val()
		if st.Online && mirror == 0 {
			problems = append(problems, id+" (partition "+string(rune('0'+c.PartitionOf(id)))+", healthy): session online, mirror missing")
		}
	}
	if len(problems) > 0 {
		t.Fatalf("one partition blocked, users of other partitions look offline to the seed's EXISTS:\n  %s", strings.Join(problems, "\n  "))
	}
}

// setGate holds the first pipeline that SETs key without XX until released.
type setGate struct {
	key     string
	mu      sync.Mutex
	armed   bool
	reached chan struct{}
	release chan struct{}
}

func (g *setGate) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (g *setGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (g *setGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			a := cmd.Args()
			if len(a) < 2 || !strings.EqualFold(cmd.Name(), "set") || a[1] != g.key {
				continue
			}
			xx := false
			for _, x := range a {
				if s, ok := x.(string); ok && strings.EqualFold(s, "XX") {
					xx = true
				}
			}
			g.mu.Lock()
			hold := g.armed && !xx
			if hold {
				g.armed = false
			}
			g.mu.Unlock()
			if hold {
				close(g.reached)
				<-g.release
			}
			break
		}
		return next(ctx, cmds)
	}
}

// mirrorRace is two replicas of one cluster, A and B, with B's relay of
// alice's partition, to interleave B's disconnect and relay read with A's
// write of alice's mirror, held by a gate on A's client.
type mirrorRace struct {
	a, b     *presence.Cluster
	ccA, ccB *redis.ClusterClient
	ob       *presence.Outbox
}

func newMirrorRace(t *testing.T) *mirrorRace {
	t.Helper()
	rc := testenv.StartRedisCluster(t, 3, 0)
	opts := presence.Options{Prefix: testenv.Prefix(t) + ":", TTL: time.Minute, Shards: 64}
	r := &mirrorRace{ccA: rc.Client(t), ccB: rc.Client(t)}
	r.a = presence.NewCluster(r.ccA, opts, 6, nil)
	if err := r.a.Writable(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.b = presence.NewCluster(r.ccB, opts, 6, nil)
	r.ob = r.b.Outboxes("relay-b")[r.b.PartitionOf("alice")]
	if err := r.ob.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

// run sends A's heartbeat of alice and holds it at its first plain SET of
// her mirror; meanwhile B disconnects alice and B's relay reads the
// outbox, whose events of alice must be want ("online,offline"). Then A
// goes on. alice is offline, so her mirror must be gone.
func (r *mirrorRace) run(t *testing.T, want string) {
	t.Helper()
	ctx := context.Background()
	gate := &setGate{key: r.a.MirrorKey("alice"), armed: true, reached: make(chan struct{}), release: make(chan struct{})}
	r.ccA.AddHook(gate)
	hb := make(chan error, 1)
	go func() {
		_, err := r.a.Heartbeat(ctx, []string{"alice"})
		hb <- err
	}()
	select {
	case <-gate.reached:
	case err := <-hb:
		t.Fatalf("heartbeat returned without writing the mirror: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the mirror write never came")
	}
	if res, err := r.b.Disconnect(ctx, []string{"alice"}); err != nil || res[0] <= 0 {
		t.Fatalf("disconnect = %v, %v; want an offline", res, err)
	}
	evs, err := r.ob.ReadNew(ctx, 100, -1)
	if err != nil {
		t.Fatal(err)
	}
	var statuses []string
	for _, e := range evs {
		if e.UserID == "alice" {
			statuses = append(statuses, string(e.Status))
		}
	}
	if strings.Join(statuses, ",") != want {
		t.Fatalf("events read = %v, want %s", statuses, want)
	}
	close(gate.release)
	if err := <-hb; err != nil {
		t.Fatal(err)
	}
	st, err := r.b.Status(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if mirror := r.ccB.Exists(ctx, r.b.MirrorKey("alice")).Val(); st.Online || mirror == 1 {
		t.Fatalf("alice online %v after her offline was read; her seed key exists %v for another %v", st.Online, mirror == 1,
			r.ccB.PTTL(ctx, r.b.MirrorKey("alice")).Val().Round(time.Second))
	}
}

// TestClusterMirrorNotRewrittenAfterOfflineRead: replica A stores alice's
// heartbeat and is about to write her mirror; replica B ends the session
// and its relay reads the offline and finds no mirror to remove; then A's
// SET writes the mirror. A's check after its SET finds the session gone
// and removes the mirror, so it does not say online for a TTL.
func TestClusterMirrorNotRewrittenAfterOfflineRead(t *testing.T) {
	newMirrorRace(t).run(t, "online,offline")
}

// TestClusterMirrorRestoredOnRefreshIsChecked: alice is online with her
// mirror missing. Replica A's refresh finds no mirror and writes it; between
// that and A's check, replica B stores alice's disconnect and B's relay
// reads the offline (nothing to remove yet). A's check after its SET finds
// the session gone and removes the mirror, so it does not say online for a
// TTL.
func TestClusterMirrorRestoredOnRefreshIsChecked(t *testing.T) {
	r := newMirrorRace(t)
	ctx := context.Background()
	if _, err := r.a.Heartbeat(ctx, []string{"alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ob.ReadNew(ctx, 100, -1); err != nil { // the online
		t.Fatal(err)
	}
	if err := r.ccA.Del(ctx, r.a.MirrorKey("alice")).Err(); err != nil { // the mirror lost
		t.Fatal(err)
	}
	r.run(t, "offline")
}

// TestClusterConnectRetryWritesMirror: a connect batch fails with a
// PartitionsError (one partition migrating) after the other partitions
// registered their connections; once the partition is back, the gateway's
// retry of the same entries (same seq) is Stale for those, and the mirror
// of their users, online, is written all the same.
func TestClusterConnectRetryWritesMirror(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0)
	cc := rc.Client(t)
	c := clusterOn(t, cc, 6, presence.Options{})
	ctx := context.Background()
	ids := idsInDistinctPartitions(c, 2, "c")
	healthy, blocked := ids[0], ids[1]
	if _, err := c.Heartbeat(ctx, []string{blocked}); err != nil { // its partition's epoch
		t.Fatal(err)
	}
	unblock := blockPartition(t, rc, cc, c, blocked)
	batch := []contract.Conn{
		{UserID: healthy, ConnectionID: "c1", GatewayID: "gw", Seq: 1},
		{UserID: blocked, ConnectionID: "c1", GatewayID: "gw", Seq: 1},
	}
	if _, err := c.Connect(ctx, batch); err == nil {
		t.Fatal("connect succeeded although a partition is migrating")
	}
	unblock()
	res, err := c.Connect(ctx, batch) // the gateway's retry
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx, healthy)
	if err != nil {
		t.Fatal(err)
	}
	if st.Online && cc.Exists(ctx, c.MirrorKey(healthy)).Val() == 0 {
		t.Fatalf("after a successful retry: %s online, connect result %d, mirror missing", healthy, res[0])
	}
}
