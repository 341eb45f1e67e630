package presence_test

// Adversarial review of the connection model (issue 12). Each test fails on
// the code it was written against because of a defect it names.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// newReviewStore is newConnStore that also returns a client of its Redis.
func newReviewStore(t *testing.T, opts presence.Options) (*connStore, *redis.Client) {
	t.Helper()
	r := testenv.StartRedis(t)
	opts.Prefix = testenv.Prefix(t) + ":"
	rdb := r.Client(t)
	s := presence.NewStore(rdb, opts)
	ctx := context.Background()
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	c := &connStore{Store: s, t: t, ob: s.Outbox("t")}
	if err := c.ob.Init(ctx); err != nil {
		t.Fatal(err)
	}
	return c, rdb
}

func (c *connStore) sweep() presence.SweepResult {
	c.t.Helper()
	res, err := c.Sweep(context.Background(), 1000)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

func (c *connStore) lapseAll() (ended, left int) {
	c.t.Helper()
	for {
		res, err := c.Lapse(context.Background(), 2000)
		if err != nil {
			c.t.Fatal(err)
		}
		ended += res.Ended
		left += res.Left
		if !res.More {
			return
		}
	}
}

// indexEntries returns the deadline index entries of id ("<bucket>=<value>").
func indexEntries(t *testing.T, rdb *redis.Client, prefix, id string) []string {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, prefix+"d:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		v, err := rdb.HGet(ctx, k, id).Result()
		if err == nil {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// lease.lua runs check_epoch first like every writing script, but never
// calls flush(): when a gateway's lease message is the first script call
// after the data set was lost (FLUSHALL, a restart without persistence, a
// failover to an empty replica; gateways renew every few seconds, so it
// often is), check_epoch writes the new epoch and queues the data_loss
// reset, and the reset is never written to the outbox. Every later script
// finds the epoch and announces nothing; reset.lua (the relay's check)
// takes the published entries for the epoch's own data set (their versions
// are below the epoch's). Consumers never learn that the sessions are gone.
func TestReviewLeaseSwallowsDataLossReset(t *testing.T) {
	t.Parallel()
	c, rdb := newReviewStore(t, presence.Options{TTL: time.Minute})
	ctx := context.Background()
	if _, err := c.Heartbeat(ctx, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	pub, err := c.ob.ReadNew(ctx, 100, -1)
	if err != nil || len(pub) != 2 || pub[1].UserID != "u" {
		t.Fatalf("published %+v, %v", pub, err)
	}
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// The data set is gone; the first message after it is a lease renewal.
	if _, err := c.RenewLease(ctx, "gw", "i"); err != nil {
		t.Fatal(err)
	}
	// The relay's check of what it published (worker: after each batch).
	last := pub[len(pub)-1]
	v, err := c.ResetAfterLoss(ctx, []presence.Published{{Entry: last.ID, Version: last.Version}}, last.Version)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeat(ctx, []string{"v"}); err != nil {
		t.Fatal(err)
	}
	ob := c.Store.Outbox("t2")
	if err := ob.Init(ctx); err != nil {
		t.Fatal(err)
	}
	evs, err := ob.ReadNew(ctx, 1000, -1)
	if err != nil {
		t.Fatal(err)
	}
	if v != 0 {
		t.Logf("ResetAfterLoss announced the loss: %d", v)
	}
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s:%s:%s", e.Status, e.Reason, e.UserID))
	}
	if len(got) == 0 || !strings.HasPrefix(got[0], "reset:data_loss") {
		t.Fatalf("events after the data loss: %v, want the data_loss reset first (ResetAfterLoss returned %d)", got, v)
	}
}

// A page reload with a grace (disconnect, then a new connection within the
// grace) files a check entry for the hold in the slot of NOW+grace. With
// grace == TTL and reloads within the first slot, that is the slot (and,
// for a single-id call, the bucket) of the session's own entry: the check
// entry must not take the session entry's place, or after the revive the
// session has no index entry and, once its key lapses, only the keyspace
// event could end it. Ten users reload; each then leaves without a
// disconnect (a crashed tab): the sweep alone must end every session once.
func TestReviewHeldEntryOverwritesSessionEntry(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	c, rdb := newReviewStore(t, presence.Options{TTL: ttl, OfflineGrace: ttl})
	ctx := context.Background()
	prefix := c.Keys().Prefix()
	c.sweep() // the sweep marker, so no outage is detected below
	var users []string
	start := time.Now()
	for i := range 10 {
		u := fmt.Sprintf("u%d", i)
		users = append(users, u)
		c.connect(conn(u, "old", "", 1))
		c.release(conn(u, "old", "", 2)) // page reload: the old connection ends...
		c.connect(conn(u, "new", "", 1)) // ...and the new one starts within the grace
		c.expect("reload "+u, "online:heartbeat:"+u)
	}
	// They stay connected past the slot of their session entries...
	time.Sleep(ttl * 8 / 10)
	for _, u := range users {
		c.connect(conn(u, "new", "", 2))
	}
	time.Sleep(ttl * 4 / 10)
	c.sweep() // the slots come due while the keys are alive
	// ...then leave without a disconnect: the keys lapse at about start +
	// 1.8 TTL. The sweep alone must end the sessions.
	for time.Since(start) < 3*ttl {
		c.sweep()
		time.Sleep(100 * time.Millisecond)
	}
	got := c.events()
	slices.Sort(got)
	var want []string
	for _, u := range users {
		if c.exists(u) {
			t.Fatalf("%s: key still there", u)
		}
		want = append(want, "offline:expired:"+u)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		n, _ := c.Count(ctx)
		t.Fatalf("keys lapsed 1.2 TTL ago and swept since: events %v, want %v; sessions open %d, index entries of u0 %v",
			got, want, n, indexEntries(t, rdb, prefix, "u0"))
	}
}

// A NATS outage (or every replica stopped) longer than the gateway lease:
// the gateways could not renew, so every lease lapses in the gap. The
// sweep detects the outage and grants the users' keys one TTL of grace (no
// storm after an outage), but lapse.lua has no such check, and the worker
// calls Lapse right after the sweep (worker/reconcile.go): every user on a
// leased gateway goes offline with reason gateway_lost at once, then comes
// back online at the next heartbeat. A 30 s NATS blip flips every such user
// offline and back, which the outage grace exists to prevent.
func TestReviewLeaseLapseAfterOutageStorm(t *testing.T) {
	t.Parallel()
	c, _ := newReviewStore(t, presence.Options{TTL: time.Minute, GatewayLease: 300 * time.Millisecond, OutageThreshold: 500 * time.Millisecond})
	ctx := context.Background()
	if _, err := c.RenewLease(ctx, "gw-1", "i-1"); err != nil {
		t.Fatal(err)
	}
	var users []string
	for i := range 20 {
		u := fmt.Sprintf("u%d", i)
		users = append(users, u)
		c.connect(conn(u, "c", "gw-1", 1))
	}
	c.sweep()
	if got := len(c.events()); got != len(users) {
		t.Fatalf("%d onlines", got)
	}
	// The outage: nothing reaches any replica for 1 s (over the lease and
	// the outage threshold); the gateway and its connections are fine.
	time.Sleep(time.Second)
	// The first reconcile after it, as worker.reconcile does it.
	for c.sweep().More {
	}
	ended, left := c.lapseAll()
	// The gateway's renewal and its connections' heartbeats arrive.
	if _, err := c.RenewLease(ctx, "gw-1", "i-1"); err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		c.connect(conn(u, "c", "gw-1", 2))
	}
	if got := c.events(); len(got) != 0 {
		t.Fatalf("after an outage the lapse ended %d connections, %d users left; events %d: %v ...", ended, left, len(got), got[:min(4, len(got))])
	}
}

// others_after (a disconnect, or a lost gateway, of the connection with the
// latest deadline while another is live) moves the presence key's expiry
// back to the latest live deadline with PEXPIREAT, but leaves the
// session's deadline index entry where it is: in a slot after the new
// deadline (the sweep refiled it at the old one). The index invariant
// "an entry at a slot no later than its deadline" breaks, and the sweep
// ends the session only when that later slot comes due: up to a TTL late
// (here 1.4 s after the key lapsed) whenever the keyspace event is missed
// or unavailable.
func TestReviewShrunkDeadlineSweptLate(t *testing.T) {
	t.Parallel()
	const ttl = 2 * time.Second
	c, _ := newReviewStore(t, presence.Options{TTL: ttl})
	c.sweep()
	t0 := time.Now()
	at := func(d time.Duration) { time.Sleep(time.Until(t0.Add(d))) }
	c.connect(conn("u", "a", "", 1)) // entry at t0 + 2 s
	at(500 * time.Millisecond)
	c.connect(conn("u", "a", "", 2)) // a's deadline t0 + 2.5 s
	at(1900 * time.Millisecond)
	c.connect(conn("u", "b", "", 1)) // b's deadline t0 + 3.9 s, the key's too
	at(2200 * time.Millisecond)
	c.sweep() // the entry comes due and is refiled at the key's deadline, t0 + 3.9 s
	c.release(conn("u", "b", "", 2))
	c.expect("connections", "online:heartbeat:u")
	// a is the only live connection now: the key lapses at t0 + 2.5 s.
	for time.Since(t0) < 3*time.Second {
		c.sweep()
		time.Sleep(50 * time.Millisecond)
	}
	if c.exists("u") {
		t.Fatal("key still there")
	}
	c.expect("500 ms after the last live deadline, sweep only", "offline:expired:u")
}

// A lease lapse ends a connection of a user whose presence key another
// program replaced by a hash: last_gone DELs that key (others_after would
// PEXPIREAT it). The README: a key of another type is not presenced's, and
// the scripts never write or delete it (release.lua checks key_type;
// lapse.lua does not).
func TestReviewLapseDeletesForeignKey(t *testing.T) {
	t.Parallel()
	c, rdb := newReviewStore(t, presence.Options{TTL: time.Minute, GatewayLease: 200 * time.Millisecond})
	ctx := context.Background()
	if _, err := c.RenewLease(ctx, "gw", "i"); err != nil {
		t.Fatal(err)
	}
	c.connect(conn("u", "c", "gw", 1))
	k := c.Keys().User("u")
	if err := rdb.Del(ctx, k).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, k, "other", "program").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	c.lapseAll()
	if typ := rdb.Type(ctx, k).Val(); typ != "hash" {
		t.Fatalf("another program's hash at %s: type now %q (deleted by the lapse)", k, typ)
	}
}

// Every gateway id that ever sends a connection without holding a lease
// gets a number in <p>gwnum and <p>leasegw (connect.lua resolve), and
// nothing ever removes it: with gateway ids that change (pod names, one per
// deploy) both hashes grow without bound.
func TestReviewGatewayNumbersGrow(t *testing.T) {
	t.Parallel()
	c, rdb := newReviewStore(t, presence.Options{TTL: 300 * time.Millisecond, GatewayLease: 200 * time.Millisecond})
	ctx := context.Background()
	prefix := c.Keys().Prefix()
	c.sweep()
	for i := range 50 {
		gw := fmt.Sprintf("gw-pod-%d", i)
		c.connect(conn(fmt.Sprintf("u%d", i), "c", gw, 1))
		c.release(conn(fmt.Sprintf("u%d", i), "c", "", 2))
	}
	// Every connection ended; let everything lapse and be swept.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		c.sweep()
		c.lapseAll()
		time.Sleep(100 * time.Millisecond)
	}
	gwnum := rdb.HLen(ctx, prefix+"gwnum").Val()
	leasegw := rdb.HLen(ctx, prefix+"leasegw").Val()
	if gwnum != 0 || leasegw != 0 {
		t.Fatalf("no connection and no lease left, yet gwnum holds %d and leasegw %d entries (one per gateway id ever seen)", gwnum, leasegw)
	}
}

