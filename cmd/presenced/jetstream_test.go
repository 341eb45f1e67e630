package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testenv"
)

// jsReplica runs presenced as a process with PRESENCE_STREAM=stream and a
// claim time of claim; its logs are returned. It is killed when the test ends.
func jsReplica(t *testing.T, r *testenv.Redis, n *testenv.NATS, p, stream string, claim time.Duration, env ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(faultBinary(t), "--http-addr", "off", "--subject-prefix", p, "--key-prefix", p+":",
		"--ttl", "1m", "--outbox-claim-after", claim.String(), "--reconcile-interval", "50ms")
	cmd.Env = append(append(os.Environ(), "NATS_URL="+n.URL(), "REDIS_URL="+r.URL(), "PRESENCE_STREAM="+stream), env...)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	testenv.Eventually(t, 15*time.Second, func() bool { return contains(logs, "worker started") },
		"replica did not start:\n%s", logs)
	return cmd, logs
}

// streamIDs returns how many messages of the stream carry each
// "<status> <Nats-Msg-Id>", checking each id against the event; the test's
// "sentinel" message is left out.
func streamIDs(t *testing.T, ctx context.Context, s jetstream.Stream) map[string]int {
	t.Helper()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		id := m.Header.Get(nats.MsgIdHdr)
		if id == "sentinel" {
			continue
		}
		var ev event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("message %d %q: %v", seq, m.Data, err)
		}
		want := fmt.Sprintf("%s:%d", ev.UserID, ev.Version)
		if ev.Status == "reset" {
			want = fmt.Sprintf("reset:%d", ev.Version)
		}
		if id != want {
			t.Fatalf("message %d: Nats-Msg-Id %q, want %q", seq, id, want)
		}
		ids[ev.Status+" "+id]++
	}
	return ids
}

// retries returns the most deliveries of any entry pending in the outbox.
func retries(ctx context.Context, rdb *redis.Client, p string) (pending int, most int64) {
	pe, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: p + ":outbox", Group: "presenced", Start: "-", End: "+", Count: 1000}).Result()
	if err != nil {
		return 0, 0
	}
	for _, e := range pe {
		most = max(most, e.RetryCount)
	}
	return len(pe), most
}

// TestStreamUnavailableLosesNoEvent: with PRESENCE_STREAM set, events the
// stream refuses (full with DiscardNew, then deleted) are not lost: their
// outbox entries stay pending and are retried, and once the stream takes
// messages again it holds every event exactly once.
func TestStreamUnavailableLosesNoEvent(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t, testenv.WithJetStream(""))
	nc := n.Conn(t)
	p := testenv.Prefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := "EV_" + p
	cfg := jetstream.StreamConfig{
		Name: name, Subjects: []string{p + ".online", p + ".offline", p + ".reset"},
		Duplicates: time.Minute, Storage: jetstream.MemoryStorage,
		MaxMsgs: 5, Discard: jetstream.DiscardNew,
	}
	stream, err := js.CreateStream(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rdb := r.Client(t)
	jsReplica(t, r, n, p, name, 2*time.Second)

	// Phase 1: the stream is full after the reset and four onlines.
	var users []string
	heartbeat := func(ids ...string) {
		t.Helper()
		for _, id := range ids {
			if _, err := nc.Request(p+".heartbeat", []byte(`{"userId":"`+id+`"}`), 5*time.Second); err != nil {
				t.Fatal(err)
			}
			users = append(users, id)
		}
	}
	for i := range 12 {
		heartbeat(fmt.Sprintf("full%02d", i))
	}
	// The refused events stay pending and are tried again and again (more
	// deliveries than a claim time would give a reclaim).
	testenv.Eventually(t, 30*time.Second, func() bool {
		pending, most := retries(ctx, rdb, p)
		return pending > 0 && most >= 4
	}, "no outbox entry pending and retried while the stream is full")
	if info, err := stream.Info(ctx); err != nil || info.State.Msgs != 5 {
		t.Fatalf("stream info %+v, %v; want 5 messages", info, err)
	}
	// The stream takes messages again.
	cfg.MaxMsgs = -1
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	settled := func(want int) func() bool {
		return func() bool {
			info, err := stream.Info(ctx)
			pending, _ := retries(ctx, rdb, p)
			return err == nil && info.State.Msgs == uint64(want) && pending == 0
		}
	}
	testenv.Eventually(t, 30*time.Second, settled(1+len(users)), "stream did not receive every event once it had room")
	assertOnce(t, streamIDs(t, ctx, stream), 1, users)

	// Phase 2: the stream is gone (no responders) while users come online.
	if err := js.DeleteStream(ctx, name); err != nil {
		t.Fatal(err)
	}
	users = nil
	for i := range 8 {
		heartbeat(fmt.Sprintf("gone%02d", i))
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		pending, most := retries(ctx, rdb, p)
		return pending > 0 && most >= 3
	}, "no outbox entry pending and retried while the stream is gone")
	cfg.MaxMsgs = -1
	if stream, err = js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, settled(len(users)), "recreated stream did not receive every event")
	assertOnce(t, streamIDs(t, ctx, stream), 0, users)
}

