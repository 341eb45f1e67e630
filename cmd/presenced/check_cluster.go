package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/app"
	"github.com/presenced/presenced/presence"
)

// clusterClientCommands are the commands go-redis's cluster client sends
// by itself, which the worker's user needs on a cluster beside those the
// worker runs: CLUSTER SLOTS (the slot map, also read by the expiry
// subscriptions to follow the masters), COMMAND (the commands' key
// positions and routing) and ASKING (after an ASK redirect, while a slot
// moves).
var clusterClientCommands = []string{"CLUSTER SLOTS", "COMMAND", "ASKING"}

// checkRedisCluster is checkRedis on a Redis Cluster (REDIS_CLUSTER_ADDRS):
//
//   - "redis cluster": a seed node answers CLUSTER SLOTS, masters serve
//     every slot, and the user may run what the cluster client sends
//     itself (clusterClientCommands);
//   - for each master, "redis <addr>" (reachable, a master, cluster_state
//     ok in its CLUSTER INFO when the user may read it) and the checks of
//     serverChecks, named "redis <addr> version" and so on, on a client of
//     that master alone with scratch keys in one of its slots;
//   - "redis partitions": the partition count recorded in
//     <prefix>partitions is REDIS_CLUSTER_PARTITIONS (or none is yet).
//
// The masters are checked concurrently and reported in address order.
func checkRedisCluster(ctx context.Context, cfg config.Config, report func(checkLine)) {
	co, err := app.RedisClusterOptions(cfg)
	if err != nil {
		report(checkLine{checkFail, "redis cluster", err.Error()})
		report(checkLine{checkSkip, "redis partitions", "no redis connection"})
		return
	}
	node := func(addr string) *redis.Client {
		return redis.NewClient(&redis.Options{
			Addr: addr, Username: co.Username, Password: co.Password, TLSConfig: co.TLSConfig,
			ClientName: "presenced-check", DialTimeout: cfg.ConnectTimeout,
			MaxRetries:      -1, // a check reports the first failure, it does not retry
			DisableIdentity: true, MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		})
	}

	seed, masters, denied, why := clusterMasters(ctx, cfg, node)
	if why != "" {
		report(checkLine{checkFail, "redis cluster", why})
		report(checkLine{checkSkip, "redis partitions", "no cluster slot map"})
		return
	}
	served := 0
	for _, m := range masters {
		served += m.slots
	}
	var problems []string
	if served < presence.ClusterSlots {
		problems = append(problems, fmt.Sprintf("the slot map of seed %s assigns %d of the %d slots: the cluster refuses commands until each slot is served; "+
			"assign the missing slots (redis-cli --cluster fix)", seed, served, presence.ClusterSlots))
	}
	if denied != "" {
		problems = append(problems, denied)
	}
	if len(problems) > 0 {
		report(checkLine{checkFail, "redis cluster", strings.Join(problems, "; ")})
	} else {
		report(checkLine{checkOK, "redis cluster", fmt.Sprintf("the slot map of seed %s assigns all %d slots to %d masters; the user may run %s (what the cluster client sends itself)",
			seed, presence.ClusterSlots, len(masters), strings.Join(clusterClientCommands, ", "))})
	}

	results := make([][]checkLine, len(masters))
	var wg sync.WaitGroup
	for i, m := range masters {
		wg.Go(func() {
			rdb := node(m.addr)
			defer rdb.Close()
			results[i] = checkClusterMaster(ctx, cfg, rdb, m)
		})
	}
	wg.Wait()
	for _, lines := range results {
		for _, l := range lines {
			report(l)
		}
	}
	report(clusterPartitions(ctx, cfg, co))
}

// clusterMaster is a master as CLUSTER SLOTS names it.
type clusterMaster struct {
	addr   string
	slots  int      // how many slots it serves
	ranges [][2]int // the slot ranges it serves, first and last slot
}

