package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// requestAsync sends a heartbeat or disconnect request for ids, with a
// Presence-Timeout header when timeout > 0, and delivers the raw reply.
func (e *env) requestAsync(subject string, timeout time.Duration, ids ...string) <-chan string {
	out := make(chan string, 1)
	data, _ := json.Marshal(map[string]any{"userIds": ids})
	m := &nats.Msg{Subject: subject, Data: data}
	if timeout > 0 {
		m.Header = nats.Header{contract.TimeoutHeader: []string{fmt.Sprint(timeout.Milliseconds())}}
	}
	go func() {
		r, err := e.nc.RequestMsg(m, 10*time.Second)
		if err != nil {
			out <- "ERR " + err.Error()
			return
		}
		out <- string(r.Data)
	}()
	return out
}

// pauseWrites makes Redis hold every write command (scripts included) for d.
func (e *env) pauseWrites(d time.Duration) {
	e.t.Helper()
	if err := e.rdb.Do(context.Background(), "CLIENT", "PAUSE", fmt.Sprint(d.Milliseconds()), "WRITE").Err(); err != nil {
		e.t.Fatal(err)
	}
}

// TestExpiredRequestNotStored: a disconnect whose sender stops waiting
// (Presence-Timeout) while it is still queued behind a slow store call is
// not stored when its turn comes: the sender may have sent it again to
// another replica and sent a heartbeat after it, which a late copy would
// undo. It is answered "expired" and counted. The same disconnect without
// the header is stored however late.
func TestExpiredRequestNotStored(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	m := metrics.New()
	e.startReplica(func(o *worker.Options, _ *presence.Options) { o.InFlight = 1; o.Metrics = m })
	e.heartbeat("stays", "goes")
	e.waitEvents(2, 10*time.Second)

	e.pauseWrites(1500 * time.Millisecond)
	blocker := e.requestAsync(e.subjects.Heartbeat(), 0, "blocker") // the executor's call, held by Redis
	time.Sleep(200 * time.Millisecond)
	timed := e.requestAsync(e.subjects.Disconnect(), 300*time.Millisecond, "stays") // queued behind it
	untimed := e.requestAsync(e.subjects.Disconnect(), 0, "goes")
	if r := <-timed; !strings.Contains(r, "expired") || !strings.Contains(r, `"retry":true`) {
		t.Fatalf("disconnect past its sender's timeout answered %s, want expired with retry", r)
	}
	if r := <-untimed; !strings.Contains(r, `"accepted":1`) {
		t.Fatalf("disconnect without a timeout answered %s", r)
	}
	if r := <-blocker; !strings.Contains(r, `"accepted":1`) {
		t.Fatalf("blocker answered %s", r)
	}
	ctx := context.Background()
	if n := e.rdb.Exists(ctx, e.prefix+"user:stays").Val(); n != 1 {
		t.Fatal("an expired disconnect was stored: the user is offline")
	}
	if n := e.rdb.Exists(ctx, e.prefix+"user:goes").Val(); n != 0 {
		t.Fatal("a disconnect without a timeout was not stored")
	}
	if got := testutil.ToFloat64(m.Disconnects.WithLabelValues("expired")); got != 1 {
		t.Fatalf("expired disconnect ids counted %v, want 1", got)
	}
}

