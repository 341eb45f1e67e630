package presence

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testenv"
)

// relayAll reads and acknowledges every outbox entry, as the relay does
// once it published them, and checks that they held want events.
func relayAll(t *testing.T, o *Outbox, want int) {
	t.Helper()
	evs, err := o.ReadNew(context.Background(), 100, -1)
	if err != nil || len(evs) != want {
		t.Fatalf("relay read %d events, %v; want %d", len(evs), err, want)
	}
	for _, e := range evs {
		if err := o.Ack(context.Background(), e.ID); err != nil {
			t.Fatal(err)
		}
	}
}

// A view that read up to an entry the trim has since passed must rebuild:
// the entries between were never applied. A view that is current is not
// disturbed by trims of what it already read.
func TestViewFollowDetectsTrimmedGap(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	ctx := context.Background()
	// No retention: the trim drops everything the relay group acknowledged.
	s := NewStore(r.Client(t), Options{Prefix: testenv.Prefix(t) + ":", TTL: time.Minute})
	o := s.Outbox("relay")
	if err := o.Init(ctx); err != nil {
		t.Fatal(err)
	}
	v := NewView(s, nil)
	stale, err := v.rebuild(ctx) // the position before any event
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if _, err := s.Heartbeat(ctx, []string{id}); err != nil {
			t.Fatal(err)
		}
	}
	// The relay publishes and acknowledges all three entries; the trim
	// drops the first two (the last delivered one stays).
	relayAll(t, o, 4) // the data set's reset, then a, b, c
	if n, err := o.Trim(ctx); err != nil || n != 2 {
		t.Fatalf("trim = %d, %v; want 2", n, err)
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := v.follow(fctx, stale); !errors.Is(err, errResync) {
		t.Fatalf("follow from before the trimmed entries: %v, want a resync", err)
	}
	// Rebuilt after the trim: current, so following goes on until stopped.
	last, err := v.rebuild(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Len(); got != 3 {
		t.Fatalf("rebuilt view holds %d users, want 3", got)
	}
	fctx, cancel = context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	if err := v.follow(fctx, last); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("follow of a current view ended with %v, want the context's deadline", err)
	}
}

// Outbox retention keeps published entries for the views: the trim leaves
// entries younger than the retention, then drops them once they are older.
func TestOutboxRetention(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	ctx := context.Background()
	s := NewStore(r.Client(t), Options{Prefix: testenv.Prefix(t) + ":", TTL: time.Minute, OutboxRetention: time.Second})
	o := s.Outbox("relay")
	if err := o.Init(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if _, err := s.Heartbeat(ctx, []string{id}); err != nil {
			t.Fatal(err)
		}
	}
	relayAll(t, o, 4)
	if n, err := o.Trim(ctx); err != nil || n != 0 {
		t.Fatalf("trim within the retention = %d, %v; want 0", n, err)
	}
	time.Sleep(1100 * time.Millisecond)
	if n, err := o.Trim(ctx); err != nil || n != 2 {
		t.Fatalf("trim after the retention = %d, %v; want 2 (the last delivered entry stays)", n, err)
	}
}

// The view exposes only the store's reads the query service needs, none of
// its writes (Heartbeat, Sweep, ...): it holds the store behind viewStore.
func TestViewExposesOnlyReads(t *testing.T) {
	reads := map[string]bool{"Status": true, "List": true, "Count": true, "GetOnlineUsers": true, "Gateway": true}
	view := reflect.TypeOf((*View)(nil))
	store := reflect.TypeOf((*Store)(nil))
	for i := 0; i < store.NumMethod(); i++ {
		name := store.Method(i).Name
		if _, ok := view.MethodByName(name); ok != reads[name] {
			t.Errorf("View has Store's method %s: %v, want %v", name, ok, reads[name])
		}
	}
}
