package main

import (
	"context"
	"fmt"
	"math"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/localredis"
	"github.com/presenced/presenced/presence"
)

// The Redis Cluster topology (--redis-cluster): masters (and replicas)
// started here from the local redis-server and redis-cli, the workers on
// REDIS_CLUSTER_ADDRS, the bench's key reads through a ClusterClient and
// its per-server reads (INFO, MEMORY STATS, FLUSHALL) on every master.

// clusterScenarios are the scenarios that run on a Redis Cluster; the
// others read or write keys of the one-server layout (see clusterRefusal).
var clusterScenarios = []string{"throughput", "offline"}

// clusterRefusal says why scenario cannot run on a Redis Cluster, or "".
func clusterRefusal(scenario string) string {
	switch scenario {
	case "ceiling":
		return "ceiling runs redis-benchmark against one redis-server; on a cluster its keys would go to one node and be refused as MOVED"
	case "idle":
		return "idle breaks Redis memory per user down by the key groups of the one-server layout (SCAN and MEMORY USAGE on one server)"
	case "query":
		return "query runs the store's one-server queries on the bench's client when presenced's query service does not answer, and shares the idle scenario's users"
	case "storm":
		return "storm counts stored users with DBSIZE and the one-server count key, which a cluster splits over its partitions"
	case "gateways":
		return "gateways reads the lease and gateway keys of the one-server layout, which a cluster splits over its partitions"
	}
	if !slices.Contains(clusterScenarios, scenario) {
		return scenario + " is not measured on a cluster"
	}
	return ""
}

// startRedisCluster starts masters*(1+replicas) cluster-enabled
// redis-server processes on loopback (each with its cluster bus on a free
// port of its own), makes them a cluster with redis-cli --cluster create
// and waits until every node says cluster_state:ok with all 16384 slots
// served and every replica's link up. It returns the nodes, the masters'
// addresses sorted by port, and the bench's ClusterClient.
func startRedisCluster(ctx context.Context, masters, replicas int) (nodes []*localredis.Server, masterAddrs []string, rdb *redis.ClusterClient, err error) {
	defer func() {
		if err != nil {
			for _, n := range nodes {
				n.Stop()
			}
			nodes = nil
		}
	}()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		return nil, nil, nil, fmt.Errorf("redis-cli not found (--redis-cluster creates the cluster with it): install it with `apt-get install -y redis-tools` (%v)", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var addrs []string
	for range masters * (1 + replicas) {
		bus, err := freeAddr()
		if err != nil {
			return nodes, nil, nil, err
		}
		_, busPort, _ := strings.Cut(bus, ":")
		n, err := localredis.Start(ctx, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", busPort, "--cluster-node-timeout", "5000")
		if err != nil {
			return nodes, nil, nil, fmt.Errorf("cluster node: %w", err)
		}
		nodes = append(nodes, n)
		addrs = append(addrs, n.Addr)
	}
	progress("redis-cli --cluster create %s --cluster-replicas %d", strings.Join(addrs, " "), replicas)
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		return nodes, nil, nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, a := range addrs {
		if err := waitClusterNode(ctx, a); err != nil {
			return nodes, nil, nil, err
		}
	}
	rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, PoolSize: 16})
	var mu sync.Mutex
	err = rdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		mu.Lock()
		masterAddrs = append(masterAddrs, m.Options().Addr)
		mu.Unlock()
		return m.Ping(ctx).Err()
	})
	if err == nil && len(masterAddrs) != masters {
		err = fmt.Errorf("the cluster client sees %d masters (%v), want %d", len(masterAddrs), masterAddrs, masters)
	}
	if err != nil {
		_ = rdb.Close()
		return nodes, nil, nil, fmt.Errorf("redis cluster masters: %w", err)
	}
	slices.SortFunc(masterAddrs, func(a, b string) int { return strings.Compare(fmt.Sprintf("%20s", a), fmt.Sprintf("%20s", b)) })
	return nodes, masterAddrs, rdb, nil
}

