package presence_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// clusterStore is a presence.Cluster of n partitions on a fresh cluster of
// three masters.
func clusterStore(t *testing.T, n int) (*testenv.RedisCluster, *redis.ClusterClient, *presence.Cluster) {
	t.Helper()
	rc := testenv.StartRedisCluster(t, 3, 0)
	cc := rc.Client(t)
	return rc, cc, clusterOn(t, cc, n, presence.Options{})
}

// clusterOn is a presence.Cluster of n partitions on cc, ready to write
// (Writable), with opts: where zero, a prefix of the test's own, a minute's
// TTL and 64 shards.
func clusterOn(t *testing.T, cc *redis.ClusterClient, n int, opts presence.Options) *presence.Cluster {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = testenv.Prefix(t) + ":"
	}
	if opts.TTL == 0 {
		opts.TTL = time.Minute
	}
	if opts.Shards == 0 {
		opts.Shards = 64
	}
	c := presence.NewCluster(cc, opts, n, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Writable(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// otherMaster returns a master of rc other than addr.
func otherMaster(t *testing.T, rc *testenv.RedisCluster, addr string) string {
	t.Helper()
	for _, m := range rc.Masters(t) {
		if m != addr {
			return m
		}
	}
	t.Fatalf("no master besides %s", addr)
	return ""
}

// slotOwner returns the address of the master serving slot.
func slotOwner(t *testing.T, cc *redis.ClusterClient, slot int) string {
	t.Helper()
	slots, err := cc.ClusterSlots(context.Background()).Result()
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

func TestPartitionTagsSpreadOverSlots(t *testing.T) {
	for _, n := range []int{1, 3, 12, 48, 1024} {
		tags := presence.PartitionTags(n)
		seen := map[string]bool{}
		for p, tag := range tags {
			s := presence.KeySlot("presence:{" + tag + "}:epoch")
			if lo, hi := p*presence.ClusterSlots/n, (p+1)*presence.ClusterSlots/n; s < lo || s >= hi {
				t.Fatalf("n=%d: partition %d tag %q in slot %d, outside its share [%d, %d)", n, p, tag, s, lo, hi)
			}
			if seen[tag] {
				t.Fatalf("n=%d: tag %q twice", n, tag)
			}
			seen[tag] = true
		}
	}
	// The tags are part of the data layout: they must never change.
	if got := strings.Join(presence.PartitionTags(6), ","); got != "3,b,2,1,d,0" {
		t.Fatalf("PartitionTags(6) = %s, want 3,b,2,1,d,0", got)
	}
	if got := strings.Join(presence.PartitionTags(48)[:8], ","); got != "10,18,6d,25,3,7,1p,1a" {
		t.Fatalf("PartitionTags(48) starts %s, want 10,18,6d,25,3,7,1p,1a", got)
	}
	// Redis's own examples (cluster spec): CRC16 of "123456789" is 0x31C3.
	if got := presence.KeySlot("123456789"); got != 0x31C3%presence.ClusterSlots {
		t.Fatalf("KeySlot(123456789) = %d, want %d", got, 0x31C3%presence.ClusterSlots)
	}
	if presence.KeySlot("{user1000}.following") != presence.KeySlot("{user1000}.followers") {
		t.Fatal("keys with one hash tag in different slots")
	}
}

// TestClusterMigratingSlotRefusesScripts moves a partition's slot by hand
// and stops half-way: the keys a disconnect declares (epoch, clock,
// outbox, count, index directory, the user's deadline key) are on the new
// master, the sessions shard the script reads without declaring it is
// still on the old one. Redis then sends the call to the new master
// (ASK), where the shard looks empty: without the fence key the
// disconnect would find no session, publish no offline and delete the
// user's key, and the session would end later as "expired". The fence (a
// declared key that never exists) makes Redis refuse the call (TRYAGAIN)
// before it runs; once the slot has moved, the disconnect ends the session
// with its offline.
func TestClusterMigratingSlotRefusesScripts(t *testing.T) {
	rc, cc, c := clusterStore(t, 6)
	ctx := context.Background()
	res, err := c.Heartbeat(ctx, []string{"alice"})
	if err != nil || res[0] <= 0 {
		t.Fatalf("heartbeat = %v, %v; want a new session", res, err)
	}
	part := c.Partitions()[c.PartitionOf("alice")]
	keys := part.Keys()
	slot := presence.KeySlot(keys.Epoch())
	src := slotOwner(t, cc, slot)
	dst := otherMaster(t, rc, src)
	srcC, dstC := rc.Node(t, src).Client(t), rc.Node(t, dst).Client(t)
	srcID, dstID := rc.NodeID(t, src), rc.NodeID(t, dst)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dstC.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err())
	must(srcC.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	host, port, _ := net.SplitHostPort(dst)
	migrate := func(ks ...string) {
		t.Helper()
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range ks {
			args = append(args, k)
		}
		must(srcC.Do(ctx, args...).Err())
	}
	declared := []string{keys.Epoch(), keys.Clock(), keys.Outbox(), keys.Count(), keys.Dir(), keys.User("alice")}
	for _, k := range declared {
		if srcC.Exists(ctx, k).Val() != 1 {
			t.Fatalf("key %s missing before the move", k)
		}
	}
	migrate(declared...)

	_, err = c.Disconnect(ctx, []string{"alice"})
	if err == nil || !strings.Contains(err.Error(), "TRYAGAIN") {
		t.Fatalf("disconnect during the move = %v, want TRYAGAIN", err)
	}
	if presence.IsUnavailable(err) || !presence.IsRetryable(err) {
		t.Fatalf("a partition's TRYAGAIN: unavailable %v, retryable %v; want a retryable error that does not take the replica out", presence.IsUnavailable(err), presence.IsRetryable(err))
	}
	var exists *redis.IntCmd
	_, err = dstC.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Do(ctx, "ASKING") // the importing node answers for the slot only after ASKING
		exists = p.Exists(ctx, keys.User("alice"))
		return nil
	})
	must(err)
	if exists.Val() != 1 {
		t.Fatal("the refused disconnect deleted the user's key")
	}

	// Finish the move, as redis-cli --cluster reshard does.
	rest, err := srcC.ClusterGetKeysInSlot(ctx, slot, 10000).Result()
	must(err)
	if len(rest) > 0 {
		migrate(rest...)
	}
	for _, m := range rc.Masters(t) {
		must(rc.Node(t, m).Client(t).Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return slotOwner(t, cc, slot) == dst }, "slot %d not moved", slot)

	res, err = c.Disconnect(ctx, []string{"alice"})
	if err != nil || res[0] <= 0 {
		t.Fatalf("disconnect after the move = %v, %v; want the offline's version", res, err)
	}
	ob := c.Outboxes("t")[c.PartitionOf("alice")]
	must(ob.Init(ctx))
	evs, err := ob.ReadNew(ctx, 100, -1)
	must(err)
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s %s %s", e.Status, e.Reason, e.UserID))
	}
	want := "reset data_loss ,online heartbeat alice,offline disconnect alice"
	if strings.Join(got, ",") != want {
		t.Fatalf("events of alice's partition = %q, want %q", strings.Join(got, ","), want)
	}
}

