package presence_test

// Edge cases of the connection model: interleavings and faults that the
// scripts must survive with the guarantees intact.

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

// newRawConnStore is newConnStore that also returns a client of its Redis.
func newRawConnStore(t *testing.T, opts presence.Options) (*connStore, *redis.Client) {
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

// A gateway's lease message may be the first script call after the data
// set was lost (FLUSHALL, a restart without persistence, a failover to an
// empty replica): like every writing script it announces the loss with a
// reset, which must reach the outbox before anything else, or consumers
// never learn that the sessions are gone.
func TestLeaseAfterDataLossPublishesReset(t *testing.T) {
	t.Parallel()
	c, rdb := newRawConnStore(t, presence.Options{TTL: time.Minute})
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
func TestReloadWithinGraceKeepsSessionEntry(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	c, rdb := newRawConnStore(t, presence.Options{TTL: ttl, OfflineGrace: ttl})
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
// the gateways could not renew, so every lease lapses in the gap. As the
// users' keys get one TTL of grace after an outage, the leases that lapsed
// in it get one lease time after it: no gateway_lost storm, and a gateway
// that does not come back is lost one lease later.
func TestLeasesLapsedInOutageExtended(t *testing.T) {
	t.Parallel()
	c, _ := newRawConnStore(t, presence.Options{TTL: time.Minute, GatewayLease: 300 * time.Millisecond, OutageThreshold: 500 * time.Millisecond})
	ctx := context.Background()
	if _, err := c.RenewLease(ctx, "gw-1", "i-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RenewLease(ctx, "gw-gone", "i-1"); err != nil {
		t.Fatal(err)
	}
	var users []string
	for i := range 20 {
		u := fmt.Sprintf("u%d", i)
		users = append(users, u)
		c.connect(conn(u, "c", "gw-1", 1))
	}
	c.connect(conn("lost", "c", "gw-gone", 1)) // its gateway does not come back
	c.sweep()
	if got := len(c.events()); got != len(users)+1 {
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
	// One lease time later the gateway that did not come back is lost.
	var got []string
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline) && len(got) == 0; {
		if _, err := c.RenewLease(ctx, "gw-1", "i-1"); err != nil {
			t.Fatal(err)
		}
		c.sweep()
		c.lapseAll()
		got = c.events()
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	c.sweep()
	c.lapseAll()
	if got = append(got, c.events()...); !slices.Equal(got, []string{"offline:gateway_lost:lost"}) {
		t.Fatalf("a lease time after the outage: %v, want only the lost gateway's user offline", got)
	}
}

// When the connection with the latest deadline ends while another is live,
// the presence key's expiry moves back to the latest live deadline; the
// session's index entry may sit at the later one, so a check entry at the
// new deadline lets the sweep alone (no keyspace event) end the session on
// time.
func TestShortenedDeadlineSweptOnTime(t *testing.T) {
	t.Parallel()
	const ttl = 2 * time.Second
	c, _ := newRawConnStore(t, presence.Options{TTL: ttl})
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
// program replaced by a hash: the key is not presenced's, and the lapse
// neither deletes it nor sets its expiry.
func TestLapseLeavesForeignKey(t *testing.T) {
	t.Parallel()
	c, rdb := newRawConnStore(t, presence.Options{TTL: time.Minute, GatewayLease: 200 * time.Millisecond})
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

// Gateway ids that send connections without holding a lease (pod names,
// one per deploy) leave nothing behind once their connections are gone.
func TestLeaselessGatewaysLeaveNothing(t *testing.T) {
	t.Parallel()
	c, rdb := newRawConnStore(t, presence.Options{TTL: 300 * time.Millisecond, GatewayLease: 200 * time.Millisecond})
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

// The implicit connection (plain heartbeats beside named connections) does
// not count toward PRESENCE_MAX_CONNECTIONS_PER_USER.
func TestImplicitConnectionOutsideLimit(t *testing.T) {
	t.Parallel()
	c, _ := newRawConnStore(t, presence.Options{TTL: time.Minute, MaxConnections: 2})
	ctx := context.Background()
	if _, err := c.Heartbeat(ctx, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	res := c.connect(conn("u", "c1", "", 0), conn("u", "c2", "", 0))
	if slices.Contains(res, presence.TooManyConnections) {
		t.Fatalf("two named connections with MaxConnections 2 beside the implicit one: %v", res)
	}
}

// A deployment with only plain users and PRESENCE_OFFLINE_GRACE set: a held
// plain disconnect does not change the plain users' refresh, one SET ...
// GET with no read of the connections shards.
func TestHoldKeepsPlainRefreshOneCommand(t *testing.T) {
	t.Parallel()
	c, rdb := newRawConnStore(t, presence.Options{TTL: time.Minute, OfflineGrace: time.Second})
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