// clusterMasters asks the seed nodes in turn for CLUSTER SLOTS and returns
// the first that answers and its masters, sorted by address, and, probed
// on the same node, whether the user may run COMMAND and ASKING (denied is
// "" when it may). It returns why not instead of masters when no seed
// answers.
func clusterMasters(ctx context.Context, cfg config.Config, node func(string) *redis.Client) (seed string, masters []clusterMaster, denied, why string) {
	var errs []string
	for _, seed := range cfg.ClusterAddrs() {
		rdb := node(seed)
		sctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		slots, err := rdb.ClusterSlots(sctx).Result()
		var probeErr error
		if err == nil {
			// COMMAND's reply is the whole command table: read it as
			// generic values, only its error matters.
			for _, probe := range [][]any{{"COMMAND"}, {"ASKING"}} {
				if probeErr = rdb.Do(sctx, probe...).Err(); probeErr != nil {
					probeErr = fmt.Errorf("%s: %w", probe[0], probeErr)
					break
				}
			}
		}
		cancel()
		_ = rdb.Close()
		switch {
		case err != nil && strings.Contains(err.Error(), "cluster support disabled"):
			return "", nil, "", fmt.Sprintf("seed %s is not a cluster node (%v): REDIS_CLUSTER_ADDRS is for a Redis Cluster; for one server set REDIS_URL instead", seed, err)
		case err != nil && isDenied(err):
			return "", nil, "", fmt.Sprintf("seed %s: CLUSTER SLOTS: %v: %s", seed, err, clusterGrantsHint)
		case err != nil:
			errs = append(errs, fmt.Sprintf("%s: CLUSTER SLOTS: %v", seed, err))
			continue
		case probeErr != nil:
			denied = fmt.Sprintf("seed %s: %v", seed, probeErr)
			if isDenied(probeErr) {
				denied += ": " + clusterGrantsHint
			}
		}
		byAddr := map[string]*clusterMaster{}
		for _, s := range slots {
			if len(s.Nodes) == 0 || s.Nodes[0].Addr == "" {
				continue
			}
			a := s.Nodes[0].Addr
			if byAddr[a] == nil {
				byAddr[a] = &clusterMaster{addr: a}
			}
			byAddr[a].slots += s.End - s.Start + 1
			byAddr[a].ranges = append(byAddr[a].ranges, [2]int{s.Start, s.End})
		}
		if len(byAddr) == 0 {
			return "", nil, "", fmt.Sprintf("seed %s: CLUSTER SLOTS names no master: no slot is assigned; create the cluster (redis-cli --cluster create)", seed)
		}
		for _, m := range byAddr {
			masters = append(masters, *m)
		}
		slices.SortFunc(masters, func(a, b clusterMaster) int { return strings.Compare(a.addr, b.addr) })
		return seed, masters, denied, ""
	}
	return "", nil, "", fmt.Sprintf("no seed node of REDIS_CLUSTER_ADDRS answers: %s", strings.Join(errs, "; "))
}

// clusterGrantsHint explains a denial of clusterClientCommands.
const clusterGrantsHint = "denied by ACL: on a cluster the worker's Redis user needs +cluster|slots +command +asking " +
	"(go-redis's cluster client sends them itself; see deploy/redis/users.acl)"