// TestClusterPartitionLossResetsItsPartition deletes one partition's keys
// (a master that lost its data): the next heartbeats start new sessions
// for that partition's users only, and the partition's outbox carries a
// reset that names the partition, so consumers clear no one else.
func TestClusterPartitionLossResetsItsPartition(t *testing.T) {
	const n = 6
	rc, cc, c := clusterStore(t, n)
	ctx := context.Background()
	var ids []string
	for i := range 120 {
		ids = append(ids, fmt.Sprintf("u%d", i))
	}
	if _, err := c.Heartbeat(ctx, ids); err != nil {
		t.Fatal(err)
	}
	const lost = 2
	keys := c.Partitions()[lost].Keys()
	slot := presence.KeySlot(keys.Epoch())
	node := rc.Node(t, slotOwner(t, cc, slot)).Client(t)
	ks, err := node.ClusterGetKeysInSlot(ctx, slot, 100000).Result()
	if err != nil || len(ks) == 0 {
		t.Fatalf("keys of partition %d: %v, %v", lost, ks, err)
	}
	if err := node.Del(ctx, ks...).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := c.Heartbeat(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	renewed := 0
	for i, id := range ids {
		inLost := contract.PartitionOf(id, n) == lost
		if (res[i] > 0) != inLost {
			t.Fatalf("user %s (partition %d): heartbeat result %d; want a new session exactly in the lost partition %d", id, contract.PartitionOf(id, n), res[i], lost)
		}
		if inLost {
			renewed++
		}
	}
	if renewed == 0 {
		t.Fatal("no user in the lost partition")
	}
	ob := c.Outboxes("t")[lost]
	if err := ob.Init(ctx); err != nil {
		t.Fatal(err)
	}
	evs, err := ob.ReadNew(ctx, 100, -1)
	if err != nil || len(evs) == 0 {
		t.Fatalf("read: %v %v", evs, err)
	}
	if e := evs[0]; e.Status != contract.StatusReset || e.Partition != lost || e.Partitions != n {
		t.Fatalf("first event of the lost partition = %+v, want a reset naming partition %d of %d", e, lost, n)
	}
	if cnt, err := c.Count(ctx); err != nil || cnt != int64(len(ids)) {
		t.Fatalf("count = %d, %v; want %d", cnt, err, len(ids))
	}
}
