package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// lease takes or renews gateway gw's lease for instance and returns the
// reply.
func (e *env) lease(gw, instance string) contract.GatewayLeaseReply {
	e.t.Helper()
	data, _ := json.Marshal(contract.GatewayLeaseRequest{GatewayID: gw, InstanceID: instance})
	msg, err := e.nc.Request(e.subjects.GatewayHeartbeat(), data, 5*time.Second)
	if err != nil {
		e.t.Fatalf("lease %s: %v", gw, err)
	}
	var r contract.GatewayLeaseReply
	if err := json.Unmarshal(msg.Data, &r); err != nil || r.Error != "" {
		e.t.Fatalf("lease %s: %s (%v)", gw, msg.Data, err)
	}
	return r
}

// connections sends {"gatewayId":gw,"connections":[...]} on subject in
// messages of at most 1000 entries and checks every entry was accepted.
func (e *env) connections(subject, gw string, conns []contract.Conn) {
	e.t.Helper()
	for i := 0; i < len(conns); i += 1000 {
		part := conns[i:min(i+1000, len(conns))]
		r := e.request(subject, map[string]any{"gatewayId": gw, "connections": part})
		if r.Accepted != len(part) || r.Error != "" {
			e.t.Fatalf("%s of %d connections: %+v", subject, len(part), r)
		}
	}
}

// byUser counts each user's events as "status:reason".
func byUser(evs []contract.Event) map[string][]string {
	out := map[string][]string{}
	for _, ev := range evs {
		out[ev.UserID] = append(out[ev.UserID], string(ev.Status)+":"+string(ev.Reason))
	}
	return out
}

// TestConnectionsAcrossGateways, with three replicas: a user connected on
// two gateways stays online through one disconnect and goes offline once
// with the second; implicit and named connections of one user coexist;
// allConnections kicks; the connection limit refuses the extra connection
// alone, naming it.
func TestConnectionsAcrossGateways(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	for range 3 {
		e.startReplica(func(_ *worker.Options, p *presence.Options) { p.MaxConnections = 2 })
	}
	hb, dc := e.subjects.Heartbeat(), e.subjects.Disconnect()
	e.connections(hb, "gw-1", []contract.Conn{{UserID: "two-tabs", ConnectionID: "a", Seq: 1}, {UserID: "kicked", ConnectionID: "a", Seq: 1}})
	e.connections(hb, "gw-2", []contract.Conn{{UserID: "two-tabs", ConnectionID: "b", Seq: 1}, {UserID: "kicked", ConnectionID: "b", Seq: 1}})
	// A plain heartbeat (an old gateway) for a user with a named connection.
	e.heartbeat("mixed")
	e.connections(hb, "gw-1", []contract.Conn{{UserID: "mixed", ConnectionID: "new", Seq: 1}})
	e.waitEvents(3, 5*time.Second)

	e.connections(dc, "", []contract.Conn{{UserID: "two-tabs", ConnectionID: "a", Seq: 2}})
	e.disconnect("mixed") // the plain one ends; the named one is live
	// A third connection is over the limit of two: refused alone.
	r := e.request(hb, map[string]any{"connections": []contract.Conn{{UserID: "kicked", ConnectionID: "c"}, {UserID: "fresh", ConnectionID: "x"}}})
	if r.Accepted != 1 || len(r.Rejected) != 1 || r.Rejected[0].UserID != "kicked" || r.Rejected[0].ConnectionID != "c" || !strings.Contains(r.Rejected[0].Error, "most live connections") {
		t.Fatalf("over the limit: %+v", r)
	}
	time.Sleep(300 * time.Millisecond)
	if got := summaryOf(e); !slices.Equal(got, []string{"fresh:online:heartbeat", "kicked:online:heartbeat", "mixed:online:heartbeat", "two-tabs:online:heartbeat"}) {
		t.Fatalf("after partial disconnects: %v", got)
	}
	e.connections(dc, "", []contract.Conn{{UserID: "two-tabs", ConnectionID: "b", Seq: 2}, {UserID: "mixed", ConnectionID: "new", Seq: 2}})
	if r := e.request(dc, map[string]any{"userId": "kicked", "allConnections": true}); r.Accepted != 1 {
		t.Fatalf("kick: %+v", r)
	}
	evs := e.waitEvents(7, 5*time.Second)
	got := byUser(evs)
	for user, want := range map[string][]string{
		"two-tabs": {"online:heartbeat", "offline:disconnect"},
		"mixed":    {"online:heartbeat", "offline:disconnect"},
		"kicked":   {"online:heartbeat", "offline:kicked"},
	} {
		if !slices.Equal(got[user], want) {
			t.Fatalf("%s: %v, want %v", user, got[user], want)
		}
	}
	checkVersions(t, evs)
	// allConnections is for disconnects only.
	if r := e.request(hb, map[string]any{"userId": "kicked", "allConnections": true}); !strings.Contains(r.Error, "allConnections") {
		t.Fatalf("allConnections heartbeat: %+v", r)
	}
}