// assertOnce checks that ids holds resets resets and one online for each
// user, each once, and nothing else.
func assertOnce(t *testing.T, ids map[string]int, resets int, users []string) {
	t.Helper()
	online := map[string]bool{}
	gotResets := 0
	for id, n := range ids {
		if n != 1 {
			t.Errorf("%s is in the stream %d times", id, n)
		}
		status, msgID, _ := strings.Cut(id, " ")
		switch status {
		case "reset":
			gotResets++
		case "online":
			user, _, _ := strings.Cut(msgID, ":")
			online[user] = true
		default:
			t.Errorf("unexpected event %s", id)
		}
	}
	if gotResets != resets {
		t.Errorf("%d resets in the stream, want %d", gotResets, resets)
	}
	for _, u := range users {
		if !online[u] {
			t.Errorf("no online for %s in the stream", u)
		}
	}
	if len(online) != len(users) {
		t.Errorf("%d users online in the stream, want %d: %v", len(online), len(users), ids)
	}
}

// TestPausedReplicaDoesNotRepublish: replica A reads an outbox entry and is
// paused (SIGSTOP, from a test hook right after the read) for longer than
// the claim time; replica B reclaims the entry and publishes it. After the
// stream's duplicate window has passed, A resumes (SIGCONT): it must not
// publish the entry again, which the stream could no longer drop.
func TestPausedReplicaDoesNotRepublish(t *testing.T) {
	const claim = time.Second
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t, testenv.WithJetStream(""))
	nc := n.Conn(t)
	p := testenv.Prefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := "EV_" + p
	// A creates the stream: the event subjects, a duplicate window of twice
	// the claim time.
	a, aLogs := jsReplica(t, r, n, p, name, claim, "PRESENCED_TEST_STOP_AFTER_OUTBOX_READ=online", "LOG_LEVEL=debug")
	stream, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("presenced did not create stream %s: %v", name, err)
	}
	sc := stream.CachedInfo().Config
	if got := strings.Join(sc.Subjects, " "); got != p+".online "+p+".offline "+p+".reset" || sc.Duplicates != 2*claim {
		t.Fatalf("created stream: subjects %q, duplicates %s; want the three event subjects and %s", got, sc.Duplicates, 2*claim)
	}
	// Not a request: A may stop before its reply is out.
	if err := nc.Publish(p+".heartbeat", []byte(`{"userId":"paused"}`)); err != nil {
		t.Fatal(err)
	}
	// A read the online and stopped itself.
	testenv.Eventually(t, 10*time.Second, func() bool { return processState(a.Process.Pid) == "T" },
		"replica A did not stop after reading the online:\n%s", aLogs.String())
	if ids := streamIDs(t, ctx, stream); countStatus(ids, "online") != 0 {
		t.Fatalf("online published before the pause; the hook fired too late to test anything: %v", ids)
	}
	// B reclaims the entry after the claim time and publishes it.
	_, bLogs := jsReplica(t, r, n, p, name, claim)
	var storedAt time.Time
	testenv.Eventually(t, 20*time.Second, func() bool {
		info, err := stream.Info(ctx)
		if err != nil || info.State.Msgs == 0 {
			return false
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
			if m, err := stream.GetMsg(ctx, seq); err == nil && m.Subject == p+".online" {
				storedAt = m.Time
				return true
			}
		}
		return false
	}, "replica B did not publish the online A left pending:\n%s", bLogs.String())
	// Past the duplicate window the stream would store a republish.
	for time.Since(storedAt) < sc.Duplicates+500*time.Millisecond {
		time.Sleep(50 * time.Millisecond) // the window is a span of time: nothing to poll for
	}
	if err := a.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// A goes on from the point it stopped at: it either publishes the entry
	// (logging the online) or finds it is no longer its own.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return contains(aLogs, `"msg":"user became online"`) || contains(aLogs, "no longer owns")
	}, "replica A did not go on after SIGCONT:\n%s", aLogs.String())
	// A stops: whatever it sent has reached the server.
	if err := a.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_, _ = a.Process.Wait()
	// A sentinel through the stream: once its PubAck is back, the stream has
	// taken everything sent before it.
	if _, err := js.Publish(ctx, p+".reset", nil, jetstream.WithMsgID("sentinel")); err != nil {
		t.Fatal(err)
	}
	ids := streamIDs(t, ctx, stream)
	for id, k := range ids {
		if k != 1 {
			t.Errorf("%s is in the stream %d times (the paused replica republished it)", id, k)
		}
	}
	if got := len(ids); got != 2 || countStatus(ids, "online") != 1 {
		t.Errorf("the stream holds %v; want one reset and one online", ids)
	}
	if t.Failed() {
		t.Fatalf("replica A:\n%s", aLogs.String())
	}
}

