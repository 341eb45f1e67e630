package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/testenv"
)

func TestValidateApp(t *testing.T) {
	cfg := config.Default()
	if err := fx.ValidateApp(App(cfg, NewLogger(cfg, &bytes.Buffer{}))); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidSettingsExit2(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{env: map[string]string{"PRESENCE_TTL": "soon"}, want: "PRESENCE_TTL"},
		{args: []string{"--max-batch", "0"}, want: "PRESENCE_MAX_BATCH"},
		{env: map[string]string{"REDIS_URL": "http://x"}, want: "REDIS_URL"},
		{args: []string{"bogus"}, want: "unknown command"},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		code := run(c.args, func(k string) string { return c.env[k] }, &out, &errOut)
		if code != 2 {
			t.Errorf("%v %v: exit %d, want 2", c.args, c.env, code)
		}
		lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
		if len(lines) != 1 || !strings.Contains(lines[0], c.want) {
			t.Errorf("%v %v: stderr %q, want one line naming %s", c.args, c.env, errOut.String(), c.want)
		}
	}
}

func TestHelpListsEverySetting(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, func(string) string { return "" }, &out, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, s := range config.Settings() {
		if !strings.Contains(out.String(), s.Env) || !strings.Contains(out.String(), "--"+s.Flag) {
			t.Errorf("--help lacks %s / --%s", s.Env, s.Flag)
		}
	}
	// Secrets in the environment never reach --help.
	out.Reset()
	run([]string{"--help"}, func(k string) string {
		if k == "REDIS_URL" {
			return "redis://:hunter2@127.0.0.1:6379/0"
		}
		return ""
	}, &out, &out)
	if strings.Contains(out.String(), "hunter2") {
		t.Fatal("--help shows a secret")
	}
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer = testenv.Buffer

func TestDemoPrintsOnlineAndOffline(t *testing.T) {
	var out, errOut syncBuffer
	code := run([]string{"demo", "--duration", "5s", "--users", "4", "--ttl", "500ms"}, func(string) string { return "" }, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut.String())
	}
	s := out.String()
	for _, want := range []string{"status page http://127.0.0.1:", "online  user-", "offline user-", "demo stopped:"} {
		if !strings.Contains(s, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, s)
		}
	}
}

// The demo's gateway gw-2 crashes: its users connected nowhere else go
// offline with reason gateway_lost, and it comes back as a new instance.
func TestDemoGatewayCrash(t *testing.T) {
	var out, errOut syncBuffer
	code := run([]string{"demo", "--duration", "8s", "--users", "16", "--ttl", "1s", "--crash-every", "2s"}, func(string) string { return "" }, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut.String())
	}
	s := out.String()
	for _, want := range []string{"gateway gw-2 crashed", "offline user-", "gateway_lost", "gateway gw-2 restarted", "demo stopped:"} {
		if !strings.Contains(s, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, s)
		}
	}
}

func binary(t *testing.T) string { return testenv.Presenced(t) }

// faultBinary is presenced built with -tags faultinject, for the tests that
// arm its PRESENCED_TEST_* hooks.
func faultBinary(t *testing.T) string { return testenv.PresencedWithFaults(t) }

// TestProductionBinaryHasNoFaultHooks: the binary as shipped reads no test
// variable and has no fault point; the fault suite's build has both (so the
// check can fail).
func TestProductionBinaryHasNoFaultHooks(t *testing.T) {
	for _, c := range []struct {
		bin  string
		want bool
	}{{binary(t), false}, {faultBinary(t), true}} {
		data, err := os.ReadFile(c.bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"PRESENCED_TEST_KILL_AFTER_OUTBOX_READ", "PRESENCED_TEST_STOP_AFTER_OUTBOX_READ", "worker.AfterOutboxRead"} {
			if got := bytes.Contains(data, []byte(s)); got != c.want {
				t.Errorf("%s contains %q: %v, want %v", c.bin, s, got, c.want)
			}
		}
	}
}

func TestSIGTERMDrainsAndExitsZero(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t)
	nc := n.Conn(t)
	p := testenv.Prefix(t)
	online := testenv.Collect(t, nc, p+".online")
	cmd := exec.Command(binary(t), "--http-addr", "127.0.0.1:0", "--subject-prefix", p, "--key-prefix", p+":")
	cmd.Env = append(os.Environ(), "NATS_URL="+n.URL(), "REDIS_URL="+r.URL(), "LOG_FORMAT=json")
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	testenv.Eventually(t, 15*time.Second, func() bool { return strings.Contains(logs.String(), "worker started") }, "worker did not start")
	msg, err := nc.Request(p+".heartbeat", []byte(`{"userId":"term-1"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply struct{ Accepted int }
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Accepted != 1 {
		t.Fatalf("reply %s, %v", msg.Data, err)
	}
	online.WaitFor(t, 1, 5*time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("did not exit after SIGTERM:\n%s", logs.String())
	}
	for _, want := range []string{`"msg":"shutting down"`, `"msg":"worker stopped"`, `"msg":"stopped"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

func TestFailsFastWhenRedisUnreachable(t *testing.T) {
	n := testenv.StartNATS(t)
	port := testenv.FreePort(t) // nothing listens there
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "--http-addr", "off", "--connect-timeout", "1s")
	cmd.Env = append(os.Environ(), "NATS_URL="+n.URL(), "REDIS_URL=redis://127.0.0.1:"+itoa(port)+"/0")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1:\n%s", err, out)
	}
	if !strings.Contains(string(out), "start-up failed") || !strings.Contains(string(out), "redis") {
		t.Fatalf("output does not say redis failed:\n%s", out)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
