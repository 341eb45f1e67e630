package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// TestChaosThreeReplicasRandomKills: three presenced processes, 10k users
// coming and going under heartbeat load, replicas SIGKILLed and restarted at
// random for 60 s, publishing to a JetStream stream (PRESENCE_STREAM: a
// PubAck per event before its outbox entry is acknowledged, duplicates
// dropped by Nats-Msg-Id). The stream must then hold, for every user,
// sessions whose online and offline each appear exactly once, alternating
// by version, the last one offline once all users stopped.
func TestChaosThreeReplicasRandomKills(t *testing.T) {
	if testing.Short() {
		t.Log("-short: running a 15 s chaos phase instead of 60 s")
	}
	chaosFor := 60 * time.Second
	if testing.Short() {
		chaosFor = 15 * time.Second
	}
	const (
		users = 10000
		ttl   = 3 * time.Second
		beat  = 600 * time.Millisecond
	)
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t, testenv.WithJetStream(""))
	nc := n.Conn(t)
	p := testenv.Prefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The replicas verify this stream (event subjects, a duplicate window of
	// at least twice the claim time) rather than create one.
	streamName := "EVENTS_" + p
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: streamName, Subjects: []string{p + ".online", p + ".offline", p + ".reset"},
		Duplicates: 5 * time.Minute, Storage: jetstream.MemoryStorage,
	})
	if err != nil {
		t.Fatal(err)
	}

	// Replicas: separate processes, killed for real.
	type proc struct {
		cmd  *exec.Cmd
		done chan struct{}
	}
	var mu sync.Mutex
	procs := make([]*proc, 3)
	logs := &testenv.Buffer{} // every replica's warnings, for a failure message
	start := func(i int) {
		cmd := exec.Command(binary(t), "--http-addr", "off", "--subject-prefix", p, "--key-prefix", p+":",
			"--ttl", ttl.String(), "--reconcile-interval", "100ms", "--outbox-claim-after", "2s", "--log-level", "warn")
		cmd.Env = append(os.Environ(), "NATS_URL="+n.URL(), "REDIS_URL="+r.URL(), "PRESENCE_STREAM="+streamName)
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Errorf("start replica %d: %v", i, err)
			return
		}
		pr := &proc{cmd: cmd, done: make(chan struct{})}
		go func() { _ = cmd.Wait(); close(pr.done) }()
		mu.Lock()
		procs[i] = pr
		mu.Unlock()
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, pr := range procs {
			if pr != nil {
				_ = pr.cmd.Process.Kill()
				<-pr.done
			}
		}
	})
	for i := range procs {
		start(i)
	}
	// The first heartbeats must find the replicas subscribed: a user whose
	// only heartbeat went nowhere would have no events at all.
	testenv.Eventually(t, 30*time.Second, func() bool {
		sz, err := n.Server().Subsz(&server.SubszOptions{Subscriptions: true, Test: p + ".heartbeat"})
		return err == nil && sz.Total == len(procs)
	}, "replicas did not subscribe")

	// Load: every user heartbeats every beat while "present"; some leave
	// (half by disconnect, half by silence) and come back.
	ids := make([]string, users)
	present := make([]bool, users)
	sent := make([]bool, users) // heartbeated at least once
	for i := range ids {
		ids[i] = fmt.Sprintf("c%05d", i)
		present[i] = true
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(beat)
		defer tick.Stop()
		for {
			var batch, gone []string
			for i := range ids {
				switch {
				case present[i] && rand.IntN(100) == 0: // ~1% leave per beat
					present[i] = false
					if rand.IntN(2) == 0 {
						gone = append(gone, ids[i])
					}
				case !present[i] && rand.IntN(50) == 0: // and come back later
					present[i] = true
				}
				if present[i] {
					batch = append(batch, ids[i])
					sent[i] = true
				}
			}
			publishBatches(nc, p+".heartbeat", batch)
			publishBatches(nc, p+".disconnect", gone)
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()

	// Chaos: kill a random replica every 2-5 s, restart it 0.5-2 s later.
	chaosEnd := time.Now().Add(chaosFor)
	kills := 0
	for time.Now().Before(chaosEnd) {
		time.Sleep(time.Duration(2000+rand.IntN(3000)) * time.Millisecond) // chaos pacing, not a wait for a condition
		i := rand.IntN(3)
		mu.Lock()
		pr := procs[i]
		mu.Unlock()
		_ = pr.cmd.Process.Kill()
		<-pr.done
		kills++
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
		start(i)
	}
	stopLoad()
	wg.Wait()
	t.Logf("chaos: %d kills in %v", kills, chaosFor)

	// Everyone stops heartbeating: every session must end with one offline.
	msgs := func() uint64 {
		info, err := stream.Info(ctx)
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}
	// Settled: no session left in the index and nothing left in the outbox.
	rdb := r.Client(t)
	testenv.Eventually(t, 90*time.Second, func() bool {
		pe := rdb.XPending(ctx, p+":outbox", "presenced").Val()
		groups := rdb.XInfoGroups(ctx, p+":outbox").Val()
		info := rdb.XInfoStream(ctx, p+":outbox").Val()
		n, _ := rdb.Get(ctx, p+":count").Int64()
		return n == 0 && pe != nil && pe.Count == 0 &&
			len(groups) == 1 && info != nil && groups[0].LastDeliveredID == info.LastGeneratedID
	}, "sessions or outbox entries left: count %s", rdb.Get(ctx, p+":count").Val())
	// Every acknowledged entry's events are in the stream (PubAck before
	// ack), so the count is final.
	byUser := readStream(t, ctx, stream, msgs())
	for i, id := range ids {
		evs := byUser[id]
		switch {
		case !sent[i] && len(evs) != 0:
			t.Fatalf("user %s never heartbeated but has events %+v", id, evs)
		case sent[i] && (len(evs) == 0 || evs[len(evs)-1].Status != "offline"):
			st, err := presence.NewStore(rdb, presence.Options{Prefix: p + ":"}).Status(ctx, id)
			t.Fatalf("user %s did not end offline: %+v\nin Redis now: %+v (%v)\nreplica logs:\n%s", id, evs, st, err, logs.String())
		}
	}
	sessions := 0
	for _, id := range ids {
		evs := byUser[id]
		for i, ev := range evs {
			want := "online"
			if i%2 == 1 {
				want = "offline"
			}
			if ev.Status != want || (i > 0 && ev.Version <= evs[i-1].Version) {
				t.Fatalf("user %s: event %d %+v breaks online/offline alternation by version: %+v", id, i, ev, evs)
			}
		}
		sessions += len(evs) / 2
	}
	if resets := len(byUser[""]); resets != 1 {
		t.Fatalf("%d resets in the stream, want the first start's one", resets)
	}
	t.Logf("%d sessions, %d events after JetStream dedup", sessions, msgs())
}

type event struct {
	UserID  string `json:"userId"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Version int64  `json:"version"`
}

// readStream returns every event in the stream grouped by user, ordered by version.
func readStream(t *testing.T, ctx context.Context, stream jetstream.Stream, total uint64) map[string][]event {
	t.Helper()
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]event{}
	for got := uint64(0); got < total; {
		batch, err := cons.Fetch(int(min(total-got, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			var ev event
			if err := json.Unmarshal(m.Data(), &ev); err != nil {
				t.Fatalf("event %q: %v", m.Data(), err)
			}
			want := fmt.Sprintf("%s:%d", ev.UserID, ev.Version)
			if ev.Status == "reset" {
				want = fmt.Sprintf("reset:%d", ev.Version)
			}
			if m.Headers().Get(nats.MsgIdHdr) != want {
				t.Fatalf("Nats-Msg-Id %q, want %q", m.Headers().Get(nats.MsgIdHdr), want)
			}
			out[ev.UserID] = append(out[ev.UserID], ev)
			n++
		}
		if n == 0 {
			t.Fatalf("read %d of %d stream messages: %v", got, total, batch.Error())
		}
		got += uint64(n)
	}
	for _, evs := range out {
		sort.Slice(evs, func(i, j int) bool { return evs[i].Version < evs[j].Version })
	}
	return out
}

// publishBatches sends ids in messages of 500.
func publishBatches(nc *nats.Conn, subject string, ids []string) {
	for len(ids) > 0 {
		k := min(len(ids), 500)
		_ = nc.Publish(subject, []byte(`{"userIds":["`+strings.Join(ids[:k], `","`)+`"]}`))
		ids = ids[k:]
	}
}
