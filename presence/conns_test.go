package presence_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// connStore is a store with the connection options, and a reader of its
// outbox that returns the events queued since the last read.
type connStore struct {
	*presence.Store
	t  *testing.T
	ob *presence.Outbox
}

func newConnStore(t *testing.T, opts presence.Options) *connStore {
	t.Helper()
	c, _ := newRawConnStore(t, opts)
	return c
}

// events returns "<status>:<reason>:<user>" of the events queued since the
// last call (the data set's first reset left out).
func (c *connStore) events() []string {
	c.t.Helper()
	evs, err := c.ob.ReadNew(context.Background(), 1000, -1)
	if err != nil {
		c.t.Fatal(err)
	}
	out := []string{}
	for _, e := range evs {
		if e.Status == contract.StatusReset {
			continue
		}
		out = append(out, fmt.Sprintf("%s:%s:%s", e.Status, e.Reason, e.UserID))
	}
	return out
}

func (c *connStore) expect(what string, want ...string) {
	c.t.Helper()
	if want == nil {
		want = []string{}
	}
	if got := c.events(); !slices.Equal(got, want) {
		c.t.Fatalf("%s: events %v, want %v", what, got, want)
	}
}

func (c *connStore) connect(conns ...contract.Conn) []int64 {
	c.t.Helper()
	res, err := c.Connect(context.Background(), conns)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

func (c *connStore) release(conns ...contract.Conn) []int64 {
	c.t.Helper()
	res, err := c.Release(context.Background(), conns)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

func (c *connStore) exists(id string) bool {
	c.t.Helper()
	on, err := c.IsOnline(context.Background(), id)
	if err != nil {
		c.t.Fatal(err)
	}
	return on
}

func conn(user, id, gw string, seq int64) contract.Conn {
	return contract.Conn{UserID: user, ConnectionID: id, GatewayID: gw, Seq: seq}
}

// Two connections on two gateways: the first disconnect publishes nothing
// and leaves the key; the second ends the session.
func TestTwoConnectionsOneSession(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: time.Minute})
	c.connect(conn("u", "tab-1", "gw-1", 1))
	c.connect(conn("u", "tab-2", "gw-2", 1))
	c.expect("two connections", "online:heartbeat:u")
	st, err := c.Status(context.Background(), "u")
	if err != nil || !st.Online || len(st.Connections) != 2 {
		t.Fatalf("status %+v, %v; want online with two connections", st, err)
	}
	gws := []string{st.Connections[0].GatewayID, st.Connections[1].GatewayID}
	slices.Sort(gws)
	if !slices.Equal(gws, []string{"gw-1", "gw-2"}) {
		t.Fatalf("gateways %v", gws)
	}
	c.release(conn("u", "tab-1", "", 2))
	c.expect("first disconnect")
	if !c.exists("u") {
		t.Fatal("key gone while a connection is live")
	}
	if res := c.release(conn("u", "tab-2", "", 2)); res[0] <= 0 {
		t.Fatalf("last disconnect result %d, want the offline's version", res[0])
	}
	c.expect("last disconnect", "offline:disconnect:u")
	if c.exists("u") {
		t.Fatal("key left after the last connection ended")
	}
}

// Plain heartbeats (the implicit connection) and named connections of one
// user coexist: either kind ending leaves the user online while the other
// is live.
func TestImplicitAndExplicitCoexist(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: time.Minute})
	ctx := context.Background()
	if _, err := c.Heartbeat(ctx, []string{"u", "v"}); err != nil {
		t.Fatal(err)
	}
	c.connect(conn("u", "c1", "gw", 0), conn("v", "c1", "gw", 0))
	c.expect("plain then named", "online:heartbeat:u", "online:heartbeat:v")
	// u: the named connection ends first, then the implicit one.
	c.release(conn("u", "c1", "", 0))
	c.expect("named ended, implicit live")
	if _, err := c.Heartbeat(ctx, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Disconnect(ctx, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	c.expect("implicit ended", "offline:disconnect:u")
	// v: the implicit connection ends first (a plain disconnect), then the
	// named one.
	if _, err := c.Disconnect(ctx, []string{"v"}); err != nil {
		t.Fatal(err)
	}
	c.expect("implicit ended, named live")
	if !c.exists("v") {
		t.Fatal("v's key gone while its named connection is live")
	}
	c.release(conn("v", "c1", "", 0))
	c.expect("named ended", "offline:disconnect:v")
}

// A connection lives one TTL after its last heartbeat: one that stops
// while another continues ends silently, and the key's TTL follows the
// latest live deadline.
func TestDeadConnectionEndsSilently(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: 400 * time.Millisecond})
	c.connect(conn("u", "a", "", 0), conn("u", "b", "", 0))
	c.expect("connected", "online:heartbeat:u")
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		c.connect(conn("u", "b", "", 0))
		time.Sleep(100 * time.Millisecond)
	}
	st, err := c.Status(context.Background(), "u")
	if err != nil || len(st.Connections) != 1 || st.Connections[0].ID != "b" {
		t.Fatalf("status %+v, %v; want only b live", st, err)
	}
	// b's disconnect is the last live connection's.
	c.release(conn("u", "b", "", 0))
	c.expect("b ended", "offline:disconnect:u")
}

