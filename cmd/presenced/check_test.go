package main

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// checkRun runs `presenced check` with env and returns the exit code and
// what it printed.
func checkRun(t *testing.T, env map[string]string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run([]string{"check", "--connect-timeout", "2s"}, func(k string) string { return env[k] }, &out, &errOut)
	if errOut.Len() > 0 {
		t.Fatalf("stderr: %s", errOut.String())
	}
	t.Logf("presenced check (exit %d):\n%s", code, out.String())
	return code, out.String()
}

// outcome returns the outcome printed for the check named name: the lines
// are "<outcome>  <name>: <detail>".
func outcome(out, name string) string {
	for _, l := range strings.Split(out, "\n") {
		if len(l) < 6 {
			continue
		}
		if n, _, ok := strings.Cut(l[6:], ": "); ok && n == name {
			return strings.TrimSpace(l[:4])
		}
	}
	return "(missing)"
}

func TestCheckAllPass(t *testing.T) {
	r := testenv.StartRedis(t, testenv.WithConfig("notify-keyspace-events", "Ex"))
	n := testenv.StartNATS(t)
	p := testenv.Prefix(t)
	probes := testenv.Collect(t, n.Conn(t), p+".*")

	code, out := checkRun(t, map[string]string{"REDIS_URL": r.URL(), "NATS_URL": n.URL(), "PRESENCE_SUBJECT_PREFIX": p, "PRESENCE_KEY_PREFIX": p + ":"})
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out)
	}
	for _, name := range []string{"redis", "redis version", "redis keyspace events", "redis scripts", "redis streams and reads", "redis expiry subscription",
		"nats", "nats subscribe " + p + ".heartbeat", "nats subscribe " + p + ".disconnect", "nats subscribe query service", "nats publish " + p + ".online", "nats publish " + p + ".offline"} {
		if got := outcome(out, name); got != "ok" {
			t.Errorf("%s: %s, want ok", name, got)
		}
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}
	// The probes are marked, and the scratch keys are gone.
	for _, m := range probes.WaitFor(t, 2, 5*time.Second) {
		if m.Header.Get(contract.ProbeHeader) == "" || len(m.Data) != 0 {
			t.Errorf("probe on %s: header %v, data %q; want %s and no data", m.Subject, m.Header, m.Data, contract.ProbeHeader)
		}
	}
	keys, err := r.Client(t).Keys(context.Background(), p+":*").Result()
	if err != nil || len(keys) != 0 {
		t.Fatalf("keys left under %s: %v (%v)", p, keys, err)
	}
}

func TestCheckFailures(t *testing.T) {
	p := testenv.Prefix(t)
	// The worker's NATS user may not publish online events nor subscribe to
	// disconnects.
	n := testenv.StartNATS(t, testenv.WithServerOptions(func(o *server.Options) {
		o.Users = []*server.User{{Username: "worker", Password: "s3cret", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{p + ".offline", "_INBOX.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{p + ".disconnect"}},
		}}}
	}))
	natsURL, _ := url.Parse(n.URL())
	natsURL.User = url.UserPassword("worker", "s3cret")
	deadRedis := fmt.Sprintf("redis://127.0.0.1:%d/0", testenv.FreePort(t)) // nothing listens there

	code, out := checkRun(t, map[string]string{"REDIS_URL": deadRedis, "NATS_URL": natsURL.String(), "PRESENCE_SUBJECT_PREFIX": p})
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	want := map[string]string{
		"redis":                               "FAIL",
		"redis version":                       "skip",
		"redis scripts":                       "skip",
		"nats":                                "ok",
		"nats subscribe " + p + ".heartbeat":  "ok",
		"nats subscribe " + p + ".disconnect": "FAIL",
		"nats subscribe query service":        "ok",
		"nats publish " + p + ".online":       "FAIL",
		"nats publish " + p + ".offline":      "ok",
	}
	for name, w := range want {
		if got := outcome(out, name); got != w {
			t.Errorf("%s: %s, want %s", name, got, w)
		}
	}
	for _, s := range []string{"may not publish to " + p + ".online", "may not subscribe to " + p + ".disconnect", "s3cret"} {
		if strings.Contains(out, s) != (s != "s3cret") {
			t.Errorf("output should %s %q", map[bool]string{true: "contain", false: "not contain"}[s != "s3cret"], s)
		}
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}
}

