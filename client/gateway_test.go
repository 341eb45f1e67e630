package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// upTo returns the events that arrive before the online of marker, which
// it heartbeats: presenced publishes events in the order it stored them,
// so an event of anything stored before the marker comes before it.
func (ch events) upTo(t *testing.T, c *client.Client, marker string) []client.Event {
	t.Helper()
	if _, err := c.Heartbeat(context.Background(), marker); err != nil {
		t.Fatalf("heartbeat %s: %v", marker, err)
	}
	var got []client.Event
	for {
		ev := ch.next(t)
		if ev.UserID == marker {
			return got
		}
		got = append(got, ev)
	}
}

func expectEvent(t *testing.T, ev client.Event, user string, status contract.Status, reason contract.Reason) {
	t.Helper()
	if ev.UserID != user || ev.Status != status || ev.Reason != reason {
		t.Fatalf("event %+v, want %s %s %s", ev, user, status, reason)
	}
}

// setup starts presenced with the store's options and returns a client of
// it and the events it publishes.
func setup(t *testing.T, opts presence.Options, copts ...client.Option) (*presenced, *client.Client, events) {
	t.Helper()
	if opts.TTL == 0 {
		opts.TTL = time.Minute
	}
	p := startPresencedWith(t, testenv.Prefix(t), opts)
	c := client.New(p.nats.Conn(t), append([]client.Option{client.WithPrefix(p.prefix)}, copts...)...)
	return p, c, subscribe(t, c)
}

func startGateway(t *testing.T, c *client.Client, id string, opts ...client.GatewayOption) *client.Gateway {
	t.Helper()
	g := client.NewGateway(c, id, opts...)
	if err := g.Start(context.Background()); err != nil {
		t.Fatalf("start gateway %s: %v", id, err)
	}
	t.Cleanup(g.Abandon) // stops it if the test did not
	return g
}

func connect(t *testing.T, g *client.Gateway, user, conn string) {
	t.Helper()
	if err := g.Connect(context.Background(), user, conn); err != nil {
		t.Fatalf("connect %s/%s on %s: %v", user, conn, g.ID(), err)
	}
}

func TestConnectionHeartbeatsDisconnectsAndKick(t *testing.T) {
	t.Parallel()
	_, c, evs := setup(t, presence.Options{MaxConnections: 2}, client.WithBatchSize(2))
	ctx := context.Background()

	// Two connections of u on two gateways and an invalid entry, in two
	// requests (batch size 2): one online.
	r, err := c.HeartbeatConns(ctx,
		client.Conn{UserID: "u", ConnectionID: "c1", GatewayID: "gw-a", Seq: 1},
		client.Conn{UserID: "u", ConnectionID: "c2", GatewayID: "gw-b", Seq: 1},
		client.Conn{UserID: "u", ConnectionID: "c1", GatewayID: "gw-a", Seq: 2}, // merged into the first
		client.Conn{UserID: "bad id", ConnectionID: "x"},
	)
	if err != nil || r.Accepted != 2 || len(r.Rejected) != 1 || r.Rejected[0].UserID != "bad id" {
		t.Fatalf("heartbeat = %+v, %v", r, err)
	}
	expectEvent(t, evs.next(t), "u", client.StatusOnline, client.ReasonHeartbeat)
	// A third connection is one too many: rejected by name, the others kept.
	r, err = c.HeartbeatConns(ctx, client.Conn{UserID: "u", ConnectionID: "c3", GatewayID: "gw-a", Seq: 1})
	if err != nil || r.Accepted != 0 || len(r.Rejected) != 1 || r.Rejected[0].ConnectionID != "c3" {
		t.Fatalf("third connection = %+v, %v", r, err)
	}
	st, err := c.Status(ctx, "u")
	if err != nil || !st.Online || len(st.Connections) != 2 {
		t.Fatalf("status = %+v, %v", st, err)
	}
	gws := map[string]string{}
	for _, cn := range st.Connections {
		gws[cn.ConnectionID] = cn.GatewayID
		if cn.Since.IsZero() || !cn.ExpiresAt.After(cn.Since) {
			t.Fatalf("connection %+v", cn)
		}
	}
	if gws["c1"] != "gw-a" || gws["c2"] != "gw-b" {
		t.Fatalf("connections %+v", st.Connections)
	}

	// One connection ends: u is still online, no event.
	if r, err := c.DisconnectConns(ctx, client.Conn{UserID: "u", ConnectionID: "c1", GatewayID: "gw-a", Seq: 3}); err != nil || r.Accepted != 1 {
		t.Fatalf("disconnect c1 = %+v, %v", r, err)
	}
	if got := evs.upTo(t, c, "marker-1"); len(got) != 0 {
		t.Fatalf("events after one of two connections ended: %+v", got)
	}
	// The kick ends the other (and the implicit one a plain heartbeat adds).
	if _, err := c.Heartbeat(ctx, "u"); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Kick(ctx, "u", "u", "nobody"); err != nil || r.Accepted != 2 {
		t.Fatalf("kick = %+v, %v", r, err)
	}
	expectEvent(t, evs.next(t), "u", client.StatusOffline, client.ReasonKicked)
	if st, err := c.Status(ctx, "u"); err != nil || st.Online || st.Connections != nil {
		t.Fatalf("status after kick = %+v, %v", st, err)
	}
}