// allConnections ends everything at once, reason kicked, without grace.
func TestKick(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: time.Minute, OfflineGrace: time.Minute})
	ctx := context.Background()
	if _, err := c.Heartbeat(ctx, []string{"u"}); err != nil {
		t.Fatal(err)
	}
	c.connect(conn("u", "a", "gw-1", 1), conn("u", "b", "gw-2", 1))
	c.expect("connected", "online:heartbeat:u")
	res, err := c.Kick(ctx, []string{"u", "nobody"})
	if err != nil || res[0] <= 0 || res[1] != 0 {
		t.Fatalf("Kick = %v, %v", res, err)
	}
	c.expect("kicked", "offline:kicked:u")
	if st, _ := c.Status(ctx, "u"); st.Online || len(st.Connections) != 0 || !st.HeldUntil.IsZero() {
		t.Fatalf("status after kick %+v", st)
	}
}

// The connection limit refuses a new connection and leaves the others; a
// refresh of a known one is never refused.
func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: time.Minute, MaxConnections: 3})
	res := c.connect(conn("u", "1", "", 0), conn("u", "2", "", 0), conn("u", "3", "", 0), conn("u", "4", "", 0), conn("w", "1", "", 0))
	if res[1] != 0 || res[2] != 0 || res[3] != presence.TooManyConnections || res[4] <= 0 {
		t.Fatalf("results %v, want the fourth refused and w started", res)
	}
	if res := c.connect(conn("u", "1", "", 0)); res[0] != 0 {
		t.Fatalf("refresh result %v", res)
	}
	c.release(conn("u", "2", "", 0))
	if res := c.connect(conn("u", "4", "", 0)); res[0] != 0 {
		t.Fatalf("after a disconnect the fourth got %v", res)
	}
	st, _ := c.Status(context.Background(), "u")
	if len(st.Connections) != 3 {
		t.Fatalf("connections %+v, want 3", st.Connections)
	}
}

// Sequences: an older heartbeat or disconnect than the last applied is
// ignored, and a heartbeat a disconnect overtook does not reopen the
// connection.
func TestSequenceOrder(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: time.Minute})
	c.connect(conn("u", "a", "", 5))
	c.expect("connected", "online:heartbeat:u")
	if res := c.connect(conn("u", "a", "", 4)); res[0] != presence.Stale {
		t.Fatalf("older heartbeat: %v, want Stale", res)
	}
	if res := c.release(conn("u", "a", "", 5)); res[0] != presence.Stale {
		t.Fatalf("disconnect with the heartbeat's seq: %v, want Stale", res)
	}
	c.expect("stale messages")
	c.release(conn("u", "a", "", 7))
	c.expect("disconnect", "offline:disconnect:u")
	// The heartbeat seq 6 was sent before the disconnect and arrives after it.
	if res := c.connect(conn("u", "a", "", 6)); res[0] != presence.Stale {
		t.Fatalf("overtaken heartbeat: %v, want Stale", res)
	}
	c.expect("overtaken heartbeat")
	if c.exists("u") {
		t.Fatal("overtaken heartbeat reopened the connection")
	}
	// A disconnect that arrives before anything of its connection (the
	// gateway's messages crossed replicas) still buries it.
	c.release(conn("v", "x", "", 3))
	if res := c.connect(conn("v", "x", "", 2)); res[0] != presence.Stale {
		t.Fatalf("heartbeat after its connection's disconnect: %v", res)
	}
	// A new connection id, or a later seq, is a new connection.
	if res := c.connect(conn("u", "a", "", 8)); res[0] <= 0 {
		t.Fatalf("later seq: %v, want a new session", res)
	}
	c.expect("reconnected", "online:heartbeat:u")
}