func TestCheckRedisACL(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t)
	p := testenv.Prefix(t)
	// A user that may do everything on the prefix but XADD and CONFIG.
	if err := r.Client(t).Do(context.Background(), "ACL", "SETUSER", "worker", "on", ">pw", "~"+p+":*", "&*", "+@all", "-xadd", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	u := url.URL{Scheme: "redis", Host: r.Addr, Path: "/0", User: url.UserPassword("worker", "pw")}

	code, out := checkRun(t, map[string]string{"REDIS_URL": u.String(), "NATS_URL": n.URL(), "PRESENCE_SUBJECT_PREFIX": p, "PRESENCE_KEY_PREFIX": p + ":"})
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	for name, w := range map[string]string{
		"redis":                     "ok",
		"redis version":             "ok",
		"redis keyspace events":     "WARN",
		"redis scripts":             "FAIL",
		"redis streams and reads":   "FAIL",
		"redis expiry subscription": "ok",
		"nats":                      "ok",
	} {
		if got := outcome(out, name); got != w {
			t.Errorf("%s: %s, want %s", name, got, w)
		}
	}
	if !strings.Contains(out, "NOPERM") || !strings.Contains(out, "~"+p+":*") {
		t.Errorf("output does not explain the ACL denial")
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}
}

// TestCheckStream: with PRESENCE_STREAM set, check verifies the stream: a
// missing one is a warning (the worker creates it), one that also captures
// heartbeats or keeps message ids for less than twice the claim time fails
// naming the setting, a fitting one passes.
func TestCheckStream(t *testing.T) {
	r := testenv.StartRedis(t, testenv.WithConfig("notify-keyspace-events", "Ex"))
	n := testenv.StartNATS(t, testenv.WithJetStream(""))
	p := testenv.Prefix(t)
	ctx := context.Background()
	js, err := jetstream.New(n.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	name := "EV_" + p
	env := map[string]string{"REDIS_URL": r.URL(), "NATS_URL": n.URL(), "PRESENCE_SUBJECT_PREFIX": p, "PRESENCE_KEY_PREFIX": p + ":", "PRESENCE_STREAM": name}
	events := []string{p + ".online", p + ".offline", p + ".reset"}
	for _, tc := range []struct {
		name     string
		stream   *jetstream.StreamConfig
		code     int
		outcome  string
		contains string
	}{
		{"missing", nil, 0, "WARN", "the first replica creates it"},
		{"whole prefix", &jetstream.StreamConfig{Name: name, Subjects: []string{p + ".>"}, Duplicates: time.Minute}, 1, "FAIL", "PRESENCE_STREAM: stream \"" + name + "\": wrong subjects"},
		{"short window", &jetstream.StreamConfig{Name: name, Subjects: events, Duplicates: 20 * time.Second}, 1, "FAIL", "at least twice PRESENCE_OUTBOX_CLAIM_AFTER (15s)"},
		{"missing reset", &jetstream.StreamConfig{Name: name, Subjects: events[:2], Duplicates: time.Minute}, 1, "FAIL", "do not capture " + p + ".reset"},
		{"fits", &jetstream.StreamConfig{Name: name, Subjects: events, Duplicates: 30 * time.Second}, 0, "ok", "duplicate window 30s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A stream of its own per case: the server removes a deleted
			// stream's files in the background, and creating one of the
			// same name at once can fail ("error creating store").
			sname := name + "_" + strings.ReplaceAll(tc.name, " ", "_")
			env := maps.Clone(env)
			env["PRESENCE_STREAM"] = sname
			if tc.stream != nil {
				cfg := *tc.stream
				cfg.Name = sname
				if _, err := js.CreateStream(ctx, cfg); err != nil {
					t.Fatal(err)
				}
				// Deleted before the next case's, which takes the same subjects.
				t.Cleanup(func() { _ = js.DeleteStream(ctx, sname) })
			}
			contains := strings.ReplaceAll(tc.contains, `"`+name+`"`, `"`+sname+`"`)
			code, out := checkRun(t, env)
			if code != tc.code || outcome(out, "nats stream "+sname) != tc.outcome || !strings.Contains(out, contains) {
				t.Fatalf("exit %d, stream check %s; want exit %d, %s, and %q in:\n%s", code, outcome(out, "nats stream "+sname), tc.code, tc.outcome, contains, out)
			}
		})
	}
}

