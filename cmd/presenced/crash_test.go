package main

import (
	"context"
	"encoding/json"
	"errors"
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
		cmd := exec.Command(faultBinary(t), "--http-addr", "off", "--subject-prefix", p, "--key-prefix", p+":",
			"--ttl", "500ms", "--outbox-claim-after", "1s", "--reconcile-interval", "50ms")
		cmd.Env = append(append(os.Environ(), "NATS_URL="+n.URL(), "REDIS_URL="+r.URL()), env...)
		logs := &syncBuffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		return cmd, logs
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
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("replica A ended with %v, want SIGKILL:\n%s", err, aLogs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("replica A was not killed by the hook:\n%s", aLogs.String())
	}
	if offline.Len() != 0 {
		t.Fatal("offline published before the crash; the hook fired too late to test anything")
	}
	// B reclaims the entry A left pending and publishes it, once.
	start()
	msgs := offline.WaitFor(t, 1, 20*time.Second)
	var ev struct {
		UserID, Status, Reason string
		Version                int64
	}
	if err := json.Unmarshal(msgs[0].Data, &ev); err != nil || ev.UserID != "victim" || ev.Reason != "expired" {
		t.Fatalf("offline %s: %v", msgs[0].Data, err)
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

func contains(b *syncBuffer, s string) bool { return strings.Contains(b.String(), s) }
