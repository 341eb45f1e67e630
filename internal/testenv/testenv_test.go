package testenv

import (
	"context"
	"fmt"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 10 * time.Second

func TestRedisSetGet(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	if want := fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port); r.URL() != want {
		t.Fatalf("URL() = %q, want %q", r.URL(), want)
	}
	ctx := context.Background()
	c := r.Client(t)
	key := Prefix(t) + ":k"
	if err := c.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, key).Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want \"v\"", got, err)
	}
	// The worker turns keyspace notifications on itself; testenv must not.
	if got := c.ConfigGet(ctx, "notify-keyspace-events").Val()["notify-keyspace-events"]; got != "" {
		t.Fatalf("notify-keyspace-events = %q, want it off", got)
	}
}

func TestRedisRestart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		opts     []RedisOption
		wantKept bool
	}{
		{name: "aof keeps data", opts: []RedisOption{WithAOF()}, wantKept: true},
		{name: "no aof loses data", wantKept: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			r := StartRedis(t, tt.opts...)
			c := r.Client(t)
			key := Prefix(t) + ":k"
			if err := c.Set(ctx, key, "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
			port := r.Port
			r.Restart(t)
			if r.Port != port {
				t.Fatalf("port changed across Restart: %d -> %d", port, r.Port)
			}
			got, err := c.Get(ctx, key).Result()
			switch {
			case tt.wantKept && (err != nil || got != "v"):
				t.Fatalf("GET after restart = %q, %v; want \"v\"", got, err)
			case !tt.wantKept && err != redis.Nil:
				t.Fatalf("GET after restart = %q, %v; want redis.Nil", got, err)
			}
		})
	}
}

func TestRedisStopStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := StartRedis(t)
	c := r.Client(t)
	r.Stop(t)
	r.Stop(t) // idempotent
	if err := ping(r.Addr, ""); err == nil {
		t.Fatal("PING succeeded on a stopped server")
	}
	r.Start(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Start: %v", err)
	}
	if msg := fatalOf(t, func(tb testing.TB) { r.Start(tb) }); !strings.Contains(msg, "already running") {
		t.Fatalf("Start on a running server: fatal = %q", msg)
	}
}

func TestRedisPassword(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := StartRedis(t, WithPassword("s3cr:t"))
	if err := r.Client(t).Ping(ctx).Err(); err != nil {
		t.Fatalf("PING with password: %v", err)
	}
	anon := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("PING without password = %v, want NOAUTH", err)
	}
}

func TestRedisWithConfig(t *testing.T) {
	t.Parallel()
	r := StartRedis(t, WithConfig("maxmemory", "10mb"), WithConfig("notify-keyspace-events", "Ex"))
	got := r.Client(t).ConfigGet(context.Background(), "*").Val()
	if got["maxmemory"] != "10485760" {
		t.Errorf("maxmemory = %q, want 10485760", got["maxmemory"])
	}
	if got["notify-keyspace-events"] != "xE" {
		t.Errorf("notify-keyspace-events = %q, want xE", got["notify-keyspace-events"])
	}
}

// TestStartRedisWithoutBinary cannot be parallel: it empties PATH.
func TestStartRedisWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	msg := fatalOf(t, func(tb testing.TB) { StartRedis(tb) })
	if !strings.Contains(msg, "redis-server not found: install it with `apt-get install -y redis-server`") {
		t.Fatalf("fatal = %q", msg)
	}
}