// Every command the worker's scripts run has a probe in the scripts check,
// and every probe is for a command they run: a script that gains a command
// fails here until check.go probes it.
func TestEveryScriptCommandHasAProbe(t *testing.T) {
	cmds, err := presence.ScriptCommands()
	if err != nil {
		t.Fatal(err)
	}
	if _, missing := checkScriptSource(cmds); len(missing) > 0 {
		t.Errorf("the scripts run %v without a probe in scriptProbes", missing)
	}
	used := map[string]bool{}
	for _, c := range cmds {
		used[c] = true
	}
	for _, p := range scriptProbes {
		if !used[p.cmd] {
			t.Errorf("scriptProbes has a probe for %s, which no script runs", p.cmd)
		}
	}
	// A command without a probe is reported, not skipped.
	src, missing := checkScriptSource(append(cmds, "FLUSHALL"))
	if !slices.Equal(missing, []string{"FLUSHALL"}) || strings.Contains(src, "FLUSHALL") {
		t.Errorf("an unknown command: missing %v, want [FLUSHALL]", missing)
	}
}

// deployACLSetUser returns the ACL SETUSER command that makes the user of
// deploy/redis/users.acl, with the password "pw".
func deployACLSetUser(t *testing.T) []any {
	t.Helper()
	data, err := os.ReadFile("../../deploy/redis/users.acl")
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "user" && f[1] == "presenced" {
			rules = f[2:]
		}
	}
	if rules == nil {
		t.Fatal("no presenced user line in deploy/redis/users.acl")
	}
	args := []any{"ACL", "SETUSER", "presenced"}
	for _, r := range rules {
		if strings.HasPrefix(r, "#") { // the password hash placeholder
			r = ">pw"
		}
		args = append(args, r)
	}
	return args
}

// TestCheckWithDeployACL: presenced check passes its Redis checks as the
// user of deploy/redis/users.acl (the ACL the worker needs and no more),
// the scripts check included; only the keyspace events check warns (CONFIG
// is not granted).
func TestCheckWithDeployACL(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t)
	if err := r.Client(t).Do(context.Background(), deployACLSetUser(t)...).Err(); err != nil {
		t.Fatal(err)
	}
	u := url.URL{Scheme: "redis", Host: r.Addr, Path: "/0", User: url.UserPassword("presenced", "pw")}
	code, out := checkRun(t, map[string]string{"REDIS_URL": u.String(), "NATS_URL": n.URL(), "PRESENCE_SUBJECT_PREFIX": testenv.Prefix(t)})
	for name, w := range map[string]string{
		"redis":                     "ok",
		"redis version":             "ok",
		"redis keyspace events":     "WARN",
		"redis scripts":             "ok",
		"redis streams and reads":   "ok",
		"redis expiry subscription": "ok",
	} {
		if got := outcome(out, name); got != w {
			t.Errorf("%s: %s, want %s", name, got, w)
		}
	}
	if code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}
}

// TestCheckSentinel: with Sentinel, check asks each sentinel for the
// master, checks the quorum, and runs the Redis checks on the master it
// names; a sentinel that does not answer, or a master name no sentinel
// knows, fails the check.
func TestCheckSentinel(t *testing.T) {
	master := testenv.StartRedis(t, testenv.WithConfig("notify-keyspace-events", "Ex"))
	sc := testenv.SentinelConfig{Master: "pm", Quorum: 2, DownAfter: 5 * time.Second, FailoverTimeout: 10 * time.Second}
	ss := testenv.StartSentinels(t, master, 3, sc)
	n := testenv.StartNATS(t)
	p := testenv.Prefix(t)
	env := map[string]string{"REDIS_SENTINEL_ADDRS": ss[0].Addr + "," + ss[1].Addr + "," + ss[2].Addr, "REDIS_SENTINEL_MASTER": "pm",
		"NATS_URL": n.URL(), "PRESENCE_SUBJECT_PREFIX": p, "PRESENCE_KEY_PREFIX": p + ":"}
	code, out := checkRun(t, env)
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out)
	}
	names := []string{"redis sentinel quorum", "redis", "redis version", "redis keyspace events", "redis scripts", "redis streams and reads", "redis expiry subscription"}
	for _, s := range ss {
		names = append(names, "redis sentinel "+s.Addr)
	}
	for _, name := range names {
		if got := outcome(out, name); got != "ok" {
			t.Errorf("%s: %s, want ok", name, got)
		}
	}
	if want := fmt.Sprintf(`redis: reachable at master "pm" at %s`, master.Addr); !strings.Contains(out, want) {
		t.Errorf("output does not say which master: want %q", want)
	}

	ss[2].Stop(t)
	code, out = checkRun(t, env)
	if code != 1 || outcome(out, "redis sentinel "+ss[2].Addr) != "FAIL" || outcome(out, "redis scripts") != "ok" {
		t.Errorf("one sentinel down: exit %d, want 1 with that sentinel FAIL and the master checked:\n%s", code, out)
	}

	env["REDIS_SENTINEL_MASTER"] = "other"
	code, out = checkRun(t, env)
	if code != 1 || !strings.Contains(out, `knows no master named "other"`) || outcome(out, "redis scripts") != "skip" {
		t.Errorf("unknown master: exit %d, want 1, each sentinel saying so and the Redis checks skipped:\n%s", code, out)
	}
}

