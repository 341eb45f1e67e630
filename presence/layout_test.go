package presence_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// readOutbox reads every event in the outbox through a fresh consumer and
// acknowledges them.
func readOutbox(t *testing.T, s *presence.Store) []presence.Event {
	t.Helper()
	ctx := context.Background()
	o := s.Outbox("test-reader")
	if err := o.Init(ctx); err != nil {
		t.Fatal(err)
	}
	var all []presence.Event
	for {
		evs, err := o.ReadNew(ctx, 100, -1)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return all
		}
		for _, e := range evs {
			if err := o.Ack(ctx, e.ID); err != nil {
				t.Fatal(err)
			}
		}
		all = append(all, evs...)
	}
}

// sweepUntilClosed sweeps until no session is open (within 10s): every
// session has expired and been claimed.
func sweepUntilClosed(t *testing.T, s *presence.Store) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() bool {
		if _, err := s.Sweep(context.Background(), 10000); err != nil {
			t.Fatal(err)
		}
		n, _ := s.Count(context.Background())
		return n == 0
	}, "sessions left open")
}

// Every transition of many users in large batches reaches the outbox once:
// 10k new sessions in one call (split into chunks), then all of them
// expiring and claimed by sweeps.
func TestEveryTransitionInOutbox(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, 300*time.Millisecond)
	ctx := context.Background()
	ids := make([]string, 10000)
	for i := range ids {
		ids[i] = fmt.Sprintf("u%05d", i)
	}
	vs, err := s.Heartbeat(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vs {
		if v == 0 {
			t.Fatalf("user %s: no new session", ids[i])
		}
	}
	if n, _ := s.Count(ctx); n != int64(len(ids)) {
		t.Fatalf("count %d", n)
	}
	claimed := 0
	testenv.Eventually(t, 10*time.Second, func() bool {
		r, err := s.Sweep(ctx, 1000)
		if err != nil {
			t.Fatal(err)
		}
		claimed += r.Claimed
		return claimed >= len(ids)
	}, "not every due user was claimed within 10s")
	if claimed != len(ids) {
		t.Fatalf("claimed %d of %d", claimed, len(ids))
	}
	per := map[string][]string{}
	for _, e := range readOutbox(t, s) {
		if err := e.Valid(); err != nil {
			t.Fatal(err)
		}
		per[e.UserID] = append(per[e.UserID], string(e.Status)+":"+string(e.Reason))
	}
	for _, id := range ids {
		if got := per[id]; len(got) != 2 || got[0] != "online:heartbeat" || got[1] != "offline:expired" {
			t.Fatalf("user %s: events %v", id, got)
		}
	}
	f, err := s.Footprint(ctx)
	if err != nil || f.Sessions != 0 || f.Count != 0 || f.IndexEntries != 0 || f.Buckets != 0 {
		t.Fatalf("left behind: %+v, %v", f, err)
	}
}

