package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisClusterTimeout bounds how long StartRedisCluster waits for the
// cluster to be created and settled, Restart for a node to rejoin, and a
// Reshard's redis-cli to finish.
const RedisClusterTimeout = 30 * time.Second

// ClusterSlots is the number of hash slots of a Redis Cluster.
const ClusterSlots = 16384

// RedisCluster is a Redis Cluster of redis-server child processes (see
// Redis), each on 127.0.0.1 on a client port and a cluster bus port of its
// own, in a t.TempDir() of its own, created with redis-cli --cluster create.
// The nodes run with cluster-node-timeout 1000 ms (a replica takes over
// within a few seconds of its master's crash),
// cluster-replica-validity-factor 0 (a replica may always take over), no
// persistence, and the options given to StartRedisCluster (WithConfig
// overrides these defaults). Every node is killed when the test ends.
//
// A node's identity (its node id, in nodes.conf in its Dir) survives Kill
// and Restart; its data does not: a master restarted before a replica
// replaced it serves its slots again, empty.
//
// The methods are safe for concurrent use, but report failures with
// t.Fatalf and so belong on the test's goroutine. Failures quote the end of
// every node's log.
type RedisCluster struct {
	// Password is the password set by WithPassword, or "": every node's
	// requirepass and masterauth.
	Password string

	nodes []*Redis          // in the order given to redis-cli --cluster create
	ids   map[string]string // addr -> node id; fixed after StartRedisCluster
}

// StartRedisCluster starts masters*(1+replicasPerMaster) cluster-enabled
// redis-server processes, makes them a cluster (the first masters addresses
// in Addrs become the masters, the slots spread evenly over them, each
// master gets replicasPerMaster replicas) and returns once every node says
// cluster_state:ok, all agree on who serves each of the 16384 slots, and
// every replica's link to its master is up. It fails the test, never skips
// it, when redis-server or redis-cli is not installed. Redis needs at least
// 3 masters.
func StartRedisCluster(t testing.TB, masters, replicasPerMaster int, opts ...RedisOption) *RedisCluster {
	t.Helper()
	if masters < 3 || replicasPerMaster < 0 {
		t.Fatalf("StartRedisCluster(%d, %d): Redis Cluster needs at least 3 masters and no negative replicas", masters, replicasPerMaster)
		return nil
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redis-cli not found: install it with `apt-get install -y redis-tools` (%v)", err)
		return nil
	}
	var o redisOpts
	for _, opt := range opts {
		opt(&o)
	}
	c := &RedisCluster{Password: o.password, ids: map[string]string{}}
	nodeOpts := []RedisOption{
		withClusterBus(),
		WithConfig("cluster-node-timeout", "1000"),
		WithConfig("cluster-replica-validity-factor", "0"),
	}
	if o.password != "" {
		nodeOpts = append(nodeOpts, WithConfig("masterauth", o.password))
	}
	nodeOpts = append(nodeOpts, opts...)
	for range masters * (1 + replicasPerMaster) {
		c.nodes = append(c.nodes, StartRedis(t, nodeOpts...))
	}

	ctx, cancel := context.WithTimeout(context.Background(), RedisClusterTimeout)
	defer cancel()
	args := append(c.cliArgs(), "--cluster", "create")
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicasPerMaster), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s\n%s", err, out, c.logTails())
		return nil
	}
	for _, n := range c.nodes {
		var id string
		err := c.withNode(n.Addr, func(ctx context.Context, rc *redis.Client) (err error) {
			id, err = rc.Do(ctx, "CLUSTER", "MYID").Text()
			return err
		})
		if err != nil {
			t.Fatalf("CLUSTER MYID on %s: %v", n.Addr, err)
		}
		c.ids[n.Addr] = id
	}
	c.waitSettled(t, RedisClusterTimeout, "the new cluster", "")
	return c
}

// Addrs returns every node's address, 127.0.0.1:<port>, running or not, in
// the order the cluster was created with.
func (c *RedisCluster) Addrs() []string {
	a := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		a[i] = n.Addr
	}
	return a
}

// Node returns the node listening on addr (its Dir holds redis.log and
// nodes.conf), failing the test for an unknown address.
func (c *RedisCluster) Node(t testing.TB, addr string) *Redis {
	t.Helper()
	for _, n := range c.nodes {
		if n.Addr == addr {
			return n
		}
	}
	t.Fatalf("no cluster node at %s (nodes: %v)", addr, c.Addrs())
	return nil
}

