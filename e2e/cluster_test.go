//go:build linux

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

// cluster is a running scripts/local-cluster.
type cluster struct {
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has exited; then err is set
	err      error
	out      *testenv.Buffer // stdout and stderr
	natsURL  string
	replicas []string // http://127.0.0.1:port of presenced-1..3 (HTTP_ADDR)
	status   []string // their status pages (STATUS_ADDR)
}

var readyLine = regexp.MustCompile(`^\s+(\S+)\s+((?:redis|nats|http)://\S+)`)

// startCluster runs the script in its own process group and waits for its
// "ready" block. A cleanup kills the group if the test did not stop it.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found: install it with `apt-get install -y redis-server` (%v)", err)
	}
	script, err := filepath.Abs("../scripts/local-cluster")
	if err != nil {
		t.Fatal(err)
	}
	// --duration bounds the cluster even if this test dies without cleanup.
	cmd := exec.Command(script, "--duration", "5m", "--users", "50", "--interval", "1s", "--ttl", "5s")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The script's temporary directory goes in the test's, removed even if
	// the script is killed before its own cleanup.
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{cmd: cmd, exited: make(chan struct{}), out: &testenv.Buffer{}}
	cmd.Stderr = c.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", script, err)
	}
	urls := make(chan map[string]string, 1)
	go func() { // ends at EOF, when the script exits
		found := map[string]string{}
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			c.out.Write([]byte(line + "\n"))
			if m := readyLine.FindStringSubmatch(line); m != nil {
				found[m[1]] = m[2]
				if len(found) == 8 { // redis, nats, presenced-1..3, status-1..3
					urls <- found
				}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		c.err = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() { // the test failed before stopping the cluster
		select {
		case <-c.exited:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM) // the script stops its processes
		select {
		case <-c.exited:
		case <-time.After(30 * time.Second):
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // and whatever is left
		<-c.exited
	})
	select {
	case u := <-urls:
		c.natsURL = u["nats"]
		for i := 1; i <= 3; i++ {
			c.replicas = append(c.replicas, strings.TrimSuffix(u[fmt.Sprintf("presenced-%d", i)], "/"))
			c.status = append(c.status, strings.TrimSuffix(u[fmt.Sprintf("status-%d", i)], "/"))
		}
	case <-c.exited:
		t.Fatalf("local-cluster exited (%v) before it was ready:\n%s", c.err, c.out.String())
	case <-time.After(3 * time.Minute): // it builds three binaries first: slow on a cold build cache
		t.Fatalf("local-cluster not ready after 3m:\n%s", c.out.String())
	}
	return c
}

// groupPIDs lists the processes in process group pgid.
func groupPIDs(t *testing.T, pgid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 2 {
			if g, _ := strconv.Atoi(f[2]); g == pgid && f[0] != "Z" {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func get(url string) (int, string, error) {
	res, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res.StatusCode, string(body), err
}

func TestLocalCluster(t *testing.T) {
	c := startCluster(t)
	pgid := c.cmd.Process.Pid

	for _, r := range c.replicas {
		testenv.Eventually(t, 10*time.Second, func() bool {
			code, _, err := get(r + "/readyz")
			return err == nil && code == 200
		}, "%s/readyz is not 200", r)
	}
	// The status page (mounted by internal/app) is served on the status address,
	// not next to the metrics.
	if code, body, err := get(c.status[0] + "/"); err != nil || code != 200 || !strings.Contains(body, `id="online"`) {
		t.Fatalf("GET %s/: %d %v, want the status page", c.status[0], code, err)
	}
	if code, _, err := get(c.replicas[0] + "/"); err != nil || code != 404 {
		t.Fatalf("GET %s/ (HTTP_ADDR): %d %v, want 404", c.replicas[0], code, err)
	}
	if n := len(groupPIDs(t, pgid)); n < 6 { // script, redis, nats, 3 workers (+ gateway)
		t.Fatalf("%d processes in the cluster's group, want at least 6:\n%s", n, c.out.String())
	}

	nc, err := nats.Connect(c.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subjects := contract.Subjects{Prefix: "presence"}
	online := testenv.Collect(t, nc, subjects.Online())
	offline := testenv.Collect(t, nc, subjects.Offline())

	ids := []string{"e2e-1", "e2e-2", "e2e-3"}
	request := func(subject string) {
		t.Helper()
		data, _ := json.Marshal(map[string]any{"userIds": ids})
		msg, err := nc.Request(subject, data, 5*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		var reply contract.Reply
		if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Accepted != len(ids) {
			t.Fatalf("reply to %s: %s (%v)", subject, msg.Data, err)
		}
	}
	// seen waits for one event per id with the given status on col (the
	// gateway's users produce events too).
	seen := func(col *testenv.Collector, status string) {
		t.Helper()
		want := map[string]bool{}
		testenv.Eventually(t, 15*time.Second, func() bool {
			for _, m := range col.Msgs() {
				var ev contract.Event
				if json.Unmarshal(m.Data, &ev) == nil && string(ev.Status) == status && strings.HasPrefix(ev.UserID, "e2e-") {
					want[ev.UserID] = true
				}
			}
			return len(want) == len(ids)
		}, "%s events for %v: saw %v", status, ids, want)
	}
	request(subjects.Heartbeat())
	seen(online, "online")
	request(subjects.Disconnect())
	seen(offline, "offline")

	// Every replica exports its metrics; together they handled the heartbeats
	// (the queue group may have given one replica none).
	var accepted float64
	for _, r := range c.replicas {
		code, body, err := get(r + "/metrics")
		if err != nil || code != 200 {
			t.Fatalf("GET %s/metrics: %d %v", r, code, err)
		}
		for _, name := range []string{"presenced_online_users ", "presenced_redis_command_seconds_bucket", "presenced_reconnects_total"} {
			if !strings.Contains(body, name) {
				t.Fatalf("%s/metrics lacks %s", r, name)
			}
		}
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, `presenced_heartbeats_total{result="accepted"} `); ok {
				f, _ := strconv.ParseFloat(v, 64)
				accepted += f
			}
		}
	}
	if accepted < float64(len(ids)) {
		t.Fatalf("the replicas accepted %v heartbeat ids in all, want at least %d", accepted, len(ids))
	}

	// SIGTERM to the script alone: its trap stops every process it started.
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
		if c.err != nil {
			t.Fatalf("local-cluster exited with %v after SIGTERM:\n%s", c.err, c.out.String())
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("local-cluster still running 40s after SIGTERM:\n%s", c.out.String())
	}
	if left := groupPIDs(t, pgid); len(left) > 0 {
		t.Fatalf("processes left after local-cluster stopped: %v\n%s", left, c.out.String())
	}
	for _, r := range c.replicas {
		host := strings.TrimPrefix(r, "http://")
		if conn, err := net.DialTimeout("tcp", host, time.Second); err == nil {
			conn.Close()
			t.Fatalf("%s still accepts connections after the stop", host)
		}
	}
	if !strings.Contains(c.out.String(), "local-cluster: stopped") {
		t.Fatalf("no clean stop in the output:\n%s", c.out.String())
	}
}
