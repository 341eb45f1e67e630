//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

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
	urls     map[string]string
	ready    string // the whole ready block and the lines after it
}

var readyLine = regexp.MustCompile(`^\s+(\S+)\s+((?:redis|nats|http)://\S+|\S+:\d+(?:,\S+:\d+)*)`)

// startCluster runs the script with args in its own process group and
// waits for its "ready" block. A cleanup kills the group if the test did
// not stop it.
func startCluster(t *testing.T, args ...string) *cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found: install it with `apt-get install -y redis-server` (%v)", err)
	}
	script, err := filepath.Abs("../scripts/local-cluster")
	if err != nil {
		t.Fatal(err)
	}
	// --duration bounds the cluster even if this test dies without cleanup.
	cmd := exec.Command(script, append([]string{"--duration", "5m", "--users", "50", "--interval", "1s", "--ttl", "5s"}, args...)...)
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
		var block strings.Builder
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			c.out.Write([]byte(line + "\n"))
			block.WriteString(line + "\n")
			if m := readyLine.FindStringSubmatch(line); m != nil {
				found[m[1]] = m[2]
			}
			if strings.HasPrefix(line, "presenced-N serves") { // the block's last line
				found[""] = block.String()
				urls <- found
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
		c.urls, c.ready = u, u[""]
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

	nc, subjects, online, offline := c.events(t)

	ids := []string{"e2e-1", "e2e-2", "e2e-3"}
	request(t, nc, subjects.Heartbeat(), ids)
	seen(t, online, "online", ids)
	request(t, nc, subjects.Disconnect(), ids)
	seen(t, offline, "offline", ids)

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

	c.stop(t)
}

// events connects to the cluster's NATS and collects its online and
// offline events.
func (c *cluster) events(t *testing.T) (*nats.Conn, contract.Subjects, *testenv.Collector, *testenv.Collector) {
	t.Helper()
	nc, err := nats.Connect(c.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	subjects := contract.Subjects{Prefix: "presence"}
	return nc, subjects, testenv.Collect(t, nc, subjects.Online()), testenv.Collect(t, nc, subjects.Offline())
}

// request sends a heartbeat or disconnect of ids and checks the reply.
func request(t *testing.T, nc *nats.Conn, subject string, ids []string) {
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
func seen(t *testing.T, col *testenv.Collector, status string, ids []string) {
	t.Helper()
	want := map[string]bool{}
	testenv.Eventually(t, 15*time.Second, func() bool {
		for _, m := range col.Msgs() {
			var ev contract.Event
			if json.Unmarshal(m.Data, &ev) == nil && string(ev.Status) == status && slices.Contains(ids, ev.UserID) {
				want[ev.UserID] = true
			}
		}
		return len(want) == len(ids)
	}, "%s events for %v: saw %v", status, ids, want)
}

// TestLocalClusterSentinel: with --redis sentinel the script starts a
// master, a replica and three sentinels, the workers follow the master
// through them, and the ready block says how to fail over by hand. Doing
// so (the old master stays up): the workers stay ready, their expiry
// subscriptions move to the new master, and users expiring there go
// offline.
func TestLocalClusterSentinel(t *testing.T) {
	c := startCluster(t, "--redis", "sentinel", "--ttl", "3s")
	for _, name := range []string{"redis", "replica", "sentinels"} {
		if c.urls[name] == "" {
			t.Fatalf("no %s line in the ready block:\n%s", name, c.ready)
		}
	}
	if !strings.Contains(c.ready, "SENTINEL FAILOVER presenced") {
		t.Fatalf("the ready block does not say how to fail over:\n%s", c.ready)
	}
	sentinels := strings.Split(c.urls["sentinels"], ",")
	if len(sentinels) != 3 {
		t.Fatalf("sentinels %v, want 3", sentinels)
	}
	client := func(url string) *redis.Client {
		o, err := redis.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		rc := redis.NewClient(o)
		t.Cleanup(func() { _ = rc.Close() })
		return rc
	}
	master, replica := client(c.urls["redis"]), client(c.urls["replica"])
	ctx := context.Background()
	subs := func(rc *redis.Client) int {
		n := 0
		for _, line := range strings.Split(rc.ClientList(ctx).Val(), "\n") {
			if strings.Contains(line, "name=presenced-expiry") && strings.Contains(line, " psub=1 ") {
				n++
			}
		}
		return n
	}
	ready := func() bool {
		for _, r := range c.replicas {
			if code, _, err := get(r + "/readyz"); err != nil || code != 200 {
				return false
			}
		}
		return true
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return ready() && subs(master) == 3 },
		"not ready, or %d expiry subscriptions on the master, want 3", subs(master))

	nc, subjects, online, offline := c.events(t)
	request(t, nc, subjects.Heartbeat(), []string{"e2e-s-1", "e2e-s-2"})
	seen(t, online, "online", []string{"e2e-s-1", "e2e-s-2"})

	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinels[0]})
	defer sc.Close()
	testenv.Eventually(t, 10*time.Second, func() bool { return sc.Failover(ctx, "presenced").Err() == nil },
		"SENTINEL FAILOVER refused")
	replicaAddr := replica.Options().Addr
	testenv.Eventually(t, 10*time.Second, func() bool {
		a, err := sc.GetMasterAddrByName(ctx, "presenced").Result()
		return err == nil && len(a) == 2 && net.JoinHostPort(a[0], a[1]) == replicaAddr
	}, "the sentinels do not name the replica %s the master", replicaAddr)
	testenv.Eventually(t, 15*time.Second, func() bool { return ready() && subs(replica) == 3 && subs(master) == 0 },
		"after the failover: ready %v, expiry subscriptions %d on the new master and %d on the old, want 3 and 0", ready(), subs(replica), subs(master))

	// Sessions before and after the failover lapse on the new master.
	ids := []string{"e2e-f-1", "e2e-f-2"}
	request(t, nc, subjects.Heartbeat(), ids)
	seen(t, online, "online", ids)
	seen(t, offline, "offline", append(ids, "e2e-s-1", "e2e-s-2"))
	c.stop(t)
}

