package worker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The embedded nats-server and go-redis pools keep background goroutines
		// that end after the test binary's last cleanup.
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// After a test kills a redis-server, go-redis redials in the
		// background and notices the client was closed only after its next
		// 1s pause.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"),
	)
}

func TestOnlineOnceRefreshSilentDisconnect(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	e.startReplica()

	r := e.heartbeat("u-1")
	if r.Accepted != 1 || len(r.Rejected) != 0 || r.Error != "" {
		t.Fatalf("reply %+v", r)
	}
	evs := e.waitEvents(1, 5*time.Second)
	if evs[0].UserID != "u-1" || evs[0].Status != "online" || evs[0].Reason != "heartbeat" || evs[0].Version <= 0 {
		t.Fatalf("event %+v", evs[0])
	}
	if d := time.Since(evs[0].At); d < 0 || d > time.Minute {
		t.Fatalf("event at %v is not Redis time now", evs[0].At)
	}
	// The seed's key, exactly.
	if v, err := e.rdb.Get(context.Background(), e.prefix+"user:u-1").Result(); err != nil || v != "1" {
		t.Fatalf("GET key = %q, %v", v, err)
	}
	if ttl := e.rdb.PTTL(context.Background(), e.prefix+"user:u-1").Val(); ttl <= 50*time.Second || ttl > time.Minute {
		t.Fatalf("PTTL = %v", ttl)
	}

	// Refreshes: accepted, key TTL renewed, no further events.
	for range 5 {
		if r := e.heartbeat("u-1"); r.Accepted != 1 {
			t.Fatalf("refresh reply %+v", r)
		}
	}
	// A disconnect is the next event; had a refresh produced one, it would come first.
	if r := e.disconnect("u-1"); r.Accepted != 1 {
		t.Fatalf("disconnect reply %+v", r)
	}
	evs = e.waitEvents(2, 5*time.Second)
	if got := summary(evs); !slices.Equal(got, []string{"u-1:offline:disconnect", "u-1:online:heartbeat"}) {
		t.Fatalf("events %v", got)
	}
	checkVersions(t, evs)
	if n := e.rdb.Exists(context.Background(), e.prefix+"user:u-1").Val(); n != 0 {
		t.Fatal("key still exists after disconnect")
	}
	// A second disconnect of an offline user publishes nothing; a new session does.
	e.disconnect("u-1")
	e.heartbeat("u-1")
	evs = e.waitEvents(3, 5*time.Second)
	if got := summary(evs); !slices.Equal(got, []string{"u-1:offline:disconnect", "u-1:online:heartbeat", "u-1:online:heartbeat"}) {
		t.Fatalf("events %v", got)
	}
	checkVersions(t, evs)
}

func TestExpiryWithShortTTL(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 300*time.Millisecond)
	e.startReplica()
	ids := []string{"a", "b", "c"}
	e.heartbeat(ids...)
	evs := e.waitEvents(6, 10*time.Second)
	want := []string{"a:offline:expired", "a:online:heartbeat", "b:offline:expired", "b:online:heartbeat", "c:offline:expired", "c:online:heartbeat"}
	if got := summary(evs); !slices.Equal(got, want) {
		t.Fatalf("events %v", got)
	}
	checkVersions(t, evs)
	for _, ev := range evs {
		if ev.Status == "offline" && ev.At.Before(evs[0].At) {
			t.Fatalf("offline before online: %+v", ev)
		}
	}
	// Memory follows the users online: nothing per user is left behind.
	ctx := context.Background()
	e.waitNoResidue(10 * time.Second)
	testenv.Eventually(t, 5*time.Second, func() bool { return e.rdb.XLen(ctx, e.prefix+"outbox").Val() <= 1 },
		"outbox not trimmed: %d entries", e.rdb.XLen(ctx, e.prefix+"outbox").Val())
}

func TestHeartbeatKeepsSessionAcrossLapsedKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 500*time.Millisecond)
	rep := e.startReplica()
	e.heartbeat("u")
	e.waitEvents(1, 5*time.Second)
	// Stop the worker so nobody claims; the key lapses in Redis.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rep.w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return e.rdb.Exists(ctx, e.prefix+"user:u").Val() == 0 }, "key did not lapse")
	// A heartbeat before any offline was claimed continues the session.
	v, err := rep.store.Heartbeat(ctx, []string{"u"})
	if err != nil || v[0] != 0 {
		t.Fatalf("heartbeat after lapse: versions %v, err %v (want a silent refresh)", v, err)
	}
	if got := e.count(); got != 1 {
		t.Fatalf("%d events, want only the first online", got)
	}
}

func TestBatchWithInvalidIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	e.startReplica()
	long := strings.Repeat("x", 257)
	payload := fmt.Sprintf(`{"userIds":["ok-1","","ok-2",%q,"bad\u0000nul","ok-1",42,"glob*","ok-3"]}`, long)
	r := e.request(e.subjects.Heartbeat(), []byte(payload))
	if r.Accepted != 3 || r.Error != "" {
		t.Fatalf("reply %+v, want 3 accepted", r)
	}
	if len(r.Rejected) != 5 {
		t.Fatalf("rejected %+v, want 5", r.Rejected)
	}
	for _, rj := range r.Rejected {
		if !strings.HasPrefix(rj.Error, "invalid userId: ") {
			t.Fatalf("rejection %+v has no clear reason", rj)
		}
	}
	evs := e.waitEvents(3, 5*time.Second)
	if got := summary(evs); !slices.Equal(got, []string{"ok-1:online:heartbeat", "ok-2:online:heartbeat", "ok-3:online:heartbeat"}) {
		t.Fatalf("events %v", got)
	}
	// Whole-message failures get a clear error and touch nothing.
	for _, bad := range []string{`not json`, `{"userIds":`, `[]`, `{}`, `{"userIds":[]}`, ``} {
		r := e.request(e.subjects.Heartbeat(), []byte(bad))
		if r.Error == "" || r.Accepted != 0 {
			t.Fatalf("message %q: reply %+v, want an error", bad, r)
		}
	}
	// The worker is still alive and well.
	if r := e.heartbeat("ok-4"); r.Accepted != 1 {
		t.Fatalf("reply %+v", r)
	}
	e.waitEvents(4, 5*time.Second)
	keys := e.rdb.Keys(context.Background(), e.prefix+"user:*").Val()
	slices.Sort(keys)
	want := []string{e.prefix + "user:ok-1", e.prefix + "user:ok-2", e.prefix + "user:ok-3", e.prefix + "user:ok-4"}
	if !slices.Equal(keys, want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
}

func TestSingleIDMessageAndNoReply(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	e.startReplica()
	// Without a reply subject the message is processed all the same.
	if err := e.nc.Publish(e.subjects.Heartbeat(), []byte(`{"userId":"solo"}`)); err != nil {
		t.Fatal(err)
	}
	evs := e.waitEvents(1, 5*time.Second)
	if evs[0].UserID != "solo" {
		t.Fatalf("event %+v", evs[0])
	}
}

func TestThreeReplicasExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 700*time.Millisecond)
	for range 3 {
		e.startReplica()
	}
	const users = 300
	ids := make([]string, users)
	for i := range ids {
		ids[i] = fmt.Sprintf("user-%03d", i)
	}
	// Spread over many messages so all three replicas take a share.
	for i := 0; i < users; i += 10 {
		if r := e.heartbeat(ids[i : i+10]...); r.Accepted != 10 {
			t.Fatalf("reply %+v", r)
		}
	}
	// Half disconnect, the other half expire.
	for i := 0; i < users/2; i += 10 {
		e.disconnect(ids[i : i+10]...)
	}
	evs := e.waitEvents(2*users, 20*time.Second)
	// Let stragglers (a doubled event) arrive before counting.
	time.Sleep(time.Second)
	evs = e.received()
	if len(evs) != 2*users {
		t.Fatalf("%d events, want %d", len(evs), 2*users)
	}
	counts := map[string]int{}
	for _, ev := range evs {
		counts[ev.UserID+":"+string(ev.Status)]++
	}
	for i, id := range ids {
		if counts[id+":online"] != 1 || counts[id+":offline"] != 1 {
			t.Fatalf("user %s: %d online, %d offline", id, counts[id+":online"], counts[id+":offline"])
		}
		_ = i
	}
	reasons := map[string]int{}
	for _, ev := range evs {
		if ev.Status == "offline" {
			reasons[string(ev.Reason)]++
		}
	}
	if reasons["disconnect"] != users/2 || reasons["expired"] != users/2 {
		t.Fatalf("offline reasons %v", reasons)
	}
	checkVersions(t, evs)
}

var _ = contract.Reply{}

