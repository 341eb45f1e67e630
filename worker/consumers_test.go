package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// TestRemovesIdleOutboxConsumers: the consumer a crashed replica left in
// the outbox group (it read an entry under its name, acknowledged it, and
// never left) is removed once idle past the threshold; a consumer that
// still has an entry pending is kept, since removing it would drop the
// entry from the pending list and no replica would publish it.
func TestRemovesIdleOutboxConsumers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	ctx := context.Background()
	store := presence.NewStore(e.rdb, presence.Options{Prefix: e.prefix, TTL: e.ttl})
	if err := store.Outbox("setup").Init(ctx); err != nil {
		t.Fatal(err)
	}
	// Two outbox entries, one script call each.
	for _, id := range []string{"u-1", "u-2"} {
		if _, err := store.Heartbeat(ctx, []string{id}); err != nil {
			t.Fatal(err)
		}
	}
	stream := store.Keys().Outbox()
	read := func(consumer string) string {
		t.Helper()
		res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: presence.OutboxGroup, Consumer: consumer, Streams: []string{stream, ">"}, Count: 1, Block: -1}).Result()
		if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
			t.Fatalf("read as %s: %v %v", consumer, res, err)
		}
		return res[0].Messages[0].ID
	}
	// The replica that still holds an entry reads first, so it is always
	// at least as idle as the other.
	pendingID := read("crashed-pending")
	if err := e.rdb.XAck(ctx, stream, presence.OutboxGroup, read("crashed-acked")).Err(); err != nil {
		t.Fatal(err)
	}
	consumers := func() map[string]int64 {
		t.Helper()
		cs, err := e.rdb.XInfoConsumers(ctx, stream, presence.OutboxGroup).Result()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		for _, c := range cs {
			m[c.Name] = c.Pending
		}
		return m
	}
	if cs := consumers(); len(cs) != 2 {
		t.Fatalf("consumers before the replica starts: %v", cs)
	}

	m := metrics.New()
	e.startReplica(func(o *worker.Options, _ *presence.Options) {
		o.ConsumerIdleAfter = 300 * time.Millisecond
		o.ClaimAfter = time.Hour // the pending entry stays with its consumer
		o.Metrics = m
	})
	testenv.Eventually(t, 10*time.Second, func() bool { _, ok := consumers()["crashed-acked"]; return !ok }, "the crashed replica's idle consumer was not removed: %v", consumers())
	if n, ok := consumers()["crashed-pending"]; !ok || n != 1 {
		t.Fatalf("the consumer holding %s: pending %d, present %v; want kept with its entry", pendingID, n, ok)
	}
	p, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: presence.OutboxGroup, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(p) != 1 || p[0].ID != pendingID || p[0].Consumer != "crashed-pending" {
		t.Fatalf("pending list %+v, %v; want %s on crashed-pending", p, err, pendingID)
	}
	if got := testutil.ToFloat64(m.ConsumersRemoved); got < 1 {
		t.Fatalf("presenced_outbox_consumers_removed_total = %v, want at least 1", got)
	}
}
