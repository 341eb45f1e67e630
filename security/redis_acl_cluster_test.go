package security_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/app"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// startACLCluster starts a Redis Cluster of three masters whose nodes load
// an ACL file made of an admin default user and the presenced line of
// deploy/redis/users.acl.
func startACLCluster(t *testing.T, opts ...testenv.RedisOption) *testenv.RedisCluster {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users.acl")
	acl := "user default on >" + adminPassword + " ~* &* +@all\n" + workerACL(t) + "\n"
	if err := os.WriteFile(path, []byte(acl), 0o600); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, testenv.WithPassword(adminPassword), testenv.WithConfig("aclfile", path))
	return testenv.StartRedisCluster(t, 3, 0, opts...)
}

// TestRedisACLCluster runs a real worker on a Redis Cluster as the
// presenced user of deploy/redis/users.acl: heartbeat -> online (and the
// seed's key mirrored), script cache loss, expiry -> offline, disconnect
// -> offline (the mirror removed), connections under a gateway lease,
// every query; then an ASK redirect as that user. No node denied anything
// but the optional CONFIG, and every grant only a cluster needs was used.
func TestRedisACLCluster(t *testing.T) {
	t.Parallel()
	rc := startACLCluster(t, testenv.WithConfig("notify-keyspace-events", "Ex"))
	ctx := context.Background()
	admins := map[string]*redis.Client{}
	for _, a := range rc.Addrs() {
		admins[a] = rc.Node(t, a).Client(t)
		if err := admins[a].Do(ctx, "ACL", "LOG", "RESET").Err(); err != nil {
			t.Fatal(err)
		}
		if err := admins[a].ConfigResetStat(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	denials := func() []string {
		var out []string
		for a, admin := range admins {
			for _, d := range aclDenials(t, admin) {
				out = append(out, a+" "+d)
			}
		}
		return out
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ACL LOG: %v", denials())
		}
	})
	admin := rc.Client(t)

	n := testenv.StartNATS(t)
	nc := n.Conn(t)
	subjects := contract.Subjects{Prefix: "presence"}
	online := testenv.Collect(t, nc, subjects.Online())
	offline := testenv.Collect(t, nc, subjects.Offline())
	w := start(t, map[string]string{
		"NATS_URL":                 n.URL(),
		"REDIS_URL":                "",
		"REDIS_CLUSTER_ADDRS":      strings.Join(rc.Addrs(), ","),
		"REDIS_CLUSTER_PARTITIONS": "6",
		"REDIS_USERNAME":           "presenced",
		"REDIS_PASSWORD":           aclPassword,
		"PRESENCE_TTL":             "1s", "PRESENCE_RECONCILE_INTERVAL": "100ms",
		"PRESENCE_OUTBOX_CLAIM_AFTER": "1s",
	})
	w.waitStarted(t)
	w.waitLog(t, "CONFIG denied")
	w.waitLog(t, `"msg":"expiry subscription established"`)

	mirror := func(id string) int64 {
		t.Helper()
		n, err := admin.Exists(ctx, "presence:user:"+id).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	heartbeat(t, nc, subjects, "u-1")
	waitEvent(t, online, "u-1", "online")
	// A lost script cache makes go-redis fall back to EVAL and SCRIPT LOAD.
	if err := admin.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.ScriptFlush(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, nc, subjects, "u-2", "u-3")
	waitEvent(t, online, "u-3", "online")
	testenv.Eventually(t, 5*time.Second, func() bool { return mirror("u-3") == 1 }, "the seed's key of u-3 was not written")
	disconnect(t, nc, subjects, "u-3")
	waitEvent(t, offline, "u-3", "offline")
	waitEvent(t, offline, "u-1", "offline") // expired
	waitEvent(t, offline, "u-2", "offline")
	testenv.Eventually(t, 5*time.Second, func() bool { return mirror("u-1")+mirror("u-2")+mirror("u-3") == 0 }, "the seed's keys were not removed after the offlines")

	lease := map[string]string{"gatewayId": "gw", "instanceId": "i"}
	send(t, nc, subjects.GatewayHeartbeat(), lease)
	send(t, nc, subjects.Heartbeat(), map[string]any{"gatewayId": "gw", "connections": []map[string]any{
		{"userId": "c-1", "connectionId": "a", "seq": 1}, {"userId": "c-1", "connectionId": "b", "seq": 1}}})
	waitEvent(t, online, "c-1", "online")
	send(t, nc, subjects.Disconnect(), map[string]any{"userId": "c-1", "connectionId": "a", "seq": 2})
	send(t, nc, subjects.GatewayDisconnect(), lease)
	waitEvent(t, offline, "c-1", "offline")

	heartbeat(t, nc, subjects, "u-4")
	queryEveryEndpoint(t, nc, subjects)

	if code := w.stop(t); code != 0 {
		t.Fatalf("presenced exit %d:\n%s", code, w.out)
	}

	// An ASK redirect, as during a reshard, followed as the ACL user.
	askAsACLUser(t, rc, admins)

	var other []string
	for _, d := range denials() {
		if !strings.Contains(d, "command:config|") {
			other = append(other, d)
		}
	}
	if len(other) > 0 {
		t.Fatalf("ACL denials besides CONFIG: %v\npresenced output:\n%s", other, w.out)
	}
	out := w.out.String()
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "NOPERM") && !strings.Contains(line, "CONFIG denied") {
			t.Errorf("NOPERM outside the CONFIG warning: %s", line)
		}
	}
	// Every grant was used on some node, but the query view's reads (not
	// used on a cluster; TestRedisACL proves them used): the list is
	// minimal for a cluster too, and the grants only a cluster needs are
	// proven here.
	called := map[string]int{}
	for _, a := range admins {
		for c, n := range calledCommands(t, a) {
			called[c] += n
		}
	}
	if unused := unusedGrants(workerACL(t), called, singleServerOnlyGrants); len(unused) > 0 {
		t.Errorf("%s grants commands the worker did not use on a cluster: %v (remove them, or cover the path that uses them)", aclFile, unused)
	}
	assertNoSecrets(t, "presenced output", out, aclPassword)
}

