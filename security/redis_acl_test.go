package security_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/app"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/query"
)

const (
	aclFile       = "../deploy/redis/users.acl"
	aclPassword   = "aclPw4f00d"
	adminPassword = "adminPw9d1"
)

var passwordRule = regexp.MustCompile(`\s#[0-9a-f]{64}\s`)

// workerACL returns the presenced line of deploy/redis/users.acl with its
// password placeholder replaced by >aclPassword.
func workerACL(t *testing.T) string {
	t.Helper()
	f, err := os.Open(aclFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "user ") {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "user presenced ") {
		t.Fatalf("%s: want exactly one user line, for presenced; got %q", aclFile, lines)
	}
	if !passwordRule.MatchString(lines[0]) {
		t.Fatalf("%s: the presenced line has no #<sha256> password placeholder", aclFile)
	}
	return passwordRule.ReplaceAllString(lines[0], " >"+aclPassword+" ")
}

// startACLRedis starts redis-server with an ACL file made of an admin
// default user and the presenced line of deploy/redis/users.acl.
func startACLRedis(t *testing.T, opts ...testenv.RedisOption) *testenv.Redis {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users.acl")
	acl := "user default on >" + adminPassword + " ~* &* +@all\n" + workerACL(t) + "\n"
	if err := os.WriteFile(path, []byte(acl), 0o600); err != nil {
		t.Fatal(err)
	}
	// With an aclfile, requirepass is ignored; WithPassword only tells
	// testenv how to AUTH as default.
	opts = append(opts, testenv.WithPassword(adminPassword), testenv.WithConfig("aclfile", path))
	return testenv.StartRedis(t, opts...)
}

// aclDenials returns ACL LOG as "reason:object" strings, oldest first.
func aclDenials(t *testing.T, admin *redis.Client) []string {
	t.Helper()
	res, err := admin.Do(context.Background(), "ACL", "LOG").Slice()
	if err != nil {
		t.Fatalf("ACL LOG: %v", err)
	}
	var out []string
	for i := len(res) - 1; i >= 0; i-- {
		e := map[string]any{}
		switch v := res[i].(type) {
		case map[any]any: // RESP3
			for k, val := range v {
				e[fmt.Sprint(k)] = val
			}
		case []any: // RESP2: key, value, ...
			for j := 0; j+1 < len(v); j += 2 {
				e[fmt.Sprint(v[j])] = v[j+1]
			}
		}
		out = append(out, fmt.Sprintf("%v:%v (user %v)", e["reason"], e["object"], e["username"]))
	}
	return out
}

