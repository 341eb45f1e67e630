package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// heartbeater keeps users online from a goroutine the test owns, counting
// replies that carry an error.
type heartbeater struct {
	cancel context.CancelFunc
	done   chan struct{}
	errors atomic.Int64
	sent   atomic.Int64
}

func (e *env) keepAlive(every time.Duration, users ...string) *heartbeater {
	ctx, cancel := context.WithCancel(context.Background())
	h := &heartbeater{cancel: cancel, done: make(chan struct{})}
	nc := e.nats.Conn(e.t)
	payload := []byte(`{"userIds":["` + strings.Join(users, `","`) + `"]}`)
	go func() {
		defer close(h.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			msg, err := nc.Request(e.subjects.Heartbeat(), payload, max(every, 3*time.Second))
			h.sent.Add(1)
			// A failure the gateway sees: an error reply, or no replica in
			// the queue group (a replica leaves it while Redis is down).
			if errors.Is(err, nats.ErrNoResponders) || err == nil && strings.Contains(string(msg.Data), `"error"`) {
				h.errors.Add(1)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	e.t.Cleanup(h.stop)
	return h
}

func (h *heartbeater) stop() {
	h.cancel()
	<-h.done
}

func TestRedisUnreachableForTenSeconds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2*time.Second)
	proxy := testenv.StartProxy(t, e.redis.Addr)
	m := metrics.New()
	rep := e.startReplicaVia("redis://"+proxy.Addr+"/0", e.nats.URL(), func(o *worker.Options, _ *presence.Options) { o.Metrics = m })
	stayers, leavers := ids("stay", 10), ids("leave", 10)
	hb := e.keepAlive(400*time.Millisecond, stayers...)
	e.heartbeat(leavers...)
	e.waitEvents(20, 10*time.Second)

	proxy.Cut()
	ctx := context.Background()
	outage := time.Now()
	// Not ready: the readiness check pings Redis through the same path.
	testenv.Eventually(t, 5*time.Second, func() bool { return rep.rdb.Ping(ctx).Err() != nil }, "redis still answers through a cut proxy")
	// The replica leaves the queue group (counted, not ready), so heartbeats
	// fail at the gateway (an error reply for those it took before leaving,
	// no responders after) for the whole 10 s, while the worker keeps running.
	testenv.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(m.QueueGroupLeaves) > 0 }, "the replica did not leave the queue group")
	if rep.w.Ready() == nil {
		t.Fatal("ready while Redis is unreachable")
	}
	testenv.Eventually(t, 20*time.Second, func() bool { return time.Since(outage) >= 10*time.Second }, "")
	if hb.errors.Load() == 0 {
		t.Fatalf("no heartbeat failed at the gateway during the outage (%d sent)", hb.sent.Load())
	}
	if n := e.count(); n != 20 {
		t.Fatalf("%d events during the outage, want none beyond the 20 onlines", n)
	}
	proxy.Restore()
	testenv.Eventually(t, 10*time.Second, func() bool { return rep.rdb.Ping(ctx).Err() == nil }, "redis not back")

	// Leavers go offline (after one TTL of grace); stayers, heartbeating all
	// along, do not flap.
	evs := e.waitEvents(30, 20*time.Second)
	for _, ev := range evs {
		if ev.Status == "offline" && strings.HasPrefix(ev.UserID, "stay") {
			t.Fatalf("a user who kept heartbeating went offline: %+v", ev)
		}
	}
	if testutil.ToFloat64(m.Graced) == 0 {
		t.Fatal("no grace granted after the outage")
	}
	hb.stop()
	e.expectSessions(append(stayers, leavers...), 20*time.Second)
}

func TestNATSRestartWhileOfflinesDue(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, time.Second, []testenv.NATSOption{testenv.WithJetStream("")})
	// The independent consumer is a JetStream stream: it records what the
	// server received even while the test's own connection is reconnecting.
	ctx := context.Background()
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "EV_" + e.subjects.Prefix, Subjects: []string{e.subjects.Online(), e.subjects.Offline()}, Duplicates: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.startReplica()
	users := ids("n", 30)
	e.heartbeat(users...)
	e.waitEvents(len(users), 10*time.Second)
	// JetStream stores a message after core subscribers may have received
	// it: stopping the server before the stream holds every online could
	// lose the last ones, and then the count below never reaches 60.
	testenv.Eventually(t, 10*time.Second, func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(len(users))
	}, "stream did not store every online")
	// Stop NATS; the sessions run out meanwhile and their offlines wait (in
	// the index or the outbox: the worker does not claim while it cannot
	// receive heartbeats).
	e.nats.Stop(t)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return e.rdb.Exists(ctx, e.prefix+"user:"+users[len(users)-1]).Val() == 0
	}, "keys did not lapse")
	e.nats.Start(t)
	testenv.Eventually(t, 20*time.Second, func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(2*len(users))
	}, "stream did not receive every online and offline")
	// Settled (nothing left to publish), then exactly one of each per user.
	testenv.Eventually(t, 10*time.Second, func() bool {
		pe := e.rdb.XPending(ctx, e.prefix+"outbox", "presenced").Val()
		n, _ := e.rdb.Get(ctx, e.prefix+"count").Int64()
		return n == 0 && pe != nil && pe.Count == 0
	}, "not settled")
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(2*len(users)) {
		t.Fatalf("stream holds %d events, want %d", info.State.Msgs, 2*len(users))
	}
	counts := map[string]int{}
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var ev contract.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		counts[ev.UserID+":"+string(ev.Status)]++
	}
	for _, id := range users {
		if counts[id+":online"] != 1 || counts[id+":offline"] != 1 {
			t.Fatalf("user %s: %d online, %d offline in the stream", id, counts[id+":online"], counts[id+":offline"])
		}
	}
}

func TestSlowRedisKeepsMemoryBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	proxy := testenv.StartProxy(t, e.redis.Addr)
	m := metrics.New()
	const limit = 200 << 10
	rep := e.startReplicaVia("redis://"+proxy.Addr+"/0", e.nats.URL(), func(o *worker.Options, _ *presence.Options) {
		o.Metrics = m
		o.InFlight = 1
		o.IntakeBytes = limit
	})
	proxy.SetLatency(50 * time.Millisecond)
	// Flood far more than Redis (at 50ms a round trip) can take: 500
	// messages of 1000 ids, ~6 MB, into an intake of 200 KiB, which drops
	// the excess.
	nc := e.nats.Conn(t)
	big := []byte(`{"userIds":["` + strings.Join(ids("flood", 1000), `","`) + `"]}`)
	for range 500 {
		if err := nc.Publish(e.subjects.Heartbeat(), big); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return testutil.ToFloat64(m.IntakeDropped) > 0 },
		"no intake drops counted under a flood into a slow Redis")
	if got := rep.w.IntakeDropped(); got == 0 {
		t.Fatal("the worker does not report the drops the metric counted")
	}
	proxy.SetLatency(0)
	// Still serving once the backlog is through (a request may itself be
	// dropped while the intake is full: it is answered "overloaded", so ask
	// until accepted).
	testenv.Eventually(t, 60*time.Second, func() bool {
		msg, err := nc.Request(e.subjects.Heartbeat(), []byte(`{"userId":"after-flood"}`), 2*time.Second)
		return err == nil && strings.Contains(string(msg.Data), `"accepted":1`)
	}, "worker does not serve after the flood")
	// Memory stayed bounded: the intake never held more than its limit.
	if _, high := rep.w.IntakeBytes(); high == 0 || high > limit {
		t.Fatalf("intake held up to %d bytes; want between 1 and its limit of %d", high, limit)
	}
}
