package presence_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

func newStore(t *testing.T, ttl time.Duration) (*presence.Store, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	s := presence.NewStore(r.Client(t), presence.Options{Prefix: testenv.Prefix(t) + ":", TTL: ttl})
	if err := s.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, r
}

// The seed's PresenceRepository operations, against a real Redis.
func TestSeedOperations(t *testing.T) {
	t.Parallel()
	s, r := newStore(t, time.Minute)
	ctx := context.Background()
	rdb := r.Client(t)

	started, err := s.SetOnline(ctx, "u-1")
	if err != nil || !started {
		t.Fatalf("SetOnline = %v, %v; want a new session", started, err)
	}
	if started, err := s.SetOnline(ctx, "u-1"); err != nil || started {
		t.Fatalf("second SetOnline = %v, %v; want a refresh", started, err)
	}
	if err := s.RefreshOnline(ctx, "u-2"); err != nil {
		t.Fatal(err)
	}
	// A refresh of an open session queues no event (the outbox below) and
	// keeps the key's TTL.
	if err := s.RefreshOnline(ctx, "u-1"); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(ctx, s.Keys().User("u-1")).Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("PTTL after RefreshOnline = %v, want within the TTL", ttl)
	}
	// The seed's key format, exactly, and what its EXISTS check sees.
	if v := rdb.Get(ctx, s.Keys().User("u-1")).Val(); v != "1" {
		t.Fatalf("key value %q", v)
	}
	for id, want := range map[string]bool{"u-1": true, "u-2": true, "u-3": false} {
		if got, err := s.IsOnline(ctx, id); err != nil || got != want {
			t.Fatalf("IsOnline(%s) = %v, %v", id, got, err)
		}
	}
	online, err := s.GetOnlineUsers(ctx, []string{"u-3", "u-2", "u-1"})
	if err != nil || !slices.Equal(online, []string{"u-2", "u-1"}) {
		t.Fatalf("GetOnlineUsers = %v, %v", online, err)
	}
	// Repeats, more than the small-list path handles: each online id once,
	// first appearance first; the caller's slice is left as it was.
	ask := []string{"u-1"}
	for i := range 20 {
		ask = append(ask, fmt.Sprintf("u-%d", 3-i%3))
	}
	given := slices.Clone(ask)
	online, err = s.GetOnlineUsers(ctx, ask)
	if err != nil || !slices.Equal(online, []string{"u-1", "u-2"}) || !slices.Equal(ask, given) {
		t.Fatalf("GetOnlineUsers(%v) = %v, %v (ids after: %v)", given, online, err, ask)
	}
	all, err := s.GetAllOnlineUsers(ctx)
	slices.Sort(all)
	if err != nil || !slices.Equal(all, []string{"u-1", "u-2"}) {
		t.Fatalf("GetAllOnlineUsers = %v, %v", all, err)
	}
	if n, err := s.Count(ctx); err != nil || n != 2 {
		t.Fatalf("Count = %d, %v", n, err)
	}
	st, err := s.Status(ctx, "u-1")
	if err != nil || !st.Online || st.Version <= 0 || st.Since.IsZero() || !st.ExpiresAt.After(st.Since) {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	if was, err := s.DeleteOnline(ctx, "u-1"); err != nil || !was {
		t.Fatalf("DeleteOnline = %v, %v", was, err)
	}
	if was, err := s.DeleteOnline(ctx, "u-1"); err != nil || was {
		t.Fatalf("second DeleteOnline = %v, %v; want false", was, err)
	}
	if st, err := s.Status(ctx, "u-1"); err != nil || st.Online || st.Version != 0 {
		t.Fatalf("Status after delete = %+v, %v", st, err)
	}
	// Every transition is in the outbox, in order, with increasing versions.
	ob := s.Outbox("t")
	if err := ob.Init(ctx); err != nil {
		t.Fatal(err)
	}
	evs, err := ob.ReadNew(ctx, 100, -1)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var last int64
	for _, e := range evs {
		got = append(got, string(e.Status)+":"+e.UserID)
		if e.Version <= last {
			t.Fatalf("versions not increasing: %+v", evs)
		}
		last = e.Version
	}
	if want := []string{"reset:", "online:u-1", "online:u-2", "offline:u-1"}; !slices.Equal(got, want) {
		t.Fatalf("outbox %v, want %v", got, want)
	}
}

