package presence_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// runView starts v.Run until the test ends and waits for its first build.
func runView(t *testing.T, v *presence.View) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		v.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-v.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("view not built within 10s")
	}
}

// sessions lists every open session through the store (Redis).
func sessions(t *testing.T, s *presence.Store) []string {
	t.Helper()
	var all []string
	for cursor := ""; ; {
		p, err := s.List(context.Background(), cursor, 10000)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, p.UserIDs...)
		if cursor = p.Cursor; cursor == "" {
			sort.Strings(all)
			return all
		}
	}
}

// The view answers like Redis right after each write (it waits for the
// writes committed before the query), for users present before it was built
// and for those who come, go and expire after.
func TestViewFollowsTransitions(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, 300*time.Millisecond)
	ctx := context.Background()
	before := ids("old", 0, 500)
	if _, err := s.Heartbeat(ctx, before); err != nil {
		t.Fatal(err)
	}
	v := presence.NewView(s, nil)
	// Every answer below must come from the view, even on a loaded machine.
	v.CatchUp = 10 * time.Second
	runView(t, v)
	if v.Len() != 500 {
		t.Fatalf("view built with %d users, want 500", v.Len())
	}
	ask := append(ids("old", 0, 500), ids("new", 0, 500)...)
	check := func(step string, want []string) {
		t.Helper()
		// Repeated ids are answered once, in the order of first appearance.
		got, err := v.GetOnlineUsers(ctx, append(slices.Clone(ask), ask[:700]...))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: view says %d online (%.5v...), want %d (%.5v...)", step, len(got), got, len(want), want)
		}
	}
	check("built", before)
	// New users, queried at once: the answer includes them.
	if _, err := s.Heartbeat(ctx, append(before, ids("new", 0, 500)...)); err != nil {
		t.Fatal(err)
	}
	check("after new users", ask)
	// Disconnects.
	if _, err := s.Disconnect(ctx, ids("old", 0, 250)); err != nil {
		t.Fatal(err)
	}
	check("after disconnects", ask[250:])
	// Expiry: nobody heartbeats; the sweep claims everyone.
	sweepUntilClosed(t, s)
	check("after expiry", []string{})
	if v.Len() != 0 {
		t.Fatalf("view holds %d users after everyone left", v.Len())
	}
	if st := v.Stats(); st.FromView != 4 || st.FromRedis != 0 || st.Builds != 1 {
		t.Fatalf("stats %+v: want every query answered by the view, built once", st)
	}
}

// Until it is built, and with no view running, answers come from Redis.
func TestViewNotBuiltAsksRedis(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, time.Minute)
	ctx := context.Background()
	if _, err := s.Heartbeat(ctx, []string{"a", "c"}); err != nil {
		t.Fatal(err)
	}
	v := presence.NewView(s, nil)
	got, err := v.GetOnlineUsers(ctx, []string{"a", "b", "c"})
	if err != nil || !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("GetOnlineUsers = %v, %v; want [a c] from Redis", got, err)
	}
	if v.Len() != 0 || v.Stats().FromRedis != 1 {
		t.Fatalf("an unbuilt view holds %d users, stats %+v", v.Len(), v.Stats())
	}
}

// A data set replaced under the view (FLUSHALL, a failover to an empty
// Redis): the view drops what it held and follows the new one.
func TestViewDataSetReplaced(t *testing.T) {
	t.Parallel()
	s, r := newStore(t, time.Minute)
	ctx := context.Background()
	if _, err := s.Heartbeat(ctx, ids("a", 0, 100)); err != nil {
		t.Fatal(err)
	}
	v := presence.NewView(s, nil)
	runView(t, v)
	if err := r.Client(t).FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Heartbeat(ctx, ids("b", 0, 10)); err != nil {
		t.Fatal(err)
	}
	want := ids("b", 0, 10)
	var got []string
	var held struct{ Users int }
	testenv.Eventually(t, 10*time.Second, func() bool {
		var err error
		got, err = v.GetOnlineUsers(ctx, append(ids("a", 0, 100), want...))
		held.Users = v.Len()
		return err == nil && slices.Equal(got, want) && held.Users == 10
	}, "view after the data set was replaced: %v online, held %+v; want %v", &got, &held, want)
}