// One user on two gateways: closing one connection publishes nothing,
// closing the other publishes one offline.
func TestGatewayUserOnTwoGateways(t *testing.T) {
	t.Parallel()
	_, c, evs := setup(t, presence.Options{})
	ctx := context.Background()
	a, b := startGateway(t, c, "gw-a"), startGateway(t, c, "gw-b")

	connect(t, a, "u", "tab-1")
	connect(t, b, "u", "phone")
	expectEvent(t, evs.next(t), "u", client.StatusOnline, client.ReasonHeartbeat)
	if st, err := c.Status(ctx, "u"); err != nil || len(st.Connections) != 2 {
		t.Fatalf("status = %+v, %v", st, err)
	}
	if g, err := c.Gateway(ctx, "gw-a"); err != nil || !g.Leased || g.InstanceID != a.InstanceID() || g.Connections != 1 || g.ExpiresAt.IsZero() {
		t.Fatalf("gateway gw-a = %+v, %v", g, err)
	}

	if err := a.Disconnect(ctx, "u", "tab-1"); err != nil {
		t.Fatal(err)
	}
	if got := evs.upTo(t, c, "marker-1"); len(got) != 0 {
		t.Fatalf("events after the first connection closed: %+v", got)
	}
	if err := b.Disconnect(ctx, "u", "phone"); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, evs.next(t), "u", client.StatusOffline, client.ReasonDisconnect)
	if got := evs.upTo(t, c, "marker-2"); len(got) != 0 {
		t.Fatalf("more events: %+v", got)
	}

	// A clean close disconnects what is still open and ends the lease.
	connect(t, a, "v", "1")
	expectEvent(t, evs.next(t), "v", client.StatusOnline, client.ReasonHeartbeat)
	if err := a.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	expectEvent(t, evs.next(t), "v", client.StatusOffline, client.ReasonDisconnect)
	if g, err := c.Gateway(ctx, "gw-a"); err != nil || g.Leased {
		t.Fatalf("gateway gw-a after close = %+v, %v", g, err)
	}
	if err := a.Connect(ctx, "v", "2"); !errors.Is(err, client.ErrGatewayClosed) {
		t.Fatalf("connect after close: %v", err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatalf("close b: %v", err)
	}
}

