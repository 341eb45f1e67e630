package worker_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// TestDisconnectThenHeartbeatKeepsOrder: a page reload. A gateway sends a
// disconnect and then a heartbeat for the same user, back to back, without
// waiting for replies; one replica applies them in that order, so the user
// ends online (online, offline, online), not offline while connected.
func TestDisconnectThenHeartbeatKeepsOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	e.startReplica()
	users := ids("reload", 300)
	e.heartbeat(users...)
	e.waitEvents(len(users), 10*time.Second)

	nc := e.nats.Conn(t)
	for _, u := range users {
		if err := nc.Publish(e.subjects.Disconnect(), []byte(`{"userId":"`+u+`"}`)); err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(e.subjects.Heartbeat(), []byte(`{"userId":"`+u+`"}`)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// One offline and one new online each; the store has everything once a
	// request sent after the reloads is answered.
	e.heartbeat("marker")
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() bool { return e.count() >= 3*len(users)+1 }, "%d events, want %d", e.count(), 3*len(users)+1)
	var offline []string
	for _, u := range users {
		if e.rdb.Exists(ctx, e.prefix+"user:"+u).Val() == 0 {
			offline = append(offline, u)
		}
	}
	if len(offline) > 0 {
		t.Fatalf("%d of %d users offline in Redis after disconnect+heartbeat, e.g. %v", len(offline), len(users), offline[:min(5, len(offline))])
	}
	byUser := map[string][]string{}
	evs := e.received()
	sort.Slice(evs, func(i, j int) bool { return evs[i].Version < evs[j].Version })
	for _, ev := range evs {
		byUser[ev.UserID] = append(byUser[ev.UserID], string(ev.Status)+":"+string(ev.Reason))
	}
	want := "[online:heartbeat offline:disconnect online:heartbeat]"
	for _, u := range users {
		if got := fmt.Sprint(byUser[u]); got != want {
			t.Fatalf("user %s: events %s, want %s", u, got, want)
		}
	}
	checkVersions(t, evs)
}

// TestReconnectStormLosesNoUser: a gateway fleet reconnecting after a deploy
// sends single-id first heartbeats as fast as one client can, far faster
// than Redis stores new sessions, and far more than a subscription's
// default pending limit of 65,536 messages. The intake, bounded in bytes,
// holds the burst: every user comes online, nothing is dropped, and the
// intake stays within its bound.
func TestReconnectStormLosesNoUser(t *testing.T) {
	t.Parallel()
	const n = 150_000
	e := newEnv(t, 5*time.Minute)
	m := metrics.New()
	rep := e.startReplica(func(o *worker.Options, _ *presence.Options) { o.Metrics = m })
	nc := e.nats.Conn(t)
	for i := range n {
		if err := nc.Publish(e.subjects.Heartbeat(), fmt.Appendf(nil, `{"userId":"storm-%06d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	store := presence.NewStore(e.rdb, presence.Options{Prefix: e.prefix})
	ctx := context.Background()
	var count int64
	testenv.Eventually(t, 3*time.Minute, func() bool {
		count, _ = store.Count(ctx)
		return count >= n || rep.w.IntakeDropped() > 0 || rep.bus.SlowConsumerDrops() > 0
	}, "%d of %d users online", count, n)
	if d, s := rep.w.IntakeDropped(), rep.bus.SlowConsumerDrops(); d > 0 || s > 0 {
		t.Fatalf("dropped %d messages in the intake and %d as a slow consumer (%d of %d users online)", d, s, count, n)
	}
	if count != n {
		t.Fatalf("%d users online, want %d", count, n)
	}
	now, high := rep.w.IntakeBytes()
	t.Logf("intake held up to %d bytes (%.0f per message of the burst); %d now", high, float64(high)/float64(n), now)
	if high == 0 || high > 256<<20 {
		t.Fatalf("intake high-water mark %d bytes, want within (0, 256 MiB]", high)
	}
}

// TestReplicaCutFromRedisLeavesQueueGroup: two replicas, one of them cut off
// from Redis while NATS is fine. Users heartbeat every 0.5 s with a TTL of
// 1.5 s, fire and forget (no reply, no retry). The cut replica fails the
// first heartbeats it takes, then leaves the queue group, so the healthy
// one gets all of them: nobody who kept heartbeating goes offline. When
// Redis answers again the replica rejoins and takes its share.
func TestReplicaCutFromRedisLeavesQueueGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1500*time.Millisecond)
	proxy := testenv.StartProxy(t, e.redis.Addr)
	e.startReplica()
	mb := metrics.New()
	b := e.startReplicaVia("redis://"+proxy.Addr+"/0", e.nats.URL(), func(o *worker.Options, _ *presence.Options) { o.Metrics = mb })
	users := ids("cut", 60)
	nc := e.nats.Conn(t)
	beat := func() {
		for _, u := range users {
			if err := nc.Publish(e.subjects.Heartbeat(), []byte(`{"userId":"`+u+`"}`)); err != nil {
				t.Error(err)
			}
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			beat()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()
	e.waitEvents(len(users), 10*time.Second)

	proxy.Cut()
	testenv.Eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(mb.QueueGroupLeaves) > 0 }, "the cut replica did not leave the queue group")
	if err := b.w.Ready(); err == nil {
		t.Fatal("a replica out of the queue group reports ready")
	}
	time.Sleep(8 * time.Second) // users keep heartbeating while the replica is out: a flap would show here
	if n := e.offline.Len(); n != 0 {
		t.Fatalf("%d offline events for users who kept heartbeating while one replica was cut from Redis: %v", n, summaryOf(e))
	}

	proxy.Restore()
	testenv.Eventually(t, 10*time.Second, func() bool { return b.w.Ready() == nil }, "the replica did not rejoin: %v", b.w.Ready())
	before := testutil.ToFloat64(mb.Heartbeats.WithLabelValues("accepted"))
	testenv.Eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(mb.Heartbeats.WithLabelValues("accepted")) > before },
		"the rejoined replica stores no heartbeats")
	close(stop)
	<-done
	if n := e.offline.Len(); n != 0 {
		t.Fatalf("%d offline events: %v", n, summaryOf(e))
	}
	if n := e.online.Len(); n != len(users) {
		t.Fatalf("%d online events, want %d (one per user)", n, len(users))
	}
}