// Concurrent writers of every kind (new users, refreshes, disconnects,
// sweeps) and readers: every read sees at least the writes finished before
// it started, and the view ends equal to the sessions in Redis.
func TestViewUnderConcurrentChurn(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, 200*time.Millisecond)
	ctx := context.Background()
	v := presence.NewView(s, nil)
	runView(t, v)
	const writers = 4
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			mine := ids(fmt.Sprintf("w%d-", w), 0, 300)
			for round := 0; round < 60; round++ {
				var on, off []string
				for _, id := range mine {
					switch rng.IntN(10) {
					case 0:
						off = append(off, id)
					case 1, 2:
					default:
						on = append(on, id)
					}
				}
				if _, err := s.Heartbeat(ctx, on); err != nil {
					errs <- err
					return
				}
				// Read-your-writes: everyone just heartbeated is online.
				got, err := v.GetOnlineUsers(ctx, on)
				if err != nil {
					errs <- err
					return
				}
				if len(got) != len(on) {
					errs <- fmt.Errorf("writer %d round %d: %d of %d just heartbeated users online in the view", w, round, len(got), len(on))
					return
				}
				if _, err := s.Disconnect(ctx, off); err != nil {
					errs <- err
					return
				}
				got, err = v.GetOnlineUsers(ctx, off)
				if err != nil {
					errs <- err
					return
				}
				if len(got) != 0 {
					errs <- fmt.Errorf("writer %d round %d: disconnected users %v online in the view", w, round, got)
					return
				}
				if _, err := s.Sweep(ctx, 10000); err != nil {
					errs <- err
					return
				}
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Converge: some sessions are still open; compare with Redis as they
	// expire.
	all := make([]string, 0, writers*300)
	for w := range writers {
		all = append(all, ids(fmt.Sprintf("w%d-", w), 0, 300)...)
	}
	sort.Strings(all)
	// Nothing writes now, so the view's answer must equal the open
	// sessions (it is retried in case a slow catch-up made it ask Redis,
	// whose keys may have lapsed before the sweep).
	want := sessions(t, s)
	var got []string
	testenv.Eventually(t, 10*time.Second, func() bool {
		var err error
		if got, err = v.GetOnlineUsers(ctx, all); err != nil {
			t.Fatal(err)
		}
		sort.Strings(got)
		return slices.Equal(got, want)
	}, "view answers %v, Redis has %d open sessions", &got, len(want))
	var held struct{ Users int }
	testenv.Eventually(t, 10*time.Second, func() bool {
		if _, err := s.Sweep(ctx, 10000); err != nil {
			t.Fatal(err)
		}
		held.Users = v.Len()
		return held.Users == 0 && len(sessions(t, s)) == 0
	}, "view and sessions not empty after everyone expired: view %+v", &held)
}