// TestGatewayLeaseLapseAtScale: a gateway with 100k connections stops
// renewing its lease. With three replicas, each user connected only there
// goes offline once (gateway_lost) within the lease plus a sweep, not a
// TTL; users with a connection on another gateway publish nothing.
func TestGatewayLeaseLapseAtScale(t *testing.T) {
	t.Parallel()
	const lease = 2 * time.Second
	e := newEnv(t, time.Minute)
	for range 3 {
		e.startReplica(func(_ *worker.Options, p *presence.Options) { p.GatewayLease = lease })
	}
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	// Both gateways renew every lease/4 until told to stop: gw-dies stops
	// once its users are online, gw-lives at the end.
	renew := func(gw string, stop <-chan struct{}) <-chan time.Time {
		e.lease(gw, "i-1")
		last := make(chan time.Time, 1)
		go func() {
			tk := time.NewTicker(lease / 4)
			defer tk.Stop()
			at := time.Now()
			for {
				select {
				case <-stop:
					last <- at
					return
				case <-tk.C:
					e.lease(gw, "i-1")
					at = time.Now()
				}
			}
		}()
		return last
	}
	stopDies, stopLives := make(chan struct{}), make(chan struct{})
	diesLast := renew("gw-dies", stopDies)
	livesLast := renew("gw-lives", stopLives)
	t.Cleanup(func() { close(stopLives); <-livesLast })
	conns := make([]contract.Conn, n)
	for i := range conns {
		conns[i] = contract.Conn{UserID: fmt.Sprintf("u%d", i), ConnectionID: "c"}
	}
	e.connections(e.subjects.Heartbeat(), "gw-dies", conns)
	elsewhere := conns[:1000] // also connected on the gateway that lives
	e.connections(e.subjects.Heartbeat(), "gw-lives", elsewhere)
	e.online.WaitFor(t, n, 60*time.Second)
	close(stopDies)
	lastRenewal := <-diesLast
	e.offline.WaitFor(t, n-len(elsewhere), 60*time.Second)
	took := time.Since(lastRenewal)
	time.Sleep(time.Second) // a doubled offline would arrive meanwhile
	evs := e.received()
	got := byUser(evs)
	for i, c := range conns {
		want := []string{"online:heartbeat", "offline:gateway_lost"}
		if i < len(elsewhere) {
			want = want[:1]
		}
		if !slices.Equal(got[c.UserID], want) {
			t.Fatalf("%s: %v, want %v", c.UserID, got[c.UserID], want)
		}
	}
	t.Logf("%d users offline %v after the last renewal (lease %v)", n-len(elsewhere), took.Round(10*time.Millisecond), lease)
	if took > lease+30*time.Second {
		t.Fatalf("offlines took %v after the last renewal: a TTL, not the lease", took)
	}
	for _, id := range []string{"u0", "u999"} {
		if on, _ := e.rdb.Exists(context.Background(), e.prefix+"user:"+id).Result(); on != 1 {
			t.Fatalf("%s connected elsewhere lost its key", id)
		}
	}
}