// NodeID returns the cluster node id of the node at addr; it does not
// change across Kill and Restart.
func (c *RedisCluster) NodeID(t testing.TB, addr string) string {
	t.Helper()
	c.Node(t, addr)
	return c.ids[addr]
}

// Masters returns the addresses of the running nodes that the cluster
// (the first running node that answers CLUSTER NODES) knows as masters not
// failed, sorted. Call it after StartRedisCluster, WaitFailover, Restart or
// Reshard's Wait for a settled answer: during a failover the nodes' views
// differ.
func (c *RedisCluster) Masters(t testing.TB) []string {
	t.Helper()
	var lastErr error
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		view, err := c.view(n.Addr)
		if err != nil {
			lastErr = err
			continue
		}
		var m []string
		for _, v := range view.nodes {
			if o := c.byAddr(v.addr); o != nil && o.running() && v.master && !v.failed {
				m = append(m, v.addr)
			}
		}
		slices.Sort(m)
		return m
	}
	t.Fatalf("no cluster node answers CLUSTER NODES (last: %v)\n%s", lastErr, c.logTails())
	return nil
}

// Slots returns how many slots the node at addr serves, in the view of the
// node itself; 0 for a replica.
func (c *RedisCluster) Slots(t testing.TB, addr string) int {
	t.Helper()
	view, err := c.view(addr)
	if err != nil {
		t.Fatalf("CLUSTER NODES on %s: %v", addr, err)
	}
	n := 0
	for _, owner := range view.slots {
		if owner == addr {
			n++
		}
	}
	return n
}

// ClientStateReloadInterval is the ClusterStateReloadInterval of Client's
// clients. go-redis (v9.23) follows MOVED and ASK at once, but does not
// reload its slot map when a master stops answering: until the interval
// (default 60 s) has passed, it sends that master's slots to the dead node
// even after a replica took them over (redis/go-redis#3979).
const ClientStateReloadInterval = 500 * time.Millisecond

// Client returns a new go-redis cluster client seeded with every node's
// address (and the password), closed when the test ends. It follows MOVED
// and ASK redirects, and finds a failed-over master's replacement within
// about ClientStateReloadInterval of the cluster settling.
func (c *RedisCluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: c.Addrs(), Password: c.Password,
		ClusterStateReloadInterval: ClientStateReloadInterval,
	})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Kill kills the node at addr with SIGKILL, like a crash, and waits for it
// to exit. The other nodes notice after cluster-node-timeout; a killed
// master's replica then takes over its slots (WaitFailover waits for that).
func (c *RedisCluster) Kill(t testing.TB, addr string) {
	t.Helper()
	c.Node(t, addr).Stop(t)
}

// Restart starts the killed node at addr again on the same ports and
// directory, with its node id, and waits until it has rejoined: the whole
// cluster settled as StartRedisCluster leaves it. A master that a replica
// replaced comes back as that replica's replica, with its data resynced
// from it.
func (c *RedisCluster) Restart(t testing.TB, addr string) {
	t.Helper()
	c.Node(t, addr).Start(t)
	c.waitSettled(t, RedisClusterTimeout, "the cluster after restarting "+addr, "")
}

// WaitFailover waits, up to timeout, until killedAddr serves no slot and
// the cluster is settled again without it: every running node says
// cluster_state:ok, they agree that each of the 16384 slots is served by a
// running master, no slot is migrating, and every running replica's link
// to its master is up. Call it after Kill of a master (or of a replica:
// then it waits for nothing but a settled cluster).
func (c *RedisCluster) WaitFailover(t testing.TB, killedAddr string, timeout time.Duration) {
	t.Helper()
	c.Node(t, killedAddr)
	c.waitSettled(t, timeout, "failover from "+killedAddr, killedAddr)
}

// Reshard moves slots slots from the master at fromAddr to the master at
// toAddr, with their keys, and returns once they are moved and the cluster
// settled (StartReshard followed by Wait).
func (c *RedisCluster) Reshard(t testing.TB, fromAddr, toAddr string, slots int) {
	t.Helper()
	c.StartReshard(t, fromAddr, toAddr, slots).Wait(t)
}

// Resharding is a redis-cli --cluster reshard running in the background.
type Resharding struct {
	c    *RedisCluster
	desc string
	out  *Buffer
	done chan struct{}
	err  error // set before done is closed
}