func TestAbusiveMessages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	e.startReplica()
	ctx := context.Background()
	// A victim whose key must never be touched by patterns that match it.
	e.heartbeat("victim")
	e.waitEvents(1, 5*time.Second)
	ttlBefore := e.rdb.PTTL(ctx, e.prefix+"user:victim").Val()

	// Nearly 1 MB: far over the maximum number of ids.
	var b strings.Builder
	b.WriteString(`{"userIds":[`)
	for i := 0; b.Len() < 1000*1000-32; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"u%07d"`, i)
	}
	b.WriteString(`]}`)
	if r := e.request(e.subjects.Heartbeat(), []byte(b.String())); !strings.Contains(r.Error, "too many ids") || r.Accepted != 0 {
		t.Fatalf("1 MB batch: reply %+v", r)
	}
	nested := strings.Repeat(`{"userIds":`, 50000) + `1` + strings.Repeat(`}`, 50000)
	if r := e.request(e.subjects.Heartbeat(), []byte(nested)); r.Error == "" {
		t.Fatalf("deeply nested JSON: reply %+v", r)
	}
	// Patterns, NUL bytes and broken UTF-8 are rejected one by one.
	bad := []byte("{\"userIds\":[\"*\",\"vic*\",\"?ictim\",\"[v]ictim\",\"victim\\u0000\",\"vic\xfftim\",\"ok\"]}")
	r := e.request(e.subjects.Heartbeat(), bad)
	if r.Accepted != 1 || len(r.Rejected) != 6 {
		t.Fatalf("reply %+v, want 1 accepted and 6 rejected", r)
	}
	// Disconnect with patterns cannot end the victim's session either.
	if r := e.request(e.subjects.Disconnect(), []byte(`{"userIds":["*","vic*","v?ctim"]}`)); r.Accepted != 0 || len(r.Rejected) != 3 {
		t.Fatalf("disconnect reply %+v", r)
	}
	e.waitEvents(2, 5*time.Second) // victim and ok online
	if n := e.rdb.Exists(ctx, e.prefix+"user:victim").Val(); n != 1 {
		t.Fatal("victim's key is gone")
	}
	if ttl := e.rdb.PTTL(ctx, e.prefix+"user:victim").Val(); ttl > ttlBefore {
		t.Fatalf("victim's TTL was refreshed by someone else's message: %v > %v", ttl, ttlBefore)
	}
	for _, ev := range e.received() {
		if ev.Status != "online" {
			t.Fatalf("unexpected event %+v", ev)
		}
	}
}

// A key under the prefix that another program keeps as a hash costs only
// its own id: the ids beside it (before and after it in the batch) get their
// sessions, events, index entries and count; the foreign id is rejected with
// its reason, and its key is neither overwritten nor deleted.
func TestForeignKeyCostsOnlyItsID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	m := metrics.New()
	e.startReplica(func(o *worker.Options, _ *presence.Options) { o.Metrics = m })
	ctx := context.Background()
	foreign := e.prefix + "user:42:devices"
	if err := e.rdb.HSet(ctx, foreign, "phone", "a1", "laptop", "b2").Err(); err != nil {
		t.Fatal(err)
	}
	checkForeign := func(step string) {
		t.Helper()
		got, err := e.rdb.HGetAll(ctx, foreign).Result()
		if err != nil || len(got) != 2 || got["phone"] != "a1" || got["laptop"] != "b2" {
			t.Fatalf("%s: the foreign hash is %v, %v; want it untouched", step, got, err)
		}
	}
	r := e.heartbeat("a-1", "a-2", "42:devices", "b-1", "b-2")
	if r.Error != "" || r.Accepted != 4 || len(r.Rejected) != 1 || r.Rejected[0].UserID != "42:devices" ||
		!strings.Contains(r.Rejected[0].Error, "another data type") {
		t.Fatalf("reply %+v, want 4 accepted and 42:devices rejected for its key's type", r)
	}
	checkForeign("after the heartbeat")
	evs := e.waitEvents(4, 5*time.Second)
	want := []string{"a-1:online:heartbeat", "a-2:online:heartbeat", "b-1:online:heartbeat", "b-2:online:heartbeat"}
	if got := summary(evs); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	store := presence.NewStore(e.rdb, presence.Options{Prefix: e.prefix, TTL: e.ttl})
	f, err := store.Footprint(ctx)
	if err != nil || f.Sessions != 4 || f.Count != 4 || f.IndexEntries != 4 {
		t.Fatalf("footprint %+v, %v; want 4 sessions, count 4, 4 index entries", f, err)
	}
	all, err := store.GetAllOnlineUsers(ctx)
	slices.Sort(all)
	if err != nil || !slices.Equal(all, []string{"a-1", "a-2", "b-1", "b-2"}) {
		t.Fatalf("listed %v, %v", all, err)
	}
	if st, err := store.Status(ctx, "42:devices"); err != nil || st.Online {
		t.Fatalf("status of the foreign id %+v, %v; want offline", st, err)
	}
	// A disconnect neither deletes the foreign key nor costs the others.
	r = e.disconnect("a-1", "42:devices")
	if r.Error != "" || r.Accepted != 1 || len(r.Rejected) != 1 || r.Rejected[0].UserID != "42:devices" {
		t.Fatalf("disconnect reply %+v, want 1 accepted and 42:devices rejected", r)
	}
	checkForeign("after the disconnect")
	evs = e.waitEvents(5, 5*time.Second)
	if got := summary(evs); !slices.Contains(got, "a-1:offline:disconnect") || len(got) != 5 {
		t.Fatalf("events %v", got)
	}
	if n := testutil.ToFloat64(m.Rejections.WithLabelValues("key_conflict")); n != 2 {
		t.Fatalf("presenced_rejections_total{reason=key_conflict} = %v, want 2", n)
	}
	checkVersions(t, e.received())
}
