package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testenv"
)

// TestReplicaKilledBetweenClaimAndPublish: a replica claims an offline (the
// event is in the outbox) and is SIGKILLed before publishing it; another
// replica republishes it. The kill point is a test hook, not timing luck.
func TestReplicaKilledBetweenClaimAndPublish(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t)
	nc := n.Conn(t)
	p := testenv.Prefix(t)
	online := testenv.Collect(t, nc, p+".online")
	offline := testenv.Collect(t, nc, p+".offline")
	start := func(env ...string) (*exec.Cmd, *syncBuffer) {
		return startFaultReplica(t, r, n, p, env...)
	}
	a, aLogs := start("PRESENCED_TEST_KILL_AFTER_OUTBOX_READ=offline")
	exited := make(chan error, 1)
	go func() { exited <- a.Wait() }()
	testenv.Eventually(t, 15*time.Second, func() bool { return contains(aLogs, "worker started") }, "replica A did not start")
	if _, err := nc.Request(p+".heartbeat", []byte(`{"userId":"victim"}`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	online.WaitFor(t, 1, 5*time.Second)
	// A claims the expiry, reads the offline from the outbox, and dies.
	waitKilled(t, exited, aLogs)
	if offline.Len() != 0 {
		t.Fatal("offline published before the crash; the hook fired too late to test anything")
	}
	// B reclaims the entry A left pending and publishes it, once.
	start()
	msgs := offline.WaitFor(t, 1, 20*time.Second)
	if ev := decodeEvent(t, msgs[0].Data); ev.UserID != "victim" || ev.Reason != "expired" {
		t.Fatalf("offline %s", msgs[0].Data)
	}
	if got := msgs[0].Header.Get("Nats-Msg-Id"); got == "" {
		t.Fatal("republished event has no Nats-Msg-Id")
	}
	if _, err := nc.Request(p+".heartbeat", []byte(`{"userId":"witness"}`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	online.WaitFor(t, 2, 5*time.Second)
	// Nothing is left to republish: every outbox entry is acknowledged.
	rdb := r.Client(t)
	testenv.Eventually(t, 10*time.Second, func() bool {
		pe := rdb.XPending(context.Background(), p+":outbox", "presenced").Val()
		return pe != nil && pe.Count == 0
	}, "outbox entries still pending")
	if n := offline.Len(); n != 1 {
		t.Fatalf("%d offline events for one session", n)
	}
}

// TestReplicaKilledBetweenLapseAndPublish: the same for a gateway's lost
// lease: a replica ends the lease's connections (the offlines, reason
// gateway_lost, are in the outbox) and is SIGKILLed before publishing them;
// another replica publishes each exactly once.
func TestReplicaKilledBetweenLapseAndPublish(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t)
	nc := n.Conn(t)
	p := testenv.Prefix(t)
	online := testenv.Collect(t, nc, p+".online")
	offline := testenv.Collect(t, nc, p+".offline")
	a, aLogs := startFaultReplica(t, r, n, p, "PRESENCED_TEST_KILL_AFTER_OUTBOX_READ=offline", "PRESENCE_GATEWAY_LEASE=1s", "PRESENCE_TTL=1m")
	exited := make(chan error, 1)
	go func() { exited <- a.Wait() }()
	testenv.Eventually(t, 15*time.Second, func() bool { return contains(aLogs, "worker started") }, "replica A did not start")
	if _, err := nc.Request(p+".gateway.heartbeat", []byte(`{"gatewayId":"gw","instanceId":"i"}`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	const users = 20
	var conns []string
	for i := range users {
		conns = append(conns, fmt.Sprintf(`{"userId":"u%d","connectionId":"c"}`, i))
	}
	if _, err := nc.Request(p+".heartbeat", []byte(`{"gatewayId":"gw","connections":[`+strings.Join(conns, ",")+`]}`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	online.WaitFor(t, users, 5*time.Second)
	// The lease lapses; A ends the connections, reads the offlines and dies.
	waitKilled(t, exited, aLogs)
	if offline.Len() != 0 {
		t.Fatal("offline published before the crash; the hook fired too late to test anything")
	}
	startFaultReplica(t, r, n, p, "PRESENCE_GATEWAY_LEASE=1s", "PRESENCE_TTL=1m")
	msgs := offline.WaitFor(t, users, 20*time.Second)
	time.Sleep(2 * time.Second) // a doubled offline would arrive meanwhile
	if got := offline.Len(); got != users {
		t.Fatalf("%d offline events for %d sessions", got, users)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		ev := decodeEvent(t, m.Data)
		if ev.Reason != "gateway_lost" || seen[ev.UserID] {
			t.Fatalf("offline %s (seen before: %v)", m.Data, seen[ev.UserID])
		}
		seen[ev.UserID] = true
	}
}

// startFaultReplica starts the fault-hook build of presenced on r and n
// under prefix p, with a short TTL, claim time and sweep period (env can
// override them); it is killed at the end of the test.
func startFaultReplica(t *testing.T, r *testenv.Redis, n *testenv.NATS, p string, env ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(faultBinary(t), "--http-addr", "off", "--subject-prefix", p, "--key-prefix", p+":",
		"--outbox-claim-after", "1s", "--reconcile-interval", "50ms")
	cmd.Env = append(append(os.Environ(), "NATS_URL="+n.URL(), "REDIS_URL="+r.URL(), "PRESENCE_TTL=500ms"), env...)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	return cmd, logs
}

// waitKilled waits for the replica whose Wait result arrives on exited to
// be SIGKILLed by its fault hook.
func waitKilled(t *testing.T, exited <-chan error, logs *syncBuffer) {
	t.Helper()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("replica ended with %v, want SIGKILL:\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("replica was not killed by the hook:\n%s", logs.String())
	}
}

type eventFields struct {
	UserID, Status, Reason string
	Version                int64
}

func decodeEvent(t *testing.T, data []byte) eventFields {
	t.Helper()
	var ev eventFields
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatalf("event %s: %v", data, err)
	}
	return ev
}

func contains(b *syncBuffer, s string) bool { return strings.Contains(b.String(), s) }