// TestRedisACL runs a real worker as the presenced user of
// deploy/redis/users.acl and checks that the whole flow works with it and
// that Redis denied nothing but the optional CONFIG: heartbeat -> online,
// script cache loss (EVAL fallback), expiry -> offline, disconnect ->
// offline, the outbox, and every query of the query service.
func TestRedisACL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// notify is what the operator set in redis.conf; "" leaves
		// keyspace events off, so offline comes from the sweep alone.
		notify string
	}{
		{name: "operator enabled expired events", notify: "Ex"},
		{name: "no keyspace events, sweep only", notify: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var ropts []testenv.RedisOption
			if tc.notify != "" {
				ropts = append(ropts, testenv.WithConfig("notify-keyspace-events", tc.notify))
			}
			r := startACLRedis(t, ropts...)
			admin := r.Client(t)
			ctx := context.Background()

			// The ACL user cannot touch keys outside its prefix nor run
			// what is not listed.
			user := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "presenced", Password: aclPassword, DisableIdentity: true})
			t.Cleanup(func() { _ = user.Close() })
			if err := user.Ping(ctx).Err(); err != nil {
				t.Fatalf("PING as presenced: %v", err)
			}
			for name, cmd := range map[string]*redis.StatusCmd{
				"SET outside the prefix": user.Set(ctx, "other:key", "1", 0),
				"FLUSHALL":               user.FlushAll(ctx),
				"CONFIG SET":             user.ConfigSet(ctx, "dir", "/tmp"),
			} {
				if err := cmd.Err(); err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
					t.Errorf("%s as presenced: err = %v, want NOPERM", name, err)
				}
			}
			if err := admin.Do(ctx, "ACL", "LOG", "RESET").Err(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("ACL LOG: %v", aclDenials(t, admin))
				}
			})

			n := testenv.StartNATS(t)
			nc := n.Conn(t)
			subjects := contract.Subjects{Prefix: "presence"}
			online := testenv.Collect(t, nc, subjects.Online())
			offline := testenv.Collect(t, nc, subjects.Offline())

			w := start(t, map[string]string{
				"NATS_URL":       n.URL(),
				"REDIS_URL":      "redis://" + r.Addr + "/0", // no password in the URL
				"REDIS_USERNAME": "presenced",
				"REDIS_PASSWORD": aclPassword,
				"PRESENCE_TTL":   "1s", "PRESENCE_RECONCILE_INTERVAL": "100ms",
				"PRESENCE_OUTBOX_CLAIM_AFTER": "1s",
				// One sessions shard, so that the listing below can find it
				// oversized and walk it with HSCAN.
				"PRESENCE_SHARDS": "1",
			})
			w.waitStarted(t)
			w.waitLog(t, "CONFIG denied")
			w.waitLog(t, `"msg":"expiry subscription established"`)

			heartbeat(t, nc, subjects, "u-1")
			waitEvent(t, online, "u-1", "online")
			// A lost script cache makes go-redis fall back to EVAL and
			// SCRIPT LOAD.
			if err := admin.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			heartbeat(t, nc, subjects, "u-2", "u-3")
			waitEvent(t, online, "u-2", "online")
			disconnect(t, nc, subjects, "u-3")
			waitEvent(t, offline, "u-3", "offline")
			waitEvent(t, offline, "u-1", "offline") // expired
			waitEvent(t, offline, "u-2", "offline")
			// Connections: a gateway takes a lease, a user connects twice
			// through it, one connection ends (the key's expiry follows the
			// other), then the lease ends and the sweep ends the rest.
			lease := map[string]string{"gatewayId": "gw", "instanceId": "i"}
			send(t, nc, subjects.GatewayHeartbeat(), lease)
			send(t, nc, subjects.Heartbeat(), map[string]any{"gatewayId": "gw", "connections": []map[string]any{
				{"userId": "c-1", "connectionId": "a", "seq": 1}, {"userId": "c-1", "connectionId": "b", "seq": 1}}})
			waitEvent(t, online, "c-1", "online")
			send(t, nc, subjects.Disconnect(), map[string]any{"userId": "c-1", "connectionId": "a", "seq": 2})
			send(t, nc, subjects.GatewayDisconnect(), lease)
			waitEvent(t, offline, "c-1", "offline")
			// The sweep reads the index buckets of u-1..u-3 once their slot
			// ends (HGETALL, PTTL, DEL, ZREM), whether or not the keyspace
			// event claimed first; wait for it, so that its commands are
			// exercised under the ACL and nothing is left behind.
			store := presence.NewStore(admin, presence.Options{Prefix: "presence:", TTL: time.Second})
			var f presence.Footprint
			testenv.Eventually(t, 10*time.Second, func() bool {
				var err error
				f, err = store.Footprint(ctx)
				return err == nil && f.Sessions == 0 && f.Count == 0 && f.IndexEntries == 0 && f.Buckets == 0
			}, "presence data left behind after every user went offline: %+v", &f)

			// The query service's reads, as the ACL user.
			cfg := config.Default()
			cfg.RedisURL, cfg.RedisUsername, cfg.RedisPassword = "redis://"+r.Addr+"/0", "presenced", aclPassword
			ropt, err := app.RedisOptions(cfg)
			if err != nil {
				t.Fatal(err)
			}
			qrdb := redis.NewClient(ropt)
			t.Cleanup(func() { _ = qrdb.Close() })
			qnc := n.Conn(t)
			svc, err := query.Start(qnc, presence.NewStore(qrdb, presence.Options{Prefix: "presence:", TTL: time.Minute}), query.Options{Subjects: subjects})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = svc.Stop() })
			// A compact shard is listed with HKEYS; then 130 more users make
			// it oversized for the list request below.
			if msg, err := nc.Request(subjects.Query(contract.QueryList), []byte(`{}`), 10*time.Second); err != nil || msg.Header.Get(micro.ErrorCodeHeader) != "" {
				t.Fatalf("list: %v %v", err, msg)
			}
			many := make([]string, 130)
			for i := range many {
				many[i] = fmt.Sprintf("m-%03d", i)
			}
			heartbeat(t, nc, subjects, append(many, "u-4")...)
			queryEveryEndpoint(t, nc, subjects)

			if code := w.stop(t); code != 0 {
				t.Fatalf("presenced exit %d:\n%s", code, w.out)
			}
			// Stopping removes the consumer from the outbox group. Every
			// command the line grants was used: the list is minimal for this
			// flow.
			// The grants only a Redis Cluster needs are proven used by
			// TestRedisACLCluster.
			if unused := unusedGrants(workerACL(t), calledCommands(t, admin), clusterOnlyGrants); len(unused) > 0 {
				t.Errorf("%s grants commands the worker did not use: %v (remove them, or cover the path that uses them)", aclFile, unused)
			}
			var other []string
			for _, d := range aclDenials(t, admin) {
				if !strings.HasPrefix(d, "command:config|") {
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
			assertNoSecrets(t, "presenced output", out, aclPassword)
		})
	}
}

// unusedGrants returns the commands granted (+cmd) by line that called
// (calledCommands) shows no successful call of, leaving out those in
// elsewhere: the grants another topology's test proves used.
func unusedGrants(line string, called map[string]int, elsewhere []string) []string {
	var unused []string
	for _, tok := range strings.Fields(line) {
		if cmd, ok := strings.CutPrefix(tok, "+"); ok && called[cmd] == 0 && !slices.Contains(elsewhere, cmd) {
			unused = append(unused, cmd)
		}
	}
	return unused
}

// calledCommands returns how many successful calls INFO commandstats
// shows of each command, named as in ACL rules ("cluster|slots").
func calledCommands(t *testing.T, admin *redis.Client) map[string]int {
	t.Helper()
	stats, err := admin.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	called := map[string]int{}
	for _, l := range strings.Split(stats, "\n") {
		// cmdstat_<name>:calls=<n>,usec=...,rejected_calls=<r>,failed_calls=<f>
		name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(l), "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		if n, err := strconv.Atoi(calls); err == nil && n > 0 {
			called[name] = n
		}
	}
	return called
}