// waitClusterNode waits until the node at addr says cluster_state:ok, all
// slots ok, and, if it is a replica, its master link is up.
func waitClusterNode(ctx context.Context, addr string) error {
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rc.Close()
	last := ""
	for {
		info, err := rc.ClusterInfo(ctx).Result()
		if err == nil {
			last = info
			if strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_slots_ok:16384") {
				repl, err := rc.Info(ctx, "replication").Result()
				if err == nil && (strings.Contains(repl, "role:master") || strings.Contains(repl, "master_link_status:up")) {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis cluster node %s not settled: %w (last CLUSTER INFO: %q)", addr, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// partitionPrefixes returns the key prefix of each of presenced's n
// partitions under prefix, partition p at index p.
func partitionPrefixes(prefix string, n int) []string {
	tags := presence.PartitionTags(n)
	out := make([]string, n)
	for i, t := range tags {
		out[i] = presence.PartitionPrefix(prefix, t)
	}
	return out
}

// masterSnap is one master's counters at one moment.
type masterSnap struct {
	cpu      float64 // used_cpu_user + used_cpu_sys, seconds
	commands int64   // total_commands_processed
	ok       bool
}

// masterUsage is one master's share of a phase: its CPU seconds (and %
// of one core over the phase), the commands it processed and its keys at
// the end. Partitions counts presenced's partitions whose slot it serves.
type masterUsage struct {
	Addr       string  `json:"addr"`
	Partitions int     `json:"partitions"`
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPct     float64 `json:"cpu_pct"`
	Commands   int64   `json:"commands"`
	Keys       int64   `json:"keys"`
}

// masterSnaps reads every master's INFO cpu and stats (-1 fields and ok
// false for a master that did not answer).
func (c *cluster) masterSnaps(ctx context.Context) []masterSnap {
	out := make([]masterSnap, len(c.masters))
	for i, m := range c.masters {
		info, err := parseInfo(m.Info(ctx, "cpu", "stats").Result())
		if err != nil {
			continue
		}
		u, err1 := strconv.ParseFloat(info["used_cpu_user"], 64)
		s, err2 := strconv.ParseFloat(info["used_cpu_sys"], 64)
		n, err3 := strconv.ParseInt(info["total_commands_processed"], 10, 64)
		if err1 == nil && err2 == nil && err3 == nil {
			out[i] = masterSnap{cpu: u + s, commands: n, ok: true}
		}
	}
	return out
}

// masterUsages returns each master's share of a phase of wall seconds
// between the snapshots before and after (-1 where a snapshot failed),
// with its key count now.
func (c *cluster) masterUsages(ctx context.Context, before, after []masterSnap, wall float64) []masterUsage {
	if len(c.masters) == 0 {
		return nil
	}
	slots := c.partitionSlots()
	out := make([]masterUsage, len(c.masters))
	for i, m := range c.masters {
		mu := masterUsage{Addr: m.Options().Addr, CPUSeconds: -1, CPUPct: -1, Commands: -1, Keys: -1}
		mu.Partitions = slots[mu.Addr]
		if before[i].ok && after[i].ok {
			mu.CPUSeconds = after[i].cpu - before[i].cpu
			mu.Commands = after[i].commands - before[i].commands
			if wall > 0 {
				mu.CPUPct = 100 * mu.CPUSeconds / wall
			}
		}
		if n, err := m.DBSize(ctx).Result(); err == nil {
			mu.Keys = n
		}
		out[i] = mu
	}
	return out
}

// partitionSlots counts presenced's partitions served by each master,
// by address (empty when the slot map cannot be read).
func (c *cluster) partitionSlots() map[string]int {
	out := map[string]int{}
	if c.crdb == nil {
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	slots, err := c.crdb.ClusterSlots(ctx).Result()
	if err != nil {
		return out
	}
	for _, t := range presence.PartitionTags(c.partitions()) {
		s := presence.KeySlot("{" + t + "}")
		for _, r := range slots {
			if s >= r.Start && s <= r.End && len(r.Nodes) > 0 {
				out[r.Nodes[0].Addr]++
			}
		}
	}
	return out
}

// partitions is the workers' REDIS_CLUSTER_PARTITIONS.
func (c *cluster) partitions() int {
	if c.cfg.clusterPartitions > 0 {
		return c.cfg.clusterPartitions
	}
	return presence.DefaultPartitions
}

// spread is max/min - 1 of vals, the imbalance between the busiest and the
// idlest: 0 when they are equal, +Inf when the idlest is at zero, -1 when
// a value is missing (negative) or there are fewer than two.
func spread(vals []float64) float64 {
	if len(vals) < 2 || slices.Min(vals) < 0 {
		return -1
	}
	lo, hi := slices.Min(vals), slices.Max(vals)
	if lo == 0 {
		if hi == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return hi/lo - 1
}

// masterSpreads returns the spread of the masters' CPU seconds, commands
// and keys in ms.
func masterSpreads(ms []masterUsage) (cpu, cmds, keys float64) {
	var c, n, k []float64
	for _, m := range ms {
		c = append(c, m.CPUSeconds)
		n = append(n, float64(m.Commands))
		k = append(k, float64(m.Keys))
	}
	return spread(c), spread(n), spread(k)
}