// stop sends SIGTERM to the script alone and checks that its trap stopped
// every process it started, the workers' ports closed, and that it said so.
func (c *cluster) stop(t *testing.T) {
	t.Helper()
	pgid := c.cmd.Process.Pid
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

// TestLocalClusterRedisCluster: with --redis cluster the script starts a
// Redis Cluster of three masters and three replicas and the workers use it
// through REDIS_CLUSTER_ADDRS. Users come online once each, their presence
// is spread over the masters, and they go offline (expired) once each when
// their heartbeats stop. After a manual failover (a replica takes over its
// master's slots, the old master stays up as its replica) the workers stay
// ready and users who expire then go offline too, one version each.
func TestLocalClusterRedisCluster(t *testing.T) {
	c := startCluster(t, "--redis", "cluster", "--ttl", "3s")
	nodes := strings.Split(c.urls["redis-cluster"], ",")
	if len(nodes) != 6 {
		t.Fatalf("redis-cluster %q in the ready block, want 6 nodes:\n%s", c.urls["redis-cluster"], c.ready)
	}
	if !strings.Contains(c.ready, "CLUSTER FAILOVER") {
		t.Fatalf("the ready block does not say how to fail over:\n%s", c.ready)
	}
	ctx := context.Background()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: nodes, ClusterStateReloadInterval: time.Second})
	t.Cleanup(func() { _ = cc.Close() })
	ready := func() bool {
		for _, r := range c.replicas {
			if code, _, err := get(r + "/readyz"); err != nil || code != 200 {
				return false
			}
		}
		return true
	}
	testenv.Eventually(t, 10*time.Second, ready, "the workers are not all ready")

	nc, subjects, online, offline := c.events(t)

	// Enough users that each master holds some of them.
	ids := make([]string, 30)
	for i := range ids {
		ids[i] = fmt.Sprintf("e2e-c-%d", i)
	}
	request(t, nc, subjects.Heartbeat(), ids)
	seen(t, online, "online", ids)
	keys := map[string]int64{} // master -> keys
	var mu sync.Mutex          // ForEachMaster calls concurrently
	if err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		n, err := m.DBSize(ctx).Result()
		mu.Lock()
		keys[m.Options().Addr] = n
		mu.Unlock()
		return err
	}); err != nil {
		t.Fatalf("DBSIZE on the masters: %v", err)
	}
	withKeys := 0
	for _, n := range keys {
		if n > 0 {
			withKeys++
		}
	}
	if len(keys) != 3 || withKeys < 2 {
		t.Fatalf("keys per master %v: want 3 masters, at least 2 holding presence data", keys)
	}
	// No more heartbeats: they expire, and each goes offline once.
	seen(t, offline, "offline", ids)
	marker := []string{"e2e-c-marker"}
	request(t, nc, subjects.Heartbeat(), marker)
	seen(t, offline, "offline", marker) // a later sweep: late duplicates would be here by now
	onlyOnce(t, online, "online", contract.ReasonHeartbeat, ids)
	onlyOnce(t, offline, "offline", contract.ReasonExpired, ids)

	// Manual failover of one master: its replica takes over.
	var replica string
	for _, line := range strings.Split(cc.ClusterNodes(ctx).Val(), "\n") {
		if f := strings.Fields(line); len(f) > 2 && strings.Contains(f[2], "slave") && !strings.Contains(f[2], "fail") {
			replica, _, _ = strings.Cut(f[1], "@")
			break
		}
	}
	if replica == "" {
		t.Fatalf("no replica in CLUSTER NODES:\n%s", cc.ClusterNodes(ctx).Val())
	}
	rc := redis.NewClient(&redis.Options{Addr: replica})
	t.Cleanup(func() { _ = rc.Close() })
	if err := rc.Do(ctx, "CLUSTER", "FAILOVER").Err(); err != nil {
		t.Fatalf("CLUSTER FAILOVER on %s: %v", replica, err)
	}
	testenv.Eventually(t, 15*time.Second, func() bool {
		return strings.Contains(rc.Info(ctx, "replication").Val(), "role:master") &&
			strings.Contains(rc.ClusterInfo(ctx).Val(), "cluster_state:ok")
	}, "replica %s did not become a master", replica)
	testenv.Eventually(t, 15*time.Second, ready, "the workers are not all ready after the failover")

	after := make([]string, 30)
	for i := range after {
		after[i] = fmt.Sprintf("e2e-cf-%d", i)
	}
	request(t, nc, subjects.Heartbeat(), after)
	seen(t, online, "online", after)
	seen(t, offline, "offline", after)
	onlyOneVersion(t, offline, "offline", after)
	c.stop(t)
}

