package testenv

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestRedisCluster runs a 3+3 cluster through what presenced's cluster
// tests need: keys over every master, a reshard while writing, a master's
// crash and its replica's takeover, and the old master's return.
func TestRedisCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := StartRedisCluster(t, 3, 1)
	if n := len(c.Addrs()); n != 6 {
		t.Fatalf("%d nodes, want 6", n)
	}
	masters := c.Masters(t)
	if len(masters) != 3 {
		t.Fatalf("masters %v, want 3", masters)
	}
	total := 0
	for _, m := range masters {
		n := c.Slots(t, m)
		if n < ClusterSlots/3-1 || n > ClusterSlots/3+1 {
			t.Fatalf("%s serves %d slots, want about a third", m, n)
		}
		total += n
	}
	if total != ClusterSlots {
		t.Fatalf("the masters serve %d slots, want %d", total, ClusterSlots)
	}

	cl := c.Client(t)
	prefix := Prefix(t)
	written := map[string]string{}
	write := func(i int) {
		t.Helper()
		k, v := fmt.Sprintf("%s:k%d", prefix, i), strconv.Itoa(i)
		if err := cl.Set(ctx, k, v, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
		written[k] = v
	}
	checkAll := func(when string) {
		t.Helper()
		for k, v := range written {
			if got, err := cl.Get(ctx, k).Result(); err != nil || got != v {
				t.Fatalf("%s: GET %s = %q, %v; want %q", when, k, got, err, v)
			}
		}
	}
	i := 0
	for ; i < 2000; i++ {
		write(i)
	}
	perMaster := keysPerMaster(t, c, masters)
	for _, m := range masters {
		if perMaster[m] == 0 {
			t.Fatalf("no key on master %s: %v", m, perMaster)
		}
	}

	// Reshard a third of the first master's slots to the second while
	// writing: the client follows the ASK and MOVED redirects.
	from, to := masters[0], masters[1]
	fromSlots, toSlots := c.Slots(t, from), c.Slots(t, to)
	const moved = 1800
	rs := c.StartReshard(t, from, to, moved)
	during := 0
writing:
	for {
		select {
		case <-rs.Done():
			break writing
		default:
		}
		write(i)
		i++
		during++
	}
	rs.Wait(t)
	if during == 0 {
		t.Fatalf("no write while resharding")
	}
	if got := c.Slots(t, from); got != fromSlots-moved {
		t.Fatalf("%s serves %d slots after the reshard, want %d", from, got, fromSlots-moved)
	}
	if got := c.Slots(t, to); got != toSlots+moved {
		t.Fatalf("%s serves %d slots after the reshard, want %d", to, got, toSlots+moved)
	}
	checkAll("after the reshard")
	t.Logf("%d keys written while %d slots moved", during, moved)

	// Crash a master once its replica has every write: the replica takes
	// over, every slot is served again and no key is lost.
	victim := masters[2]
	waitReplicated(t, c, victim)
	c.Kill(t, victim)
	c.WaitFailover(t, victim, 20*time.Second)
	after := c.Masters(t)
	if len(after) != 3 || slices.Contains(after, victim) {
		t.Fatalf("masters after the failover %v, want 3 without %s", after, victim)
	}
	// The client finds the new master by itself (its commands to the dead
	// node fail until it reloads the slot map, ClientStateReloadInterval).
	Eventually(t, 10*time.Second, func() bool {
		for k, v := range written {
			if got, err := cl.Get(ctx, k).Result(); err != nil || got != v {
				return false
			}
		}
		return true
	}, "keys not all readable after the failover")
	for end := i + 500; i < end; i++ {
		write(i)
	}
	checkAll("after the failover")

	// The old master comes back as a replica of its replacement.
	c.Restart(t, victim)
	if got := c.Masters(t); !slices.Equal(got, after) {
		t.Fatalf("masters after the restart %v, want %v", got, after)
	}
	var role string
	if err := c.withNode(victim, func(ctx context.Context, rc *redis.Client) error {
		role = infoFields(rc.Info(ctx, "replication").Val())["role"]
		return nil
	}); err != nil || role != "slave" {
		t.Fatalf("%s role after the restart: %q (%v), want slave", victim, role, err)
	}
	if id := c.NodeID(t, victim); len(id) != 40 {
		t.Fatalf("node id %q", id)
	}
	checkAll("after the restart")
}

// TestRedisClusterPassword: with WithPassword every node requires it and
// the cluster client carries it.
func TestRedisClusterPassword(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := StartRedisCluster(t, 3, 0, WithPassword("s3cret"))
	noPassword := redis.NewClient(&redis.Options{Addr: c.Addrs()[0]})
	defer noPassword.Close()
	if err := noPassword.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("PING without the password: %v, want NOAUTH", err)
	}
	cl := c.Client(t)
	for i := range 100 {
		if err := cl.Set(ctx, fmt.Sprintf("%s:%d", Prefix(t), i), "v", 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
	}
}

// keysPerMaster counts the keys each master holds.
func keysPerMaster(t *testing.T, c *RedisCluster, masters []string) map[string]int64 {
	t.Helper()
	n := map[string]int64{}
	for _, m := range masters {
		if err := c.withNode(m, func(ctx context.Context, rc *redis.Client) (err error) {
			n[m], err = rc.DBSize(ctx).Result()
			return err
		}); err != nil {
			t.Fatalf("DBSIZE on %s: %v", m, err)
		}
	}
	return n
}

// waitReplicated waits until every replica of the master at addr has
// acknowledged its whole replication stream.
func waitReplicated(t *testing.T, c *RedisCluster, addr string) {
	t.Helper()
	info := map[string]string{} // refilled by each check, for the failure message
	Eventually(t, 10*time.Second, func() bool {
		if err := c.withNode(addr, func(ctx context.Context, rc *redis.Client) error {
			s, err := rc.Info(ctx, "replication").Result()
			clear(info)
			maps.Copy(info, infoFields(s))
			return err
		}); err != nil {
			return false
		}
		n, _ := strconv.Atoi(info["connected_slaves"])
		if n == 0 {
			return false
		}
		for r := range n {
			// slaveN:ip=...,port=...,state=online,offset=N,lag=N
			if !strings.Contains(info["slave"+strconv.Itoa(r)], ",offset="+info["master_repl_offset"]+",") {
				return false
			}
		}
		return true
	}, "replicas of %s behind: %v", addr, info)
}