func countStatus(ids map[string]int, status string) int {
	n := 0
	for id, k := range ids {
		if strings.HasPrefix(id, status+" ") {
			n += k
		}
	}
	return n
}

// processState returns the state letter of pid in /proc (R, S, T...).
func processState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// pid (comm) state ...
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// TestStartFailsOnUnfitStream: an existing stream that would also store
// heartbeats, or that keeps message ids for less than twice the claim time,
// stops start-up with an error naming the setting.
func TestStartFailsOnUnfitStream(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t, testenv.WithJetStream(""))
	p := testenv.Prefix(t)
	ctx := context.Background()
	js, err := jetstream.New(n.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  jetstream.StreamConfig
		want string
	}{
		{jetstream.StreamConfig{Name: "WIDE_" + p, Subjects: []string{p + ".>"}}, "also capture " + p + ".heartbeat"},
		{jetstream.StreamConfig{Name: "SHORT_" + p, Subjects: []string{p + ".online", p + ".offline", p + ".reset"}, Duplicates: 10 * time.Second},
			"at least twice PRESENCE_OUTBOX_CLAIM_AFTER (15s)"},
	} {
		if _, err := js.CreateStream(ctx, tc.cfg); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binary(t), "--http-addr", "off", "--subject-prefix", p, "--key-prefix", p+":")
		cmd.Env = append(os.Environ(), "NATS_URL="+n.URL(), "REDIS_URL="+r.URL(), "PRESENCE_STREAM="+tc.cfg.Name)
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "PRESENCE_STREAM") || !strings.Contains(string(out), tc.want) {
			t.Fatalf("stream %s: %v; want exit 1 and an error naming PRESENCE_STREAM with %q:\n%s", tc.cfg.Name, err, tc.want, out)
		}
		if err := js.DeleteStream(ctx, tc.cfg.Name); err != nil {
			t.Fatal(err)
		}
	}
}