// A gateway process that dies stops renewing its lease: when it lapses,
// its users go offline with reason gateway_lost, except those connected on
// another gateway.
func TestGatewayCrashEndsItsConnections(t *testing.T) {
	t.Parallel()
	const lease = time.Second
	_, c, evs := setup(t, presence.Options{GatewayLease: lease})
	ctx := context.Background()
	a := startGateway(t, c, "gw-a", client.WithLease(lease))
	b := startGateway(t, c, "gw-b", client.WithLease(lease))

	connect(t, a, "only-a", "1")
	connect(t, a, "both", "1")
	connect(t, b, "both", "2")
	for range 2 {
		if ev := evs.next(t); ev.Status != client.StatusOnline {
			t.Fatalf("event %+v", ev)
		}
	}
	// The renewals keep the lease past several lease times.
	time.Sleep(3 * lease)
	if got := evs.upTo(t, c, "marker-1"); len(got) != 0 {
		t.Fatalf("events while both gateways live: %+v", got)
	}

	a.Abandon()
	crashed := time.Now()
	expectEvent(t, evs.next(t), "only-a", client.StatusOffline, client.ReasonGatewayLost)
	t.Logf("offline %v after the crash (lease %v)", time.Since(crashed).Round(time.Millisecond), lease)
	if got := evs.upTo(t, c, "marker-2"); len(got) != 0 {
		t.Fatalf("events for users connected elsewhere: %+v", got)
	}
	st, err := c.Status(ctx, "both")
	if err != nil || !st.Online || len(st.Connections) != 1 || st.Connections[0].GatewayID != "gw-b" {
		t.Fatalf("status of both = %+v, %v", st, err)
	}
	if g, err := c.Gateway(ctx, "gw-a"); err != nil || g.Leased {
		t.Fatalf("gateway gw-a after the crash = %+v, %v", g, err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, evs.next(t), "both", client.StatusOffline, client.ReasonDisconnect)
}

// A restarted gateway (a new Gateway with the same id) takes the lease:
// the old instance's connections end at once, long before its lease would
// lapse; its connections reopened with the same ids on the new instance
// are live.
func TestGatewayRestartEndsOldInstance(t *testing.T) {
	t.Parallel()
	_, c, evs := setup(t, presence.Options{GatewayLease: time.Minute})
	ctx := context.Background()
	old := startGateway(t, c, "gw", client.WithLease(time.Minute))
	connect(t, old, "a", "1")
	connect(t, old, "b", "1")
	for range 2 {
		evs.next(t)
	}

	old.Abandon()
	restarted := startGateway(t, c, "gw", client.WithLease(time.Minute))
	got := map[string]client.Event{}
	for range 2 {
		ev := evs.next(t)
		got[ev.UserID] = ev
	}
	expectEvent(t, got["a"], "a", client.StatusOffline, client.ReasonGatewayLost)
	expectEvent(t, got["b"], "b", client.StatusOffline, client.ReasonGatewayLost)

	connect(t, restarted, "b", "1")
	expectEvent(t, evs.next(t), "b", client.StatusOnline, client.ReasonHeartbeat)
	if g, err := c.Gateway(ctx, "gw"); err != nil || !g.Leased || g.InstanceID != restarted.InstanceID() || g.Connections != 1 {
		t.Fatalf("gateway after the restart = %+v, %v (instance %s)", g, err, restarted.InstanceID())
	}
	if err := restarted.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// After a clean shutdown, the next process reopens the same connection id
// within the TTL: its sequence continues above the old process's
// disconnect (a counter from 1 would be ignored as stale).
func TestGatewaySeqContinuesAcrossRestart(t *testing.T) {
	t.Parallel()
	_, c, evs := setup(t, presence.Options{})
	ctx := context.Background()

	first := startGateway(t, c, "gw")
	connect(t, first, "u", "device-1")
	expectEvent(t, evs.next(t), "u", client.StatusOnline, client.ReasonHeartbeat)
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, evs.next(t), "u", client.StatusOffline, client.ReasonDisconnect)

	second := startGateway(t, c, "gw")
	connect(t, second, "u", "device-1")
	expectEvent(t, evs.next(t), "u", client.StatusOnline, client.ReasonHeartbeat)
	if err := second.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// The messages on the wire: each connection's seq increases with every
// message (connects, rounds, disconnects), the gateway is named once per
// message, the lease messages carry the instance id.
func TestGatewayMessages(t *testing.T) {
	t.Parallel()
	p, c, _ := setup(t, presence.Options{})
	nc := p.nats.Conn(t) // a connection of its own to watch the gateway's messages
	ctx := context.Background()

	type message struct {
		subject string
		body    struct {
			GatewayID   string        `json:"gatewayId"`
			InstanceID  string        `json:"instanceId"`
			Connections []client.Conn `json:"connections"`
		}
	}
	var (
		mu   sync.Mutex
		msgs []message
	)
	for _, subj := range []string{p.subjects.Heartbeat(), p.subjects.Disconnect(), p.subjects.GatewayHeartbeat(), p.subjects.GatewayDisconnect()} {
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
			msg := message{subject: m.Subject}
			if err := json.Unmarshal(m.Data, &msg.body); err != nil {
				t.Errorf("%s: %s: %v", m.Subject, m.Data, err)
			}
			mu.Lock()
			msgs = append(msgs, msg)
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	start := time.Now().UnixMicro()
	g := startGateway(t, c, "gw", client.WithHeartbeatInterval(20*time.Millisecond))
	connect(t, g, "u", "1")
	connect(t, g, "u", "2")
	rounds := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, m := range msgs {
			if m.subject == p.subjects.Heartbeat() && len(m.body.Connections) == 2 {
				n++
			}
		}
		return n
	}
	testenv.Eventually(t, wait, func() bool { return rounds() >= 3 }, "three heartbeat rounds")
	if err := g.Disconnect(ctx, "u", "1"); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(msgs) > 0 && msgs[len(msgs)-1].subject == p.subjects.GatewayDisconnect()
	}, "the lease ended")

	mu.Lock()
	defer mu.Unlock()
	type sent struct {
		seq int64
		end bool
	}
	perConn := map[string][]sent{}
	leases := 0
	for _, m := range msgs {
		switch m.subject {
		case p.subjects.GatewayHeartbeat(), p.subjects.GatewayDisconnect():
			leases++
			if m.body.GatewayID != "gw" || m.body.InstanceID != g.InstanceID() {
				t.Fatalf("lease message %+v", m.body)
			}
			continue
		}
		if m.body.GatewayID != "gw" {
			t.Fatalf("%s message without the gateway: %+v", m.subject, m.body)
		}
		for _, cn := range m.body.Connections {
			if cn.GatewayID != "" || cn.UserID != "u" || cn.Seq < start {
				t.Fatalf("entry %+v", cn)
			}
			perConn[cn.ConnectionID] = append(perConn[cn.ConnectionID], sent{cn.Seq, m.subject == p.subjects.Disconnect()})
		}
	}
	if leases < 2 {
		t.Fatalf("%d lease messages", leases)
	}
	for id, ss := range perConn {
		// Each connection's messages carry distinct seqs; its disconnect
		// the highest. (A round and a connect or disconnect are sent
		// concurrently, so the wire order may differ from the seq order:
		// presenced goes by the seq.)
		seqs := make([]int64, len(ss))
		for i, s := range ss {
			seqs[i] = s.seq
		}
		sorted := slices.Clone(seqs)
		slices.Sort(sorted)
		if len(slices.Compact(sorted)) != len(seqs) {
			t.Fatalf("connection %s: repeated seqs %v", id, seqs)
		}
		ends := slices.IndexFunc(ss, func(s sent) bool { return s.end })
		if ends < 0 || slices.ContainsFunc(ss[ends+1:], func(s sent) bool { return s.end }) || ss[ends].seq != sorted[len(sorted)-1] || len(ss) < 4 {
			t.Fatalf("connection %s: messages %+v, want one disconnect with the highest seq", id, ss)
		}
	}
	if len(perConn) != 2 {
		t.Fatalf("connections seen %v", perConn)
	}
}

// A connection presenced rejects is not kept; Connect says why.
func TestGatewayConnectRejected(t *testing.T) {
	t.Parallel()
	_, c, _ := setup(t, presence.Options{MaxConnections: 1})
	ctx := context.Background()
	g := startGateway(t, c, "gw")
	connect(t, g, "u", "1")
	if err := g.Connect(ctx, "u", "2"); !errors.Is(err, client.ErrRejected) {
		t.Fatalf("second connection: %v, want ErrRejected", err)
	}
	if err := g.Connect(ctx, "not valid", "1"); !errors.Is(err, client.ErrRejected) {
		t.Fatalf("invalid user: %v, want ErrRejected", err)
	}
	if n := g.Connections(); n != 1 {
		t.Fatalf("%d connections kept, want 1", n)
	}
	if err := g.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := client.NewGateway(c, "bad gateway").Start(ctx); !errors.Is(err, client.ErrFailed) {
		t.Fatalf("start with an invalid gateway id: %v", err)
	}
}