// Grace: a reconnect within it continues the session with no events; after
// it, one offline with the reason of the disconnect.
func TestOfflineGrace(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: time.Minute, OfflineGrace: 500 * time.Millisecond})
	ctx := context.Background()
	c.connect(conn("u", "old", "gw", 1))
	if _, err := c.Heartbeat(ctx, []string{"p"}); err != nil {
		t.Fatal(err)
	}
	c.expect("connected", "online:heartbeat:u", "online:heartbeat:p")
	// A page reload: the old connection ends, a new one starts.
	c.release(conn("u", "old", "", 2))
	if _, err := c.Disconnect(ctx, []string{"p"}); err != nil {
		t.Fatal(err)
	}
	st, _ := c.Status(ctx, "u")
	if st.Online || st.HeldUntil.IsZero() || st.Version == 0 {
		t.Fatalf("status while held %+v", st)
	}
	if c.exists("u") {
		t.Fatal("key exists while no connection is live")
	}
	c.connect(conn("u", "new", "gw", 1))
	if _, err := c.Heartbeat(ctx, []string{"p"}); err != nil {
		t.Fatal(err)
	}
	c.expect("reload within the grace")
	// The held entries come due; nothing ends.
	time.Sleep(700 * time.Millisecond)
	if _, err := c.Sweep(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	c.expect("sweep after the grace, users back")
	// Now both leave for good: one offline each, after the grace.
	c.release(conn("u", "new", "", 2))
	if _, err := c.Disconnect(ctx, []string{"p"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sweep(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	c.expect("held")
	testenv.Eventually(t, 3*time.Second, func() bool {
		if _, err := c.Sweep(ctx, 1000); err != nil {
			t.Fatal(err)
		}
		n, _ := c.Count(ctx)
		return n == 0
	}, "held sessions never ended")
	got := c.events()
	slices.Sort(got)
	if want := []string{"offline:disconnect:p", "offline:disconnect:u"}; !slices.Equal(got, want) {
		t.Fatalf("after the grace: %v, want %v", got, want)
	}
	if n, err := c.Claim(ctx, []string{"u", "p"}); err != nil || n != 0 {
		t.Fatalf("Claim after = %d, %v", n, err)
	}
}

// A lapsed lease ends its gateway's connections at once: users with no
// other connection go offline, reason gateway_lost; users connected
// elsewhere keep their session.
func TestLeaseLapse(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: time.Minute, GatewayLease: 300 * time.Millisecond})
	ctx := context.Background()
	if _, err := c.RenewLease(ctx, "gw-1", "i-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RenewLease(ctx, "gw-2", "i-1"); err != nil {
		t.Fatal(err)
	}
	var only []contract.Conn
	for i := range 200 {
		only = append(only, conn(fmt.Sprintf("u%d", i), "c", "gw-1", 0))
	}
	c.connect(only...)
	c.connect(conn("both", "a", "gw-1", 0), conn("both", "b", "gw-2", 0))
	if got := len(c.events()); got != 201 {
		t.Fatalf("%d onlines, want 201", got)
	}
	if g, err := c.Gateway(ctx, "gw-1"); err != nil || !g.Leased || g.Connections != 201 || g.InstanceID != "i-1" {
		t.Fatalf("gateway query %+v, %v", g, err)
	}
	// gw-2 renews; gw-1 does not.
	deadline := time.Now().Add(600 * time.Millisecond)
	for time.Now().Before(deadline) {
		if _, err := c.RenewLease(ctx, "gw-2", "i-1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ended, left := 0, 0
	for {
		res, err := c.Lapse(ctx, 50)
		if err != nil {
			t.Fatal(err)
		}
		ended += res.Ended
		left += res.Left
		if !res.More {
			break
		}
	}
	if ended != 201 || left != 200 {
		t.Fatalf("lapse ended %d connections and left %d users, want 201 and 200", ended, left)
	}
	got := c.events()
	if len(got) != 200 || got[0] != "offline:gateway_lost:u0" && got[0][:21] != "offline:gateway_lost:" {
		t.Fatalf("events %d, first %v", len(got), got[:min(3, len(got))])
	}
	if slices.Contains(got, "offline:gateway_lost:both") {
		t.Fatal("a user connected elsewhere went offline")
	}
	if !c.exists("both") || c.exists("u7") {
		t.Fatal("keys do not follow the connections")
	}
	if g, _ := c.Gateway(ctx, "gw-1"); g.Leased {
		t.Fatalf("gw-1 still leased: %+v", g)
	}
	// Its connections heartbeat again (the gateway was only cut off): they
	// come back online.
	if res := c.connect(conn("u3", "c", "gw-1", 0)); res[0] <= 0 {
		t.Fatalf("reconnect after the lapse: %v", res)
	}
}

// A restarted gateway (another instance id) replaces the lease: the old
// instance's connections end; the new one's stay.
func TestGatewayRestart(t *testing.T) {
	t.Parallel()
	c := newConnStore(t, presence.Options{TTL: time.Minute, GatewayLease: time.Minute})
	ctx := context.Background()
	if _, err := c.RenewLease(ctx, "gw", "old"); err != nil {
		t.Fatal(err)
	}
	c.connect(conn("a", "1", "gw", 0), conn("b", "1", "gw", 0))
	l, err := c.RenewLease(ctx, "gw", "new")
	if err != nil || l.Replaced == 0 {
		t.Fatalf("restart lease %+v, %v", l, err)
	}
	// b reconnects to the new instance before the sweep; a does not.
	c.connect(conn("b", "2", "gw", 0))
	for {
		res, err := c.Lapse(ctx, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if !res.More {
			break
		}
	}
	c.expect("restart", "online:heartbeat:a", "online:heartbeat:b", "offline:gateway_lost:a")
	if g, _ := c.Gateway(ctx, "gw"); !g.Leased || g.InstanceID != "new" || g.Connections != 1 {
		t.Fatalf("gateway after restart %+v", g)
	}
}
