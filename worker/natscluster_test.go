package worker_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

// TestNATSClusterServerRestartLosesNoEvent: three nats-servers joined by
// routes; each presenced replica connects to a different one (it learns the
// others from the cluster), and gateways send heartbeats through all three.
// While users expire, the server of one replica and one gateway is shut
// down and later started again; users keep coming online through the
// servers that stay up and, afterwards, through the restarted one. A core
// subscriber connected throughout to a server that stays up receives every
// online and every offline exactly once, and users who kept heartbeating
// get no offline.
func TestNATSClusterServerRestartLosesNoEvent(t *testing.T) {
	const ttl = 2 * time.Second
	r := testenv.StartRedis(t)
	ns := testenv.StartNATSCluster(t, 3)
	p := testenv.Prefix(t)
	e := &env{t: t, redis: r, nats: ns[0], rdb: r.Client(t), nc: ns[0].Conn(t), prefix: p + ":", subjects: contract.Subjects{Prefix: p}, ttl: ttl}
	e.online = testenv.Collect(t, e.nc, e.subjects.Online())
	e.offline = testenv.Collect(t, e.nc, e.subjects.Offline())
	var reps []*replica
	for _, n := range ns {
		reps = append(reps, e.startReplicaVia(r.URL(), n.URL()))
	}
	gateways := []*nats.Conn{ns[0].Conn(t), ns[1].Conn(t), ns[2].Conn(t)}
	heartbeat := func(nc *nats.Conn, ids ...string) {
		t.Helper()
		data, err := json.Marshal(map[string]any{"userIds": ids})
		if err != nil {
			t.Fatal(err)
		}
		// A request through a server that is shutting down may go
		// unanswered: the gateway sends it again, as a real one would.
		testenv.Eventually(t, 10*time.Second, func() bool {
			msg, err := nc.Request(e.subjects.Heartbeat(), data, time.Second)
			var reply contract.Reply
			return err == nil && json.Unmarshal(msg.Data, &reply) == nil && reply.Error == "" && reply.Accepted == len(ids)
		}, "heartbeat of %d users through %s not stored", len(ids), nc.ConnectedUrlRedacted())
	}

	keepers := ids("keep", 20)
	e.keepAlive(300*time.Millisecond, keepers...)
	var users []string
	wave := func(name string, via ...*nats.Conn) {
		for i, nc := range via {
			batch := ids(fmt.Sprintf("%s%d", name, i), 20)
			users = append(users, batch...)
			heartbeat(nc, batch...)
		}
	}
	wave("a", gateways...)
	e.online.WaitFor(t, len(keepers)+len(users), 10*time.Second)

	// The second server goes while the first wave's sessions run out; its
	// replica and gateway reconnect to the others.
	ns[1].Stop(t)
	wave("b", gateways[0], gateways[2])
	testenv.Eventually(t, 10*time.Second, func() bool { return reps[1].bus.Connected() && gateways[1].IsConnected() },
		"replica or gateway of the stopped server did not reconnect to another")
	wave("c", gateways[1])
	testenv.Eventually(t, 10*time.Second, func() bool { return e.offline.Len() >= 60 }, "first wave not offline while the server is down: %d offline", e.offline.Len())

	ns[1].Start(t)
	ns[1].WaitRoutes(t, 2)
	wave("d", ns[1].Conn(t), gateways[2])

	e.online.WaitFor(t, len(keepers)+len(users), 15*time.Second)
	e.offline.WaitFor(t, len(users), 15*time.Second)
	// A doubled event would arrive within a claim time (2s in the harness).
	quiet := time.Now().Add(3 * time.Second)
	testenv.Eventually(t, 10*time.Second, func() bool { return time.Now().After(quiet) }, "")

	evs := e.received()
	counts := map[string]int{}
	for _, ev := range evs {
		counts[ev.UserID+":"+string(ev.Status)]++
	}
	for _, id := range users {
		if counts[id+":online"] != 1 || counts[id+":offline"] != 1 {
			t.Fatalf("user %s: %d online, %d offline events, want one each", id, counts[id+":online"], counts[id+":offline"])
		}
	}
	for _, id := range keepers {
		if counts[id+":online"] != 1 || counts[id+":offline"] != 0 {
			t.Fatalf("user %s kept heartbeating: %d online, %d offline events", id, counts[id+":online"], counts[id+":offline"])
		}
	}
	if want := 2*len(users) + len(keepers); len(evs) != want {
		t.Fatalf("%d events, want %d", len(evs), want)
	}
	checkVersions(t, evs)
	if reps[1].bus.Reconnects() < 1 {
		t.Fatal("the replica on the stopped server never reconnected")
	}
}