// checkClusterMaster returns the lines of master m, checked on rdb (a
// client of m alone): "redis <addr>", then serverChecks with scratch keys
// in a slot m serves.
func checkClusterMaster(ctx context.Context, cfg config.Config, rdb *redis.Client, m clusterMaster) []checkLine {
	head := "redis " + m.addr
	skipAll := func(l checkLine, why string) []checkLine {
		out := []checkLine{l}
		for _, n := range serverCheckNames {
			out = append(out, checkLine{checkSkip, masterCheckName(m.addr, n), why})
		}
		return out
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	role, err := rdb.Do(cctx, "ROLE").Slice()
	if err != nil && isDenied(err) {
		return skipAll(checkLine{checkFail, head, deniedHint("ROLE", err, cfg.KeyPrefix, "")}, "ROLE denied")
	}
	if err != nil {
		return skipAll(checkLine{checkFail, head, fmt.Sprintf("not reachable (ROLE: %v): the cluster names it the master of %d slots; "+
			"until a replica takes them over (or it comes back) the worker cannot write its partitions there", err, m.slots)}, "master not reachable")
	}
	if len(role) == 0 || role[0] != "master" {
		return skipAll(checkLine{checkFail, head, fmt.Sprintf("ROLE is %v, not master: the cluster's slot map is stale (a failover under way?); run the check again", role[0:min(1, len(role))])}, "not a master")
	}
	state := "cluster_state not read (CLUSTER INFO denied; the worker does not need it)"
	info, err := rdb.ClusterInfo(cctx).Result()
	switch {
	case err != nil && !isDenied(err):
		return skipAll(checkLine{checkFail, head, fmt.Sprintf("CLUSTER INFO: %v", err)}, "CLUSTER INFO failed")
	case err == nil:
		fields := map[string]string{}
		for _, line := range strings.Split(info, "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
				fields[k] = v
			}
		}
		if st := fields["cluster_state"]; st != "ok" {
			return skipAll(checkLine{checkFail, head, fmt.Sprintf("cluster_state is %q (slots assigned %s, failing %s): this master refuses commands; "+
				"a master is down or unreachable from it: see CLUSTER NODES, fail over or bring the master back",
				st, fields["cluster_slots_assigned"], fields["cluster_slots_fail"])}, "cluster_state not ok")
		}
		state = "cluster_state ok"
	}
	scratch, ok := scratchPrefix(cfg.KeyPrefix, m)
	if !ok {
		return skipAll(checkLine{checkFail, head, fmt.Sprintf("no scratch key under %q falls in its slots %v: cannot probe it", cfg.KeyPrefix, m.ranges)}, "no scratch key")
	}
	out := []checkLine{{checkOK, head, fmt.Sprintf("master of %d slots, %s", m.slots, state)}}
	for _, l := range serverChecks(cctx, rdb, cfg.KeyPrefix, scratch, 0) {
		l.name = masterCheckName(m.addr, l.name)
		out = append(out, l)
	}
	return out
}

// masterCheckName names a per-server check of the master at addr: "redis
// version" becomes "redis <addr> version".
func masterCheckName(addr, name string) string {
	return "redis " + addr + strings.TrimPrefix(name, "redis")
}

// scratchPrefix returns prefix+"{check<n>}:" for the first n whose keys
// fall in a slot m serves (the scratch keys of one script must share a
// slot, and be on m).
func scratchPrefix(prefix string, m clusterMaster) (string, bool) {
	for n := range 1 << 20 {
		p := prefix + "{check" + strconv.Itoa(n) + "}:"
		s := presence.KeySlot(p + "check")
		for _, r := range m.ranges {
			if s >= r[0] && s <= r[1] {
				return p, true
			}
		}
	}
	return "", false
}

// clusterPartitions compares the partition count recorded in the cluster
// (presence.Cluster.PartitionsKey, written by the first replica) with
// REDIS_CLUSTER_PARTITIONS: a replica with another count refuses to start.
func clusterPartitions(ctx context.Context, cfg config.Config, co *redis.ClusterOptions) checkLine {
	const name = "redis partitions"
	o := *co
	o.DialTimeout, o.ClientName = cfg.ConnectTimeout, "presenced-check"
	cc := redis.NewClusterClient(&o)
	defer cc.Close()
	c := presence.NewCluster(cc, presence.Options{Prefix: cfg.KeyPrefix}, cfg.RedisClusterPartitions, nil)
	key, want := c.PartitionsKey(), strconv.Itoa(len(c.Partitions()))
	gctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	got, err := cc.Get(gctx, key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return checkLine{checkOK, name, fmt.Sprintf("not recorded yet: the first replica records %s (REDIS_CLUSTER_PARTITIONS) in %s", want, key)}
	case err != nil:
		return checkLine{checkFail, name, deniedHint("GET "+key, err, cfg.KeyPrefix, "")}
	case got != want:
		return checkLine{checkFail, name, fmt.Sprintf("the presence data in this cluster has %s partitions (%s), REDIS_CLUSTER_PARTITIONS is %s: replicas would refuse to start; "+
			"set REDIS_CLUSTER_PARTITIONS=%s (the count is fixed for the life of the data)", got, key, want, got)}
	}
	return checkLine{checkOK, name, fmt.Sprintf("%s, as REDIS_CLUSTER_PARTITIONS (%s)", got, key)}
}