// TestStoreRefusalsRetryable: Redis refusing writes for reasons that pass
// (no replica to write to, out of memory) is answered with retry, so
// gateways send again; the replica stays in the queue group (every replica
// shares that Redis, so leaving would only turn answers into silence).
func TestStoreRefusalsRetryable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	m := metrics.New()
	rep := e.startReplica(func(o *worker.Options, _ *presence.Options) { o.Metrics = m })
	ctx := context.Background()
	for _, c := range []struct{ name, key, value, undo string }{
		{"NOREPLICAS", "min-replicas-to-write", "1", "0"},
		{"OOM", "maxmemory", "1", "0"},
	} {
		if c.name == "OOM" {
			if err := e.rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.rdb.ConfigSet(ctx, c.key, c.value).Err(); err != nil {
			t.Fatal(err)
		}
		r := <-e.requestAsync(e.subjects.Heartbeat(), 0, "u-"+c.name)
		if err := e.rdb.ConfigSet(ctx, c.key, c.undo).Err(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(r, c.name) || !strings.Contains(r, `"retry":true`) {
			t.Fatalf("%s: reply %s, want the refusal with retry", c.name, r)
		}
		if err := rep.w.Ready(); err != nil {
			t.Fatalf("%s: not ready: %v", c.name, err)
		}
	}
	if n := testutil.ToFloat64(m.QueueGroupLeaves); n != 0 {
		t.Fatalf("left the queue group %v times for refusals every replica shares", n)
	}
	if r := <-e.requestAsync(e.subjects.Heartbeat(), 0, "after"); !strings.Contains(r, `"accepted":1`) {
		t.Fatalf("after the refusals: %s", r)
	}
}

// TestDemotedRedisDoesNotFlap: the replica's Redis becomes a replica of an
// unreachable master (PING and SCRIPT LOAD pass, writes fail READONLY). The
// replica leaves the queue group once and stays out (it rejoins only when
// its Redis is a master), instead of rejoining and failing in a loop; it
// rejoins when Redis is a master again.
func TestDemotedRedisDoesNotFlap(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	m := metrics.New()
	rep := e.startReplica(func(o *worker.Options, _ *presence.Options) { o.Metrics = m })
	ctx := context.Background()
	if err := e.rdb.Do(ctx, "REPLICAOF", "127.0.0.1", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.rdb.Do(context.Background(), "REPLICAOF", "NO", "ONE") })
	deadline := time.Now().Add(3 * time.Second)
	failed := 0
	for time.Now().Before(deadline) {
		if r := <-e.requestAsync(e.subjects.Heartbeat(), 0, "u-1"); strings.Contains(r, "READONLY") {
			failed++
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := testutil.ToFloat64(m.QueueGroupLeaves); n != 1 {
		t.Fatalf("left the queue group %v times in 3 s, want once (%d requests failed READONLY)", n, failed)
	}
	if rep.w.Ready() == nil {
		t.Fatal("ready on a read-only Redis")
	}
	if err := e.rdb.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return rep.w.Ready() == nil }, "not back after Redis became a master: %v", rep.w.Ready())
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(<-e.requestAsync(e.subjects.Heartbeat(), 0, "u-2"), `"accepted":1`)
	}, "heartbeats not stored after rejoining")
}

// TestStopOutOfTimeAnswersShuttingDown: Stop whose context runs out while
// requests wait behind a store call Redis holds answers them "shutting
// down" with retry: they were never attempted, and another replica can
// store them.
func TestStopOutOfTimeAnswersShuttingDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	rep := e.startReplica(func(o *worker.Options, _ *presence.Options) { o.InFlight = 1 })
	e.pauseWrites(1500 * time.Millisecond)
	first := e.requestAsync(e.subjects.Heartbeat(), 0, "first")
	time.Sleep(200 * time.Millisecond)
	var queued []<-chan string
	for i := range 4 {
		queued = append(queued, e.requestAsync(e.subjects.Heartbeat(), 0, fmt.Sprintf("q-%d", i)))
	}
	time.Sleep(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_ = rep.w.Stop(ctx) // out of time: reports it
	<-first
	for i, q := range queued {
		if r := <-q; !strings.Contains(r, "shutting down") || !strings.Contains(r, `"retry":true`) {
			t.Fatalf("queued request %d answered %s, want shutting down with retry", i, r)
		}
	}
}

// TestRejectionsChargedToBudget: messages with one valid id and 9,999
// invalid ones hold their decoded rejections until answered; the queue
// before the executors charges them, so while Redis holds the store calls
// the heap stays near the intake's bound instead of growing with every
// decoded message.
func TestRejectionsChargedToBudget(t *testing.T) {
	e := newEnv(t, time.Minute)
	rep := e.startReplica(func(o *worker.Options, _ *presence.Options) {
		o.InFlight = 1
		o.IntakeBytes = 4 << 20
	})
	heap := func() int64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	base := heap()
	e.pauseWrites(6 * time.Second)
	bad := strings.Repeat(`,"a*"`, 9999)
	for i := range 300 {
		if err := e.nc.Publish(e.subjects.Heartbeat(), fmt.Appendf(nil, `{"userIds":["v-%d"%s]}`, i, bad)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// 300 messages of ~50 KB cannot fit a 4 MiB intake while Redis holds
	// the store calls: once it drops, the queue and the intake are full.
	testenv.Eventually(t, 5*time.Second, func() bool { return rep.w.IntakeDropped() > 0 }, "the intake never filled")
	held := heap() - base
	t.Logf("heap held while Redis is paused: %.1f MiB (intake bound 4 MiB)", float64(held)/(1<<20))
	if held > 32<<20 {
		t.Fatalf("heap grew by %.1f MiB with a 4 MiB intake: decoded messages escape the bound", float64(held)/(1<<20))
	}
	// Once Redis takes writes again, the worker works off what it kept:
	// the intake empties and the valid id of each kept message comes online
	// (the first message was queued before anything could be dropped).
	if err := e.rdb.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		now, _ := rep.w.IntakeBytes()
		return now == 0 && slices.Contains(summaryOf(e), "v-0:online:heartbeat")
	}, "intake not drained after the pause ended: %v", summaryOf(e))
}