// Users coming and going at random (heartbeats, disconnects, silence) through
// the store alone: every user who heartbeated has sessions whose online and
// offline alternate, the last one offline once everyone stopped.
func TestRandomChurnAlternates(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, 400*time.Millisecond)
	ctx := context.Background()
	const users = 2000
	ids := make([]string, users)
	present := make([]bool, users)
	sent := make([]bool, users)
	for i := range ids {
		ids[i] = fmt.Sprintf("c%05d", i)
		present[i] = true
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 40; round++ {
		var batch, gone []string
		for i := range ids {
			switch {
			case present[i] && rng.IntN(100) < 3:
				present[i] = false
				if rng.IntN(2) == 0 {
					gone = append(gone, ids[i])
				}
			case !present[i] && rng.IntN(20) == 0:
				present[i] = true
			}
			if present[i] {
				batch = append(batch, ids[i])
				sent[i] = true
			}
		}
		if _, err := s.Heartbeat(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Disconnect(ctx, gone); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sweep(ctx, 10000); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // one heartbeat interval of the simulated gateway
	}
	sweepUntilClosed(t, s)
	per := map[string][]presence.Event{}
	for _, e := range readOutbox(t, s) {
		per[e.UserID] = append(per[e.UserID], e)
	}
	for i, id := range ids {
		evs := per[id]
		if !sent[i] {
			if len(evs) != 0 {
				t.Fatalf("user %s never heartbeated but has events", id)
			}
			continue
		}
		if len(evs) == 0 || len(evs)%2 != 0 {
			t.Fatalf("user %s: %d events %+v", id, len(evs), evs)
		}
		for j, e := range evs {
			want := "online"
			if j%2 == 1 {
				want = "offline"
			}
			if string(e.Status) != want || (j > 0 && e.Version <= evs[j-1].Version) {
				t.Fatalf("user %s: event %d %+v out of order: %+v", id, j, e, evs)
			}
		}
	}
}

// List pages through compact shards (HKEYS) and oversized ones (HSCAN
// steps) alike: every open session exactly once, pages near the limit.
func TestListCompactAndOversizedShards(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	for _, shards := range []int{3, 16384} {
		t.Run(fmt.Sprintf("shards=%d", shards), func(t *testing.T) {
			s := presence.NewStore(r.Client(t), presence.Options{Prefix: testenv.Prefix(t) + ":", TTL: time.Minute, Shards: shards})
			ctx := context.Background()
			if p, err := s.List(ctx, "", 100); err != nil || len(p.UserIDs) != 0 || p.Cursor != "" {
				t.Fatalf("empty data set: %+v, %v", p, err)
			}
			ids := make([]string, 1000)
			for i := range ids {
				ids[i] = fmt.Sprintf("user-%04d", i)
			}
			if _, err := s.Heartbeat(ctx, ids); err != nil {
				t.Fatal(err)
			}
			seen := map[string]int{}
			cursor, pages := "", 0
			for {
				p, err := s.List(ctx, cursor, 100)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				for _, id := range p.UserIDs {
					seen[id]++
				}
				if p.Cursor == "" {
					break
				}
				if len(p.UserIDs) < 100 {
					t.Fatalf("page %d holds %d ids, under the limit, before the end", pages, len(p.UserIDs))
				}
				cursor = p.Cursor
			}
			for _, id := range ids {
				if seen[id] != 1 {
					t.Fatalf("%s listed %d times in %d pages", id, seen[id], pages)
				}
			}
			if len(seen) != len(ids) {
				t.Fatalf("%d ids listed, want %d", len(seen), len(ids))
			}
			if _, err := s.List(ctx, "x", 10); !errors.Is(err, presence.ErrInvalidCursor) {
				t.Fatalf("bad cursor: %v", err)
			}
		})
	}
}

// New sessions filed by one call go into the deadline index in runs of 8
// entries per bucket (one HSET each), over the slot's 64 buckets (default
// shard count), and every bucket stays a compact listpack: 100 users in one
// call make 13 buckets; each of 3 calls of 1000 more wraps around all 64
// buckets of its slot (the calls may land in different slots).
func TestIndexRuns(t *testing.T) {
	t.Parallel()
	s, r := newStore(t, time.Minute)
	rdb := r.Client(t)
	ctx := context.Background()
	// One call of 100 ids: one slot (the deadline is NOW_MS + ttl for all).
	if _, err := s.Heartbeat(ctx, ids("a", 0, 100)); err != nil {
		t.Fatal(err)
	}
	f, err := s.Footprint(ctx)
	if err != nil || f.IndexEntries != 100 || f.Buckets != 13 {
		t.Fatalf("after 100 new users in one call: %+v, %v; want 100 entries in 13 buckets", f, err)
	}
	if _, err := s.Heartbeat(ctx, ids("b", 0, 3000)); err != nil {
		t.Fatal(err)
	}
	f, err = s.Footprint(ctx)
	if err != nil || f.IndexEntries != 3100 {
		t.Fatalf("after 3100 new users: %+v, %v", f, err)
	}
	buckets, err := rdb.ZRange(ctx, s.Keys().Dir(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Each script call files its users in one slot (its NOW_MS + ttl); the
	// four calls may fall in one to four slots (more under load).
	perSlot := map[string]int{}     // slot -> buckets
	entriesOf := map[string]int64{} // slot -> entries
	var total int64
	for _, b := range buckets {
		enc, err := rdb.ObjectEncoding(ctx, b).Result()
		if err != nil || enc != "listpack" {
			t.Errorf("bucket %s: encoding %q, %v; want listpack", b, enc, err)
		}
		n := rdb.HLen(ctx, b).Val()
		if n > 128 {
			t.Errorf("bucket %s: %d entries", b, n)
		}
		parts := strings.Split(strings.TrimPrefix(b, s.Keys().Prefix()+"d:"), ":")
		if len(parts) != 2 {
			t.Fatalf("bucket key %q", b)
		}
		perSlot[parts[0]]++
		entriesOf[parts[0]] += n
		total += n
	}
	if total != 3100 {
		t.Errorf("%d entries in the buckets, want 3100", total)
	}
	for slot, nb := range perSlot {
		// A call of 1000 writes 125 runs of 8 round the slot's 64 buckets.
		if nb > 64 || (entriesOf[slot] >= 1000 && nb != 64) {
			t.Errorf("slot %s: %d entries in %d buckets; want at most 64 buckets, all 64 once a call of 1000 filed there", slot, entriesOf[slot], nb)
		}
	}
}

// An index entry belongs to one session and dies with it: users who
// reconnect many times (disconnect, heartbeat) leave an entry per ended
// session (300 users, 21 sessions each, in 21 slots), and once those entries' slots have come due the index holds
// exactly one entry per open session, carrying that session's version.
func TestIndexHoldsOneEntryPerSession(t *testing.T) {
	t.Parallel()
	const ttl = 500 * time.Millisecond
	s, r := newStore(t, ttl)
	rdb := r.Client(t)
	ctx := context.Background()
	users := ids("re", 0, 300)
	for range 20 {
		if _, err := s.Heartbeat(ctx, users); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Disconnect(ctx, users); err != nil {
			t.Fatal(err)
		}
		// The next session's deadline falls in another 100 ms slot (entries
		// of one slot and bucket would share a field).
		time.Sleep(110 * time.Millisecond)
	}
	if _, err := s.Heartbeat(ctx, users); err != nil {
		t.Fatal(err)
	}
	// Every entry filed so far is in a slot that ends by then (Redis clock).
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	due := now.Add(ttl + 100*time.Millisecond).UnixMilli()
	// The users stay connected (heartbeats) while the sweep reads their slots.
	testenv.Eventually(t, 10*time.Second, func() bool {
		if _, err := s.Heartbeat(ctx, users); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sweep(ctx, 100000); err != nil {
			t.Fatal(err)
		}
		n, err := rdb.ZCount(ctx, s.Keys().Dir(), "-inf", strconv.FormatInt(due, 10)).Result()
		return err == nil && n == 0
	}, "the slots of the reconnects did not come due")
	// Count the entries in every bucket under the prefix, listed or not.
	var buckets []string
	iter := rdb.Scan(ctx, 0, s.Keys().Prefix()+"d:*", 1000).Iterator()
	for iter.Next(ctx) {
		buckets = append(buckets, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	entries := map[string][]string{}
	total := 0
	for _, b := range buckets {
		kv, err := rdb.HGetAll(ctx, b).Result()
		if err != nil {
			t.Fatal(err)
		}
		for id, v := range kv {
			entries[id] = append(entries[id], v)
			total++
		}
	}
	f, err := s.Footprint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if f.Sessions != int64(len(users)) || total != len(users) || f.IndexEntries != int64(len(users)) {
		t.Fatalf("%d index entries in %d buckets (directory: %d entries), %d open sessions; want one entry per session",
			total, len(buckets), f.IndexEntries, f.Sessions)
	}
	for _, id := range users {
		st, err := s.Status(ctx, id)
		if err != nil || !st.Online {
			t.Fatalf("status %s: %+v, %v", id, st, err)
		}
		want := strconv.FormatInt(st.Version, 10)
		if e := entries[id]; len(e) != 1 || len(e[0]) != len(want)+2 || e[0][:len(want)] != want {
			t.Fatalf("user %s: index entries %v, want one carrying the session's version %s", id, e, want)
		}
	}
}