// askAsACLUser sets a slot of a key under the prefix migrating from its
// master to another, as redis-cli --cluster reshard does, and reads the key
// as the ACL user: the source answers ASK, and the client sends ASKING
// before the command to the target. The slot is then set back.
func askAsACLUser(t *testing.T, rc *testenv.RedisCluster, admins map[string]*redis.Client) {
	t.Helper()
	ctx := context.Background()
	const key = "presence:user:ask"
	slot := presence.KeySlot(key)
	admin := rc.Client(t)
	slots, err := admin.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var src string
	for _, s := range slots {
		if slot >= s.Start && slot <= s.End {
			src = s.Nodes[0].Addr
		}
	}
	var dst string
	for _, m := range rc.Masters(t) {
		if m != src {
			dst = m
			break
		}
	}
	srcID, dstID := rc.NodeID(t, src), rc.NodeID(t, dst)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admins[dst].Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err())
	must(admins[src].Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	defer func() {
		must(admins[src].Do(ctx, "CLUSTER", "SETSLOT", slot, "STABLE").Err())
		must(admins[dst].Do(ctx, "CLUSTER", "SETSLOT", slot, "STABLE").Err())
	}()

	cfg := config.Default()
	cfg.RedisURL, cfg.RedisClusterAddrs = "", strings.Join(rc.Addrs(), ",")
	cfg.RedisUsername, cfg.RedisPassword = "presenced", aclPassword
	user, err := app.NewRedisClusterClient(cfg, "presenced")
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	before := calledCommands(t, admins[dst])["asking"]
	if err := user.Get(ctx, key).Err(); err != redis.Nil {
		t.Fatalf("GET %s during the migration, as presenced: %v, want nil", key, err)
	}
	if calledCommands(t, admins[dst])["asking"] <= before {
		t.Fatalf("the migrating slot's target %s saw no ASKING: the read did not follow an ASK redirect", dst)
	}
}

// clusterOnlyGrants are the grants of deploy/redis/users.acl that only a
// Redis Cluster client uses (go-redis's cluster client sends them itself:
// CLUSTER SLOTS for the slot map, COMMAND for the commands' key positions
// and routing, ASKING after an ASK redirect); TestRedisACLCluster proves
// them used, TestRedisACL leaves them out of its minimality check.
var clusterOnlyGrants = []string{"cluster|slots", "command", "asking"}

// singleServerOnlyGrants are the grants only the query view uses
// (PRESENCE_QUERY_VIEW, not used on a cluster); TestRedisACL proves them
// used.
var singleServerOnlyGrants = []string{"xread", "xrevrange"}