// TestGatewayRestartAndGrace: a restarted gateway (new instance id) ends
// the old instance's connections; with an offline grace, users who
// reconnect within it (through the new instance) publish nothing, and the
// others go offline once after the grace. A page reload (disconnect, then
// a new connection) publishes nothing in either order.
func TestGatewayRestartAndGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute)
	for range 3 {
		e.startReplica(func(_ *worker.Options, p *presence.Options) { p.OfflineGrace = 1500 * time.Millisecond })
	}
	hb, dc := e.subjects.Heartbeat(), e.subjects.Disconnect()
	e.lease("gw", "old")
	e.connections(hb, "gw", []contract.Conn{{UserID: "back", ConnectionID: "1"}, {UserID: "gone", ConnectionID: "1"}, {UserID: "reload", ConnectionID: "1", Seq: 1}})
	e.waitEvents(3, 5*time.Second)
	// A page reload, disconnect first, then the reverse order.
	e.connections(dc, "", []contract.Conn{{UserID: "reload", ConnectionID: "1", Seq: 2}})
	e.connections(hb, "gw", []contract.Conn{{UserID: "reload", ConnectionID: "2", Seq: 1}})
	e.connections(hb, "gw", []contract.Conn{{UserID: "reload", ConnectionID: "3", Seq: 1}})
	e.connections(dc, "", []contract.Conn{{UserID: "reload", ConnectionID: "2", Seq: 2}})
	// The gateway restarts: "back" reconnects through the new instance.
	if r := e.lease("gw", "new"); !r.Replaced {
		t.Fatalf("restart lease: %+v", r)
	}
	// The old lease is swept: "back" is held (no live connection, session
	// open) before it reconnects.
	store := presence.NewStore(e.rdb, presence.Options{Prefix: e.prefix, TTL: e.ttl})
	testenv.Eventually(t, 5*time.Second, func() bool {
		st, err := store.Status(context.Background(), "back")
		return err == nil && !st.HeldUntil.IsZero()
	}, "the restarted gateway's old connections were not ended")
	e.connections(hb, "gw", []contract.Conn{{UserID: "back", ConnectionID: "2"}})
	// After the grace: the two offlines, and time for a third (there must
	// be none) to arrive.
	e.offline.WaitFor(t, 2, 10*time.Second)
	time.Sleep(time.Second)
	got := byUser(e.received())
	for user, want := range map[string][]string{
		"back":   {"online:heartbeat"},
		"gone":   {"online:heartbeat", "offline:gateway_lost"},
		"reload": {"online:heartbeat", "offline:gateway_lost"},
	} {
		if !slices.Equal(got[user], want) {
			t.Fatalf("%s: %v, want %v", user, got[user], want)
		}
	}
}

// TestConnectionsSurviveRedisRestart: connections, leases and held
// offlines are in Redis (AOF): after a restart the lease still lapses and
// every session ends once.
func TestConnectionsSurviveRedisRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Minute, testenv.WithAOF())
	for range 2 {
		e.startReplica(func(_ *worker.Options, p *presence.Options) { p.GatewayLease = 2 * time.Second })
	}
	e.lease("gw", "i")
	users := ids("r", 50)
	var conns []contract.Conn
	for _, u := range users {
		conns = append(conns, contract.Conn{UserID: u, ConnectionID: "a"}, contract.Conn{UserID: u, ConnectionID: "b"})
	}
	e.connections(e.subjects.Heartbeat(), "gw", conns)
	e.waitEvents(len(users), 5*time.Second)
	e.redis.Restart(t)
	e.offline.WaitFor(t, len(users), 30*time.Second)
	time.Sleep(time.Second)
	evs := e.received()
	for _, u := range users {
		if got := byUser(evs)[u]; !slices.Equal(got, []string{"online:heartbeat", "offline:gateway_lost"}) {
			t.Fatalf("%s: %v", u, got)
		}
	}
	checkVersions(t, evs)
}