// The sweep's cost follows the users due, and grace follows an outage.
func TestSweepClaimsOnlyDueUsersOnce(t *testing.T) {
	t.Parallel()
	s, r := newStore(t, 200*time.Millisecond)
	ctx := context.Background()
	long := presence.NewStore(r.Client(t), presence.Options{Prefix: s.Keys().Prefix(), TTL: time.Hour})
	var short, stay []string
	for i := range 50 {
		short = append(short, fmt.Sprintf("s%d", i))
		stay = append(stay, fmt.Sprintf("l%d", i))
	}
	if _, err := s.Heartbeat(ctx, short); err != nil {
		t.Fatal(err)
	}
	if _, err := long.Heartbeat(ctx, stay); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sweep(ctx, 1000); err != nil { // sets the sweep marker
		t.Fatal(err)
	}
	claimed := 0
	testenv.Eventually(t, 5*time.Second, func() bool {
		res, err := s.Sweep(ctx, 20)
		if err != nil {
			t.Fatal(err)
		}
		claimed += res.Claimed
		return claimed >= len(short)
	}, "sweeps claimed %d of %d", claimed, len(short))
	if claimed != len(short) {
		t.Fatalf("claimed %d, want %d", claimed, len(short))
	}
	// Nobody is claimed twice, through the sweep or the keyspace path.
	if n, err := s.Claim(ctx, short); err != nil || n != 0 {
		t.Fatalf("Claim after sweep = %d, %v", n, err)
	}
	if n, _ := s.Count(ctx); n != int64(len(stay)) {
		t.Fatalf("Count = %d, want %d", n, len(stay))
	}
}

// A presence key of another type (another program's hash under the prefix)
// is not presenced's: a heartbeat or disconnect refuses that id alone
// (KeyConflict) and leaves the key as it is, the other ids of the call are
// applied whole, and a session whose key was replaced by a hash is not kept
// alive by it: the sweep ends it when its slot is due, leaving the hash.
func TestForeignTypedKeys(t *testing.T) {
	t.Parallel()
	s, r := newStore(t, 300*time.Millisecond)
	ctx := context.Background()
	rdb := r.Client(t)
	if err := rdb.HSet(ctx, s.Keys().User("42:devices"), "phone", "1").Err(); err != nil {
		t.Fatal(err)
	}
	vs, err := s.Heartbeat(ctx, []string{"a", "42:devices", "b"})
	if err != nil {
		t.Fatalf("heartbeat with a foreign key: %v", err)
	}
	if vs[0] <= 0 || vs[1] != presence.KeyConflict || vs[2] <= 0 {
		t.Fatalf("results %v, want versions for a and b and KeyConflict for 42:devices", vs)
	}
	f, err := s.Footprint(ctx)
	if err != nil || f.Sessions != 2 || f.Count != 2 || f.IndexEntries != 2 {
		t.Fatalf("footprint %+v, %v; want 2 sessions, count 2, 2 index entries", f, err)
	}
	if _, err := s.SetOnline(ctx, "42:devices"); !errors.Is(err, presence.ErrKeyConflict) {
		t.Fatalf("SetOnline on a foreign key: %v, want ErrKeyConflict", err)
	}
	if _, err := s.DeleteOnline(ctx, "42:devices"); !errors.Is(err, presence.ErrKeyConflict) {
		t.Fatalf("DeleteOnline on a foreign key: %v, want ErrKeyConflict", err)
	}
	if typ := rdb.Type(ctx, s.Keys().User("42:devices")).Val(); typ != "hash" {
		t.Fatalf("the foreign key is a %q after a disconnect, want the hash left alone", typ)
	}
	// b's key is replaced by a hash (another program's DEL and HSET): its
	// session ends through the sweep, and the hash stays.
	if err := rdb.Del(ctx, s.Keys().User("b")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, s.Keys().User("b"), "x", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Status(ctx, "b"); err != nil || st.Online {
		t.Fatalf("status of b on a hash: %+v, %v; want offline", st, err)
	}
	stop := time.Now().Add(10 * time.Second)
	for {
		if _, err := s.Heartbeat(ctx, []string{"a"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sweep(ctx, 1000); err != nil {
			t.Fatal(err)
		}
		if n, _ := s.Count(ctx); n == 1 {
			break
		}
		if time.Now().After(stop) {
			t.Fatal("b's session on a hash key was never ended")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if typ := rdb.Type(ctx, s.Keys().User("b")).Val(); typ != "hash" {
		t.Fatalf("b's key is a %q after the sweep, want the hash left alone", typ)
	}
	var got []string
	for _, e := range readOutbox(t, s) {
		got = append(got, string(e.Status)+":"+string(e.Reason)+":"+e.UserID)
	}
	if want := []string{"reset:data_loss:", "online:heartbeat:a", "online:heartbeat:b", "offline:expired:b"}; !slices.Equal(got, want) {
		t.Fatalf("outbox %v, want %v", got, want)
	}
	if all, err := s.GetAllOnlineUsers(ctx); err != nil || !slices.Equal(all, []string{"a"}) {
		t.Fatalf("online %v, %v; want [a]", all, err)
	}
}
