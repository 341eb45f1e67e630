package seedbaseline_test

import (
	"context"
	"encoding/json"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/seedbaseline"
	"github.com/presenced/presenced/internal/testenv"
)

// The baseline must behave as the seed did, or the benchmark compares
// against the wrong thing: one online per new session, none on refresh,
// offline on DEL and on key expiry (once per replica), EXISTS and SCAN reads.
func TestSeedBehaviour(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t)
	p := testenv.Prefix(t)
	subjects := contract.Subjects{Prefix: p}
	rdb := r.Client(t)
	online := testenv.Collect(t, n.Conn(t), subjects.Online())
	offline := testenv.Collect(t, n.Conn(t), subjects.Offline())

	start := func() {
		opts, err := redis.ParseURL(r.URL())
		if err != nil {
			t.Fatal(err)
		}
		cmd, sub := redis.NewClient(opts), redis.NewClient(opts)
		t.Cleanup(func() { cmd.Close(); sub.Close() })
		w := seedbaseline.New(cmd, sub, n.Conn(t), seedbaseline.Options{KeyPrefix: p + ":", Subjects: subjects, TTL: time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := w.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := w.Stop(ctx); err != nil {
				t.Errorf("stop: %v", err)
			}
		})
	}
	start()
	start() // two replicas: each expiry is published twice

	nc := n.Conn(t)
	request := func(subject string, body any) contract.Reply {
		t.Helper()
		data, _ := json.Marshal(body)
		m, err := nc.Request(subject, data, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var rep contract.Reply
		if err := json.Unmarshal(m.Data, &rep); err != nil {
			t.Fatalf("reply %q: %v", m.Data, err)
		}
		return rep
	}
	if rep := request(subjects.Heartbeat(), map[string]any{"userIds": []string{"a", "b"}}); rep.Accepted != 2 {
		t.Fatalf("reply %+v", rep)
	}
	request(subjects.Heartbeat(), map[string]any{"userId": "a"}) // a refresh: no event
	request(subjects.Disconnect(), map[string]any{"userId": "b"})
	if ttl := rdb.TTL(context.Background(), p+":user:a").Val(); ttl <= 0 || ttl > time.Second {
		t.Fatalf("TTL of a = %v, want (0, 1s]", ttl)
	}

	q := seedbaseline.NewQueries(rdb, p+":")
	ctx := context.Background()
	if on, err := q.IsOnline(ctx, "a"); err != nil || !on {
		t.Fatalf("IsOnline(a) = %v, %v", on, err)
	}
	if got, err := q.OnlineAmong(ctx, []string{"b", "a", "c"}); err != nil || !slices.Equal(got, []string{"a"}) {
		t.Fatalf("OnlineAmong = %v, %v", got, err)
	}
	if got, err := q.AllOnline(ctx); err != nil || !slices.Equal(got, []string{"a"}) {
		t.Fatalf("AllOnline = %v, %v", got, err)
	}

	// a expires after 1s; Redis notices on its next active expiry cycle.
	msgs := append(online.WaitFor(t, 2, 5*time.Second), offline.WaitFor(t, 3, 10*time.Second)...)
	var got []string
	for _, m := range msgs {
		var ev contract.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.UserID+":"+string(ev.Status)+":"+string(ev.Reason))
	}
	sort.Strings(got)
	want := []string{"a:offline:expired", "a:offline:expired", "a:online:heartbeat", "b:offline:disconnect", "b:online:heartbeat"}
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}