// clusterCheckNames returns the names of the lines `presenced check` prints
// for the masters of rc: "redis <addr>" and its per-server checks.
func clusterCheckNames(t *testing.T, rc *testenv.RedisCluster) []string {
	t.Helper()
	var names []string
	for _, m := range rc.Masters(t) {
		names = append(names, "redis "+m)
		for _, n := range []string{"version", "keyspace events", "scripts", "streams and reads", "expiry subscription"} {
			names = append(names, "redis "+m+" "+n)
		}
	}
	return names
}

// TestCheckCluster: with REDIS_CLUSTER_ADDRS, check reads the slot map
// from a seed, runs the Redis checks on every master (each line naming
// it), and compares the recorded partition count with
// REDIS_CLUSTER_PARTITIONS: a healthy cluster passes and the scratch keys
// are gone; a recorded count other than the configured one fails naming
// the setting to use; a user denied ASKING fails the cluster check, and one
// denied XADD the scripts and streams checks of every master; a master down fails its line and, once the
// others notice, their cluster_state.
func TestCheckCluster(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0, testenv.WithConfig("notify-keyspace-events", "Ex"))
	n := testenv.StartNATS(t)
	p := testenv.Prefix(t)
	ctx := context.Background()
	env := map[string]string{"REDIS_URL": "", "REDIS_CLUSTER_ADDRS": strings.Join(rc.Addrs(), ","), "NATS_URL": n.URL(), "PRESENCE_SUBJECT_PREFIX": p, "PRESENCE_KEY_PREFIX": p + ":"}
	names := append(clusterCheckNames(t, rc), "redis cluster", "redis partitions")

	code, out := checkRun(t, env)
	for _, name := range names {
		if got := outcome(out, name); got != "ok" {
			t.Errorf("%s: %s, want ok", name, got)
		}
	}
	if code != 0 || !strings.Contains(out, "redis partitions: not recorded yet: the first replica records 12") || !strings.Contains(out, "assigns all 16384 slots to 3 masters") {
		t.Errorf("healthy cluster: exit %d, want 0, the slots served and the partition count not recorded yet", code)
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}
	admin := rc.Client(t)
	err := admin.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		keys, err := m.Keys(ctx, p+":*").Result()
		if err == nil && len(keys) > 0 {
			err = fmt.Errorf("keys left on %s: %v", m.Options().Addr, keys)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	// The data was made with 24 partitions.
	if err := admin.Set(ctx, p+":partitions", "24", 0).Err(); err != nil {
		t.Fatal(err)
	}
	code, out = checkRun(t, env)
	if code != 1 || outcome(out, "redis partitions") != "FAIL" || !strings.Contains(out, "has 24 partitions") || !strings.Contains(out, "set REDIS_CLUSTER_PARTITIONS=24") {
		t.Errorf("partition count mismatch: exit %d, want 1 with the partitions check failing and naming REDIS_CLUSTER_PARTITIONS=24:\n%s", code, out)
	}
	env["REDIS_CLUSTER_PARTITIONS"] = "24"
	code, out = checkRun(t, env)
	if code != 0 || outcome(out, "redis partitions") != "ok" {
		t.Errorf("partition count as recorded: exit %d, want 0:\n%s", code, out)
	}

	// A user that may do everything on the prefix but XADD, CONFIG and
	// ASKING (which the cluster client sends after an ASK redirect), on
	// every node.
	for _, a := range rc.Addrs() {
		if err := rc.Node(t, a).Client(t).Do(ctx, "ACL", "SETUSER", "worker", "on", ">pw", "~"+p+":*", "&*", "+@all", "-xadd", "-config", "-asking").Err(); err != nil {
			t.Fatal(err)
		}
	}
	user := maps.Clone(env)
	user["REDIS_USERNAME"], user["REDIS_PASSWORD"] = "worker", "pw"
	code, out = checkRun(t, user)
	if code != 1 || outcome(out, "redis cluster") != "FAIL" || !strings.Contains(out, "needs +cluster|slots +command +asking") {
		t.Errorf("user denied XADD and ASKING: exit %d, want 1 with the cluster check failing and naming the grants", code)
	}
	for _, m := range rc.Masters(t) {
		for name, w := range map[string]string{
			"redis " + m:                          "ok",
			"redis " + m + " keyspace events":     "WARN",
			"redis " + m + " scripts":             "FAIL",
			"redis " + m + " streams and reads":   "FAIL",
			"redis " + m + " expiry subscription": "ok",
		} {
			if got := outcome(out, name); got != w {
				t.Errorf("user denied XADD and ASKING: %s: %s, want %s", name, got, w)
			}
		}
	}
	if !strings.Contains(out, "NOPERM") || !strings.Contains(out, "~"+p+":*") {
		t.Errorf("output does not explain the ACL denial")
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}

	// A master down, first among the seeds (check asks the next): its
	// line fails, and once the other masters mark it failed
	// (cluster-node-timeout), so do theirs.
	masters := rc.Masters(t)
	down := masters[0]
	env["REDIS_CLUSTER_ADDRS"] = strings.Join(append([]string{down}, masters[1:]...), ",")
	rc.Kill(t, down)
	testenv.Eventually(t, 10*time.Second, func() bool {
		code, out = checkRun(t, env)
		return code == 1 && outcome(out, "redis "+down) == "FAIL" && outcome(out, "redis "+down+" scripts") == "skip" &&
			outcome(out, "redis "+masters[1]) == "FAIL" && strings.Contains(out, `cluster_state is "fail"`)
	}, "a master down: want its line and the others' cluster_state failing")
	if !strings.Contains(out, "redis "+down+": not reachable") {
		t.Errorf("the line of the master down does not say it is not reachable:\n%s", out)
	}
}