// README: "A user may have PRESENCE_MAX_CONNECTIONS_PER_USER live
// connections ... (the implicit connection does not count)". connect.lua
// counts the implicit connection's record (adopted, or written by
// heartbeat.lua) in the summary it compares with the limit, so a user who
// also sends plain heartbeats gets one named connection less.
func TestReviewImplicitConnectionCountsTowardLimit(t *testing.T) {
	t.Parallel()
	c, _ := newReviewStore(t, presence.Options{TTL: time.Minute, MaxConnections: 2})
	ctx := context.Background()
	if _, err := c.Heartbeat(ctx, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	res := c.connect(conn("u", "c1", "", 0), conn("u", "c2", "", 0))
	if slices.Contains(res, presence.TooManyConnections) {
		t.Fatalf("two named connections with MaxConnections 2 beside the implicit one: %v", res)
	}
}

// A deployment with only plain users (no connection ids, no gateways) and
// PRESENCE_OFFLINE_GRACE set: the first plain disconnect's hold calls
// conns_mark (last_gone), and from then on heartbeat.lua's refresh of every
// plain user costs an HGET of its connections shard on top of the
// documented single SET ... GET (README: "A refresh is one command"); the
// plain users' hot path changed though none of them ever had a connection.
func TestReviewGraceSlowsPlainRefresh(t *testing.T) {
	t.Parallel()
	c, rdb := newReviewStore(t, presence.Options{TTL: time.Minute, OfflineGrace: time.Second})
	ctx := context.Background()
	var users []string
	for i := range 100 {
		users = append(users, fmt.Sprintf("p%d", i))
	}
	if _, err := c.Heartbeat(ctx, append(users, "x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Disconnect(ctx, []string{"x"}); err != nil { // held for the grace
		t.Fatal(err)
	}
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeat(ctx, users); err != nil { // 100 refreshes
		t.Fatal(err)
	}
	stats := rdb.Info(ctx, "commandstats").Val()
	for _, line := range strings.Split(stats, "\n") {
		if strings.HasPrefix(line, "cmdstat_hget:") {
			t.Fatalf("100 plain refreshes after a plain user's held disconnect: %s", strings.TrimSpace(line))
		}
	}
}