// A view that cannot follow (here the outbox floor is always ahead of it,
// as when it keeps falling behind the retention) rebuilds with backoff, not
// in a loop that would add a full read of the sessions every few
// milliseconds to a Redis that is already too busy; queries are answered
// meanwhile.
func TestViewRebuildsBackOff(t *testing.T) {
	t.Parallel()
	s, r := newStore(t, time.Minute)
	ctx := context.Background()
	if _, err := s.Heartbeat(ctx, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Client(t).Set(ctx, s.Keys().OutboxFloor(), "99999999999999-0", 0).Err(); err != nil {
		t.Fatal(err)
	}
	v := presence.NewView(s, nil)
	runView(t, v)
	// New sessions keep coming, so every read returns at once and finds the
	// floor ahead.
	for i := 0; i < 300; i++ {
		if _, err := s.Heartbeat(ctx, []string{fmt.Sprintf("n%d", i)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Backoff from 0.1 s doubling (±50%): about 5 builds in 3 s, where a
	// loop would make one per read.
	if b := v.Stats().Builds; b < 2 || b > 12 {
		t.Fatalf("%d builds in 3s; want a few (backoff), more than one", b)
	}
	got, err := v.GetOnlineUsers(ctx, []string{"a", "b", "n299"})
	if err != nil || !slices.Equal(got, []string{"a", "n299"}) {
		t.Fatalf("GetOnlineUsers = %v, %v; want [a n299]", got, err)
	}
}

// Redis restarted from an older RDB snapshot keeps the data set but loses
// the writes after it: the view, which applied them, notices (the version
// clock is below what it applied) and reads the sessions again; the reset
// that announces the loss and the onlines that re-announce the surviving
// sessions (already open in the view) leave it equal to Redis.
func TestViewAfterPartialLoss(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	s := presence.NewStore(r.Client(t), presence.Options{Prefix: testenv.Prefix(t) + ":", TTL: time.Minute, OutboxRetention: 30 * time.Second})
	ctx := context.Background()
	rdb := r.Client(t)
	kept, lost := ids("kept", 0, 300), ids("lost", 0, 300)
	if _, err := s.Heartbeat(ctx, kept); err != nil {
		t.Fatal(err)
	}
	v := presence.NewView(s, nil)
	v.CatchUp = 10 * time.Second
	runView(t, v)
	if err := rdb.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Heartbeat(ctx, lost); err != nil {
		t.Fatal(err)
	}
	// What a relay published: every entry so far.
	evs := readOutbox(t, s)
	var published []presence.Published
	var top int64
	for _, e := range evs {
		if n := len(published); n == 0 || published[n-1].Entry != e.ID {
			published = append(published, presence.Published{Entry: e.ID})
		}
		published[len(published)-1].Version = e.Version
		top = max(top, e.Version)
	}
	all := append(slices.Clone(kept), lost...)
	if got, err := v.GetOnlineUsers(ctx, all); err != nil || len(got) != len(all) {
		t.Fatalf("before the restart: %d online, %v", len(got), err)
	}
	r.Restart(t) // reloads the snapshot: lost's sessions are gone
	var held struct{ Users, Builds int64 }
	testenv.Eventually(t, 10*time.Second, func() bool {
		held.Users, held.Builds = int64(v.Len()), v.Stats().Builds
		return held.Users == int64(len(kept)) && held.Builds >= 2
	}, "view after the restart holds %+v; want the %d sessions of the snapshot, rebuilt", &held, len(kept))
	// The loss announced: a reset above everything published, a new
	// epoch (the view reads the sessions again), and each surviving
	// session re-announced; the view ends equal to Redis.
	rv, err := s.ResetAfterLoss(ctx, published, top)
	if err != nil || rv <= top {
		t.Fatalf("ResetAfterLoss = %d, %v; want a reset above %d", rv, err, top)
	}
	if again, err := s.ResetAfterLoss(ctx, published, top); err != nil || again != 0 {
		t.Fatalf("second ResetAfterLoss = %d, %v; want 0 (announced)", again, err)
	}
	// The walk waits until the reset is published (read and acknowledged).
	if res, err := s.Reannounce(ctx); err != nil || !res.Waiting || res.Announced != 0 {
		t.Fatalf("Reannounce before the reset was published = %+v, %v; want it waiting", res, err)
	}
	if got := readOutbox(t, s); len(got) == 0 || got[len(got)-1].Status != "reset" || got[len(got)-1].Version != rv {
		t.Fatalf("outbox after the reset: %+v", got)
	}
	announced := 0
	for {
		res, err := s.Reannounce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		announced += res.Announced
		if res.Waiting {
			t.Fatalf("Reannounce waiting after the reset was published: %+v", res)
		}
		if !res.More {
			break
		}
	}
	if announced != len(kept) {
		t.Fatalf("re-announced %d sessions, want %d", announced, len(kept))
	}
	var got []string
	testenv.Eventually(t, 10*time.Second, func() bool {
		var err error
		got, err = v.GetOnlineUsers(ctx, all)
		return err == nil && slices.Equal(got, kept) && v.Len() == len(kept)
	}, "view after the reset and the re-announcements: %d online, holds %d; want %d", len(got), v.Len(), len(kept))
	for _, id := range kept[:5] {
		st, err := s.Status(ctx, id)
		if err != nil || !st.Online || st.Version <= rv {
			t.Fatalf("status of %s after re-announcement: %+v, %v; want a version above the reset %d", id, st, err, rv)
		}
	}
	// The re-announced sessions keep their place in the deadline index.
	f, err := s.Footprint(ctx)
	if err != nil || f.Sessions != int64(len(kept)) || f.Count != int64(len(kept)) {
		t.Fatalf("footprint %+v, %v", f, err)
	}
}