// StartReshard waits until the cluster is settled (redis-cli refuses to
// reshard a cluster whose nodes disagree), then starts
//
//	redis-cli --cluster reshard <toAddr> --cluster-from <fromID> --cluster-to <toID> --cluster-slots <slots> --cluster-yes
//
// and returns without waiting for it: traffic may flow meanwhile (a client
// then sees ASK and MOVED redirects, and TRYAGAIN for multi-key commands
// whose keys are split by the move). Done is closed when redis-cli exits;
// Wait checks that it succeeded. The process is killed when the test ends
// if it is still running.
func (c *RedisCluster) StartReshard(t testing.TB, fromAddr, toAddr string, slots int) *Resharding {
	t.Helper()
	from, to := c.NodeID(t, fromAddr), c.NodeID(t, toAddr)
	c.waitSettled(t, RedisClusterTimeout, "the cluster before resharding", "")
	args := append(c.cliArgs(), "--cluster", "reshard", toAddr,
		"--cluster-from", from, "--cluster-to", to,
		"--cluster-slots", strconv.Itoa(slots), "--cluster-yes")
	rs := &Resharding{
		c:    c,
		desc: fmt.Sprintf("reshard %d slots from %s to %s", slots, fromAddr, toAddr),
		out:  &Buffer{},
		done: make(chan struct{}),
	}
	cmd := exec.Command("redis-cli", args...)
	cmd.Stdout, cmd.Stderr = rs.out, rs.out
	detach(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", rs.desc, err)
		return nil
	}
	go func() {
		rs.err = cmd.Wait()
		close(rs.done)
	}()
	t.Cleanup(func() {
		select {
		case <-rs.done:
		default:
			_ = killGroup(cmd)
			<-rs.done
		}
	})
	return rs
}

// Done is closed when redis-cli has exited.
func (rs *Resharding) Done() <-chan struct{} { return rs.done }

// Wait waits for redis-cli to exit, up to RedisClusterTimeout, fails the
// test with its output unless it succeeded, and then waits until the
// cluster is settled (every node agreeing on the new owners).
func (rs *Resharding) Wait(t testing.TB) {
	t.Helper()
	select {
	case <-rs.done:
	case <-time.After(RedisClusterTimeout):
		t.Fatalf("%s: redis-cli still running after %s:\n%s\n%s", rs.desc, RedisClusterTimeout, rs.out.String(), rs.c.logTails())
		return
	}
	// redis-cli prints [ERR] lines for failures it does not always exit
	// non-zero for.
	if rs.err != nil || strings.Contains(rs.out.String(), "[ERR]") {
		t.Fatalf("%s: redis-cli: %v\n%s\n%s", rs.desc, rs.err, rs.out.String(), rs.c.logTails())
		return
	}
	rs.c.waitSettled(t, RedisClusterTimeout, "the cluster after "+rs.desc, "")
}

func (c *RedisCluster) cliArgs() []string {
	if c.Password == "" {
		return nil
	}
	return []string{"-a", c.Password, "--no-auth-warning"}
}

// withNode runs f with a client of the node at addr alone, with short
// timeouts and no retries, closed afterwards.
func (c *RedisCluster) withNode(addr string, f func(context.Context, *redis.Client) error) error {
	rc := redis.NewClient(&redis.Options{
		Addr: addr, Password: c.Password, MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		PoolSize: 1,
	})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return f(ctx, rc)
}

// clusterView is what one node says about the cluster.
type clusterView struct {
	nodes     []viewNode
	slots     [ClusterSlots]string // slot -> owner's address; "" unassigned
	migrating bool                 // a slot of this node is importing or migrating
	state     string               // cluster_state
	assigned  int                  // cluster_slots_assigned
	linkDown  string               // "" unless the node is a replica whose master_link_status is not up
}

type viewNode struct {
	id, addr       string
	master, failed bool // failed: fail or pfail
	self           bool
}

// view asks the node at addr for CLUSTER NODES, CLUSTER INFO and INFO
// replication.
func (c *RedisCluster) view(addr string) (*clusterView, error) {
	v := &clusterView{}
	err := c.withNode(addr, func(ctx context.Context, rc *redis.Client) error {
		nodes, err := rc.ClusterNodes(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER NODES: %w", err)
		}
		if err := v.parseNodes(nodes); err != nil {
			return err
		}
		info, err := rc.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER INFO: %w", err)
		}
		fields := infoFields(info)
		v.state = fields["cluster_state"]
		v.assigned, _ = strconv.Atoi(fields["cluster_slots_assigned"])
		repl, err := rc.Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("INFO replication: %w", err)
		}
		fields = infoFields(repl)
		if fields["role"] == "slave" && fields["master_link_status"] != "up" {
			v.linkDown = fmt.Sprintf("master_link_status:%s (master %s:%s)", fields["master_link_status"], fields["master_host"], fields["master_port"])
		}
		return nil
	})
	return v, err
}