func TestNATSCollect(t *testing.T) {
	t.Parallel()
	n := StartNATS(t)
	if !regexp.MustCompile(`^nats://127\.0\.0\.1:\d+$`).MatchString(n.URL()) {
		t.Fatalf("URL() = %q", n.URL())
	}
	p := Prefix(t)
	col := Collect(t, n.Conn(t), p+".>")
	pub := n.Conn(t)
	for i := range 3 {
		msg := nats.NewMsg(fmt.Sprintf("%s.event.%d", p, i))
		msg.Data = []byte(fmt.Sprint(i))
		msg.Header.Set("Nats-Msg-Id", fmt.Sprint("id", i))
		if err := pub.PublishMsg(msg); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	if err := pub.Publish("other.subject", nil); err != nil {
		t.Fatalf("publish: %v", err)
	}
	msgs := col.WaitFor(t, 3, waitTimeout)
	for i, m := range msgs {
		if want := fmt.Sprintf("%s.event.%d", p, i); m.Subject != want || string(m.Data) != fmt.Sprint(i) || m.Header.Get("Nats-Msg-Id") != fmt.Sprint("id", i) {
			t.Errorf("msg %d = %s %q %v, want %s %q id%d", i, m.Subject, m.Data, m.Header, want, fmt.Sprint(i), i)
		}
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	if col.Len() != 3 || len(col.Msgs()) != 3 {
		t.Fatalf("Len() = %d, want 3", col.Len())
	}

	msg := fatalOf(t, func(tb testing.TB) { col.WaitFor(tb, 4, 50*time.Millisecond) })
	if !strings.Contains(msg, "3 messages after 50ms, want 4") || !strings.Contains(msg, p+".event.2") {
		t.Fatalf("WaitFor timeout fatal = %q", msg)
	}
}

func TestNATSRestartReconnects(t *testing.T) {
	t.Parallel()
	n := StartNATS(t)
	url := n.URL()
	nc := n.Conn(t)
	p := Prefix(t)
	col := Collect(t, n.Conn(t), p+".>")

	n.Restart(t)
	if n.URL() != url {
		t.Fatalf("URL changed across Restart: %s -> %s", url, n.URL())
	}
	// Both connections reconnect on their own, and the collector's
	// subscription is replayed when its connection is back.
	Eventually(t, waitTimeout, func() bool { return nc.IsConnected() }, "publisher reconnected to %s", url)
	if err := nc.Publish(p+".after", []byte("x")); err != nil {
		t.Fatalf("publish after restart: %v", err)
	}
	// The collector may have reconnected after the publish; publish until
	// one arrives rather than relying on ordering between two connections.
	Eventually(t, waitTimeout, func() bool {
		_ = nc.Publish(p+".after", []byte("x"))
		return col.Len() > 0
	}, "collector received a message after restart")
	if got := col.Msgs()[0].Subject; got != p+".after" {
		t.Fatalf("subject = %q", got)
	}
}

func TestNATSJetStreamSurvivesRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := StartNATS(t, WithJetStream(""))
	js, err := jetstream.New(n.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	p := Prefix(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: p, Subjects: []string{p + ".>"}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, p+".a", []byte("x")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	n.Restart(t)
	Eventually(t, waitTimeout, func() bool {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		s, err := js.Stream(ctx, p)
		return err == nil && s.CachedInfo().State.Msgs == 1
	}, "stream %s with 1 message after restart", p)
}

func TestPrefix(t *testing.T) {
	t.Parallel()
	valid := regexp.MustCompile(`^[a-z0-9]+$`)
	seen := map[string]bool{}
	for range 100 {
		p := Prefix(t)
		if !valid.MatchString(p) {
			t.Fatalf("Prefix = %q, want letters and digits only", p)
		}
		if seen[p] {
			t.Fatalf("Prefix repeated %q", p)
		}
		seen[p] = true
	}
}

func TestEventually(t *testing.T) {
	t.Parallel()
	calls := 0
	Eventually(t, waitTimeout, func() bool { calls++; return calls == 3 }, "third call")
	if calls != 3 {
		t.Fatalf("cond called %d times, want 3", calls)
	}
	msg := fatalOf(t, func(tb testing.TB) {
		Eventually(tb, 30*time.Millisecond, func() bool { return false }, "user %d online", 7)
	})
	if msg != "not true after 30ms: user 7 online" {
		t.Fatalf("fatal = %q", msg)
	}
}

// fakeTB stands in for the test in calls that should fail it: it records
// Fatalf and ends its goroutine, like testing.T does, and passes everything
// else (Cleanup, TempDir, Name) to the real test.
type fakeTB struct {
	testing.TB
	mu    sync.Mutex
	fatal string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

// fatalOf runs fn on its own goroutine with a fakeTB and returns the message
// it failed with, failing t if it did not.
func fatalOf(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fatal == "" {
		t.Fatal("expected the call to fail the test")
	}
	return f.fatal
}