// onlyOnce fails unless col holds exactly one event with status for each
// of ids, with the given reason.
func onlyOnce(t *testing.T, col *testenv.Collector, status string, reason contract.Reason, ids []string) {
	t.Helper()
	n := map[string]int{}
	for _, m := range col.Msgs() {
		var ev contract.Event
		if json.Unmarshal(m.Data, &ev) == nil && string(ev.Status) == status && slices.Contains(ids, ev.UserID) {
			if ev.Reason != reason {
				t.Fatalf("%s event %s, want reason %s", status, m.Data, reason)
			}
			n[ev.UserID]++
		}
	}
	for _, id := range ids {
		if n[id] != 1 {
			t.Fatalf("%d %s events for %s, want 1 (all: %v)", n[id], status, id, n)
		}
	}
}

// onlyOneVersion fails unless the events with status for each of ids in
// col carry one version each (a consumer applies each transition once;
// core NATS may deliver a republished copy after a failover).
func onlyOneVersion(t *testing.T, col *testenv.Collector, status string, ids []string) {
	t.Helper()
	versions := map[string]map[int64]bool{}
	for _, m := range col.Msgs() {
		var ev contract.Event
		if json.Unmarshal(m.Data, &ev) == nil && string(ev.Status) == status && slices.Contains(ids, ev.UserID) {
			if versions[ev.UserID] == nil {
				versions[ev.UserID] = map[int64]bool{}
			}
			versions[ev.UserID][ev.Version] = true
		}
	}
	for _, id := range ids {
		if len(versions[id]) != 1 {
			t.Fatalf("%s events for %s with versions %v, want one", status, id, versions[id])
		}
	}
}