// TestCheckClusterWithDeployACL: on a Redis Cluster, presenced check
// passes as the user of deploy/redis/users.acl (set on every node): the
// cluster client's own commands, and on every master the scripts, stream
// and subscription checks; the keyspace events check warns (CONFIG is not
// granted) and cluster_state is not read (CLUSTER INFO is not granted).
func TestCheckClusterWithDeployACL(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0, testenv.WithConfig("notify-keyspace-events", "Ex"))
	n := testenv.StartNATS(t)
	for _, a := range rc.Addrs() {
		if err := rc.Node(t, a).Client(t).Do(context.Background(), deployACLSetUser(t)...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	code, out := checkRun(t, map[string]string{"REDIS_URL": "", "REDIS_CLUSTER_ADDRS": strings.Join(rc.Addrs(), ","), "REDIS_USERNAME": "presenced", "REDIS_PASSWORD": "pw",
		"NATS_URL": n.URL(), "PRESENCE_SUBJECT_PREFIX": testenv.Prefix(t)})
	want := map[string]string{"redis cluster": "ok", "redis partitions": "ok"}
	for _, m := range rc.Masters(t) {
		want["redis "+m] = "ok"
		want["redis "+m+" version"] = "ok"
		want["redis "+m+" keyspace events"] = "WARN"
		want["redis "+m+" scripts"] = "ok"
		want["redis "+m+" streams and reads"] = "ok"
		want["redis "+m+" expiry subscription"] = "ok"
	}
	for name, w := range want {
		if got := outcome(out, name); got != w {
			t.Errorf("%s: %s, want %s", name, got, w)
		}
	}
	if code != 0 || !strings.Contains(out, "CLUSTER INFO denied") {
		t.Errorf("exit %d, want 0 and cluster_state not read", code)
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}
}