// parseNodes reads CLUSTER NODES: one line a node,
//
//	<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent> <pong-recv> <config-epoch> <link-state> <slot>...
//
// where a slot is N, N-M, or [N->-id] / [N-<-id] (migrating, importing).
func (v *clusterView) parseNodes(s string) error {
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return fmt.Errorf("CLUSTER NODES line %q", line)
		}
		addr, _, _ := strings.Cut(f[1], "@")
		flags := strings.Split(f[2], ",")
		n := viewNode{
			id: f[0], addr: addr,
			master: slices.Contains(flags, "master"),
			failed: slices.Contains(flags, "fail") || slices.Contains(flags, "fail?"),
			self:   slices.Contains(flags, "myself"),
		}
		v.nodes = append(v.nodes, n)
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				if n.self {
					v.migrating = true
				}
				continue
			}
			lo, hi, isRange := strings.Cut(r, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				return fmt.Errorf("CLUSTER NODES slot %q in %q", r, line)
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(hi); err != nil {
					return fmt.Errorf("CLUSTER NODES slot %q in %q", r, line)
				}
			}
			for s := a; s <= b && s < ClusterSlots; s++ {
				v.slots[s] = addr
			}
		}
	}
	return nil
}

func infoFields(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m
}

// settled returns "" when the running nodes agree on a healthy cluster in
// which gone serves no slot, and otherwise what is not so yet.
func (c *RedisCluster) settled(gone string) string {
	var first *clusterView
	var firstAddr string
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		v, err := c.view(n.Addr)
		switch {
		case err != nil:
			return fmt.Sprintf("%s: %v", n.Addr, err)
		case v.state != "ok":
			return fmt.Sprintf("%s: cluster_state:%s", n.Addr, v.state)
		case v.assigned != ClusterSlots:
			return fmt.Sprintf("%s: cluster_slots_assigned:%d", n.Addr, v.assigned)
		case v.migrating:
			return fmt.Sprintf("%s: has slots importing or migrating", n.Addr)
		case v.linkDown != "":
			return fmt.Sprintf("%s: %s", n.Addr, v.linkDown)
		}
		for s, owner := range v.slots {
			if owner == "" || owner == gone {
				return fmt.Sprintf("%s says slot %d is served by %q", n.Addr, s, owner)
			}
		}
		for _, vn := range v.nodes {
			if !vn.master || !slices.Contains(v.slots[:], vn.addr) {
				continue
			}
			if vn.failed {
				return fmt.Sprintf("%s says master %s, which serves slots, is failing", n.Addr, vn.addr)
			}
			if o := c.byAddr(vn.addr); o == nil || !o.running() {
				return fmt.Sprintf("%s says %s serves slots, but it is not running", n.Addr, vn.addr)
			}
		}
		if first == nil {
			first, firstAddr = v, n.Addr
			continue
		}
		if v.slots != first.slots {
			for s := range v.slots {
				if v.slots[s] != first.slots[s] {
					return fmt.Sprintf("%s says slot %d is served by %s, %s says by %s", n.Addr, s, v.slots[s], firstAddr, first.slots[s])
				}
			}
		}
	}
	if first == nil {
		return "no node is running"
	}
	return ""
}

func (c *RedisCluster) byAddr(addr string) *Redis {
	for _, n := range c.nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// waitSettled polls settled(gone) every 50 ms until it holds, failing the
// test after timeout with what was missing and the nodes' logs.
func (c *RedisCluster) waitSettled(t testing.TB, timeout time.Duration, what, gone string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := c.settled(gone)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not settled after %s: %s\n%s", what, timeout, why, c.logTails())
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logTails returns the end of every node's log, for failure messages.
func (c *RedisCluster) logTails() string {
	var b strings.Builder
	for _, n := range c.nodes {
		state := "running"
		if !n.running() {
			state = "stopped"
		}
		tail := readFrom(filepath.Join(n.Dir, "redis.log"), 0)
		const max = 1500
		if len(tail) > max {
			tail = tail[len(tail)-max:]
		}
		fmt.Fprintf(&b, "----- %s (%s, id %.8s) redis.log:\n%s\n", n.Addr, state, c.ids[n.Addr], tail)
	}
	return b.String()
}
