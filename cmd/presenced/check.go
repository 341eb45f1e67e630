package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/app"
	"github.com/presenced/presenced/presence"
)

// Outcomes of one check, as printed.
const (
	checkOK   = "ok"
	checkWarn = "WARN"
	checkFail = "FAIL"
	checkSkip = "skip"
)

// minRedisMajor and minRedisMinor are the oldest Redis the worker runs on
// (SET ... NX GET and the XAUTOCLAIM reply it reads need 7.0).
const minRedisMajor, minRedisMinor = 7, 0

// scriptProbes are the Lua lines of the scripts check, one per Redis command
// the worker's scripts run (presence.ScriptCommands), in the order they run
// on scratch keys under the key prefix:
//
//	KEYS[1] string, KEYS[2] sorted set, KEYS[3] hash, KEYS[4] stream with
//	the consumer group "check" (created first by probeSetup)
//
// so that an ACL that denies one of them (or the scripts' keys) fails here
// rather than on the first heartbeat. A command the scripts run without a
// probe here fails the check (and TestEveryScriptCommandHasAProbe); DEL,
// which the scripts run too, comes last and removes the keys.
var scriptProbes = []struct{ cmd, lua string }{
	{"TIME", "redis.call('TIME')"},
	{"SET", "redis.call('SET', KEYS[1], '1', 'PX', 60000, 'GET')"},
	{"GET", "redis.call('GET', KEYS[1])"},
	{"GETDEL", "redis.call('GETDEL', KEYS[1])"},
	{"SET", "redis.call('SET', KEYS[1], '1', 'PX', 60000)"},
	{"EXISTS", "redis.call('EXISTS', KEYS[1])"},
	{"PTTL", "redis.call('PTTL', KEYS[1])"},
	{"TYPE", "redis.call('TYPE', KEYS[1])"},
	{"PEXPIREAT", "redis.call('PEXPIREAT', KEYS[1], redis.call('TIME')[1] * 1000 + 60000)"},
	{"INCRBY", "redis.call('INCRBY', KEYS[1], 1)"},
	{"INCR", "redis.call('INCR', KEYS[1])"},
	{"ZADD", "redis.call('ZADD', KEYS[2], 1, 'u')"},
	{"ZRANGEBYSCORE", "redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)"},
	{"ZCOUNT", "redis.call('ZCOUNT', KEYS[2], '-inf', '+inf')"},
	{"ZREM", "redis.call('ZREM', KEYS[2], 'u')"},
	{"HSETNX", "redis.call('HSETNX', KEYS[3], 'u', '1')"},
	{"HSET", "redis.call('HSET', KEYS[3], 'u', '1')"},
	{"HGET", "redis.call('HGET', KEYS[3], 'u')"},
	{"HMGET", "redis.call('HMGET', KEYS[3], 'u', 'n')"},
	{"HINCRBY", "redis.call('HINCRBY', KEYS[3], 'n', 1)"},
	{"HLEN", "redis.call('HLEN', KEYS[3])"},
	{"HKEYS", "redis.call('HKEYS', KEYS[3])"},
	{"HGETALL", "redis.call('HGETALL', KEYS[3])"},
	{"HSCAN", "redis.call('HSCAN', KEYS[3], 0)"},
	{"HDEL", "redis.call('HDEL', KEYS[3], 'u')"},
	{"XADD", "redis.call('XADD', KEYS[4], '*', 's', 'check')"},
	{"XRANGE", "redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)"},
	{"XPENDING", "redis.call('XPENDING', KEYS[4], 'check')"},
	{"XCLAIM", "redis.call('XCLAIM', KEYS[4], 'check', 'check', 0, '0-1', 'JUSTID')"},
	{"XINFO GROUPS", "redis.call('XINFO', 'GROUPS', KEYS[4])"},
	{"XINFO CONSUMERS", "redis.call('XINFO', 'CONSUMERS', KEYS[4], 'check')"},
	{"XGROUP DELCONSUMER", "redis.call('XGROUP', 'DELCONSUMER', KEYS[4], 'check', 'check')"},
	{"XTRIM", "redis.call('XTRIM', KEYS[4], 'MINID', '0-1')"},
	{"DEL", "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])"},
}

// probeSetup creates the stream and group the stream probes read; the
// worker runs XGROUP CREATE itself (outside scripts) when it starts.
const probeSetup = "redis.call('XGROUP', 'CREATE', KEYS[4], 'check', '$', 'MKSTREAM')"

// checkScriptSource returns the scripts check for cmds (the commands the
// worker's scripts run): probeSetup, then the probe of each of cmds, then
// "return 1"; and those of cmds that have no probe.
func checkScriptSource(cmds []string) (src string, missing []string) {
	want := make(map[string]bool, len(cmds))
	for _, c := range cmds {
		want[c] = true
	}
	lines := []string{probeSetup}
	for _, p := range scriptProbes {
		if want[p.cmd] {
			lines = append(lines, p.lua)
			delete(want, p.cmd)
		}
	}
	for _, c := range cmds {
		if want[c] {
			missing = append(missing, c)
		}
	}
	return strings.Join(append(lines, "return 1"), "\n") + "\n", missing
}

// checkLine is one result.
type checkLine struct {
	outcome, name, detail string
}

// checker prints results as they come and remembers whether one failed.
type checker struct {
	w              io.Writer
	failed, warned int
}

func (c *checker) report(l checkLine) {
	switch l.outcome {
	case checkFail:
		c.failed++
	case checkWarn:
		c.warned++
	}
	fmt.Fprintf(c.w, "%-4s  %s: %s\n", l.outcome, l.name, l.detail)
}

// runCheck is `presenced check`: with the worker's settings, it checks that
// Redis and NATS are reachable and allow what the worker does, one line per
// check, and returns 1 if any check failed (warnings do not fail).
func runCheck(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, code := loadConfig(args, getenv, stdout, stderr)
	if code >= 0 {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*cfg.ConnectTimeout+10*time.Second)
	defer cancel()
	c := &checker{w: stdout}
	checkRedis(ctx, cfg, c.report)
	checkNATS(ctx, cfg, c.report)
	if cfg.Stream != "" {
		checkStream(ctx, cfg, c.report)
	}
	fmt.Fprintf(stdout, "presenced check: %d failed, %d warnings\n", c.failed, c.warned)
	if c.failed > 0 {
		return 1
	}
	return 0
}

// checkRedis checks that Redis answers, is 7.0 or later, has (or lets the
// worker set) expired keyspace events, and lets the worker's user run its
// scripts and stream commands on the key prefix and subscribe to the expiry
// channel: on the server of REDIS_URL, the master the sentinels name, or
// every master of a Redis Cluster (checkRedisCluster).
func checkRedis(ctx context.Context, cfg config.Config, report func(checkLine)) {
	if cfg.Cluster() {
		checkRedisCluster(ctx, cfg, report)
		return
	}
	skipAll := func(why string) {
		for _, n := range serverCheckNames {
			report(checkLine{checkSkip, n, why})
		}
	}
	opts, err := app.RedisOptions(cfg)
	if err != nil {
		report(checkLine{checkFail, "redis", err.Error()})
		skipAll("no redis connection")
		return
	}
	where := config.RedactURL(cfg.RedisURL)
	if cfg.Sentinel() {
		// The checks below run on the master the sentinels name.
		opts.Addr = checkSentinels(ctx, cfg, report)
		if opts.Addr == "" {
			report(checkLine{checkFail, "redis", fmt.Sprintf("no sentinel names the master %q", cfg.RedisSentinelMaster)})
			skipAll("no redis master")
			return
		}
		where = fmt.Sprintf("master %q at %s", cfg.RedisSentinelMaster, opts.Addr)
	}
	opts.DialTimeout = cfg.ConnectTimeout
	opts.MaxRetries = -1 // a check reports the first failure, it does not retry
	opts.ClientName = "presenced-check"
	rdb := redis.NewClient(opts)
	defer rdb.Close()

	pctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		report(checkLine{checkFail, "redis", fmt.Sprintf("not reachable at %s: %v", where, err)})
		skipAll("redis not reachable")
		return
	}
	if cfg.Sentinel() {
		// The sentinels may lag behind a demotion: the worker needs a master.
		rctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		role, err := rdb.Do(rctx, "ROLE").Slice()
		cancel()
		if err != nil || len(role) == 0 || role[0] != "master" {
			report(checkLine{checkFail, "redis", fmt.Sprintf("%s is not a master (ROLE %v, %v)", where, role, err)})
			skipAll("redis is not a master")
			return
		}
	}
	report(checkLine{checkOK, "redis", fmt.Sprintf("reachable at %s", where)})

	cctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	for _, l := range serverChecks(cctx, rdb, cfg.KeyPrefix, cfg.KeyPrefix, cfg.RedisDB()) {
		report(l)
	}
}

// serverChecks runs the checks of one server that takes the worker's
// writes (named in serverCheckNames): its version, keyspace events, the
// scripts' commands, the stream commands and the expiry subscription on
// database db. The scratch keys are scratch+"check..." (on a cluster, in a
// slot of that server), under prefix, the worker's key prefix; they are
// removed.
func serverChecks(ctx context.Context, rdb *redis.Client, prefix, scratch string, db int) []checkLine {
	return []checkLine{
		redisVersion(ctx, rdb),
		redisNotifications(ctx, rdb),
		redisScripts(ctx, rdb, prefix, scratch),
		redisStreams(ctx, rdb, prefix, scratch),
		redisExpirySubscription(ctx, rdb, db),
	}
}

// serverCheckNames are the names of serverChecks' lines, in order.
var serverCheckNames = []string{"redis version", "redis keyspace events", "redis scripts", "redis streams and reads", "redis expiry subscription"}

// checkSentinels checks that each sentinel answers and names the master
// REDIS_SENTINEL_MASTER, one line each, and that the sentinels can agree on
// a failover (SENTINEL CKQUORUM). It returns the master's address the most
// sentinels name, or "" when none names one.
func checkSentinels(ctx context.Context, cfg config.Config, report func(checkLine)) string {
	fo, err := app.RedisFailoverOptions(cfg)
	if err != nil {
		report(checkLine{checkFail, "redis sentinels", err.Error()})
		return ""
	}
	votes := map[string]int{}
	var best string
	var answered *redis.SentinelClient
	for _, addr := range fo.SentinelAddrs {
		name := "redis sentinel " + addr
		sc := redis.NewSentinelClient(app.SentinelOptions(cfg, fo, addr, "presenced-check"))
		defer sc.Close()
		sctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		a, err := sc.GetMasterAddrByName(sctx, fo.MasterName).Result()
		cancel()
		switch {
		case errors.Is(err, redis.Nil):
			report(checkLine{checkFail, name, fmt.Sprintf("knows no master named %q", fo.MasterName)})
		case err != nil:
			report(checkLine{checkFail, name, fmt.Sprintf("not reachable: %v", err)})
		case len(a) != 2:
			report(checkLine{checkFail, name, fmt.Sprintf("unexpected reply %v", a)})
		default:
			master := net.JoinHostPort(a[0], a[1])
			report(checkLine{checkOK, name, fmt.Sprintf("names master %q at %s", fo.MasterName, master)})
			votes[master]++
			if votes[master] > votes[best] {
				best = master
			}
			answered = sc
		}
	}
	if len(votes) > 1 {
		report(checkLine{checkWarn, "redis sentinels", fmt.Sprintf("the sentinels name different masters %v (a failover under way?); checking %s", votes, best)})
	}
	if answered != nil {
		qctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
		if res, err := answered.CkQuorum(qctx, fo.MasterName).Result(); err != nil {
			report(checkLine{checkFail, "redis sentinel quorum", fmt.Sprintf("SENTINEL CKQUORUM %s: %v", fo.MasterName, err)})
		} else {
			report(checkLine{checkOK, "redis sentinel quorum", res})
		}
	}
	return best
}

func redisVersion(ctx context.Context, rdb *redis.Client) checkLine {
	const name = "redis version"
	v, err := serverVersion(ctx, rdb)
	if err != nil {
		return checkLine{checkFail, name, fmt.Sprintf("cannot read the server version: %v", err)}
	}
	major, minor, ok := parseVersion(v)
	switch {
	case !ok:
		return checkLine{checkFail, name, fmt.Sprintf("unrecognised version %q, need %d.%d or later", v, minRedisMajor, minRedisMinor)}
	case major < minRedisMajor || (major == minRedisMajor && minor < minRedisMinor):
		return checkLine{checkFail, name, fmt.Sprintf("%s is too old: the worker needs %d.%d or later (SET ... NX GET)", v, minRedisMajor, minRedisMinor)}
	}
	return checkLine{checkOK, name, fmt.Sprintf("%s (need %d.%d or later)", v, minRedisMajor, minRedisMinor)}
}

// serverVersion reads redis_version from INFO server, or from HELLO (which
// every user may run) when INFO is denied.
func serverVersion(ctx context.Context, rdb *redis.Client) (string, error) {
	info, err := rdb.Info(ctx, "server").Result()
	if err == nil {
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				return v, nil
			}
		}
		return "", errors.New("INFO server has no redis_version")
	}
	res, herr := rdb.Do(ctx, "HELLO").Result()
	if herr != nil {
		return "", fmt.Errorf("INFO server: %w; HELLO: %w", err, herr)
	}
	switch m := res.(type) {
	case map[any]any: // RESP3
		if v, ok := m["version"].(string); ok {
			return v, nil
		}
	case []any: // RESP2: a flat list of fields and values
		for i := 0; i+1 < len(m); i += 2 {
			if k, _ := m[i].(string); k == "version" {
				if v, ok := m[i+1].(string); ok {
					return v, nil
				}
			}
		}
	}
	return "", fmt.Errorf("INFO server: %w; HELLO has no version", err)
}

// parseVersion returns the major and minor numbers of "7.2.4".
func parseVersion(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}

func redisNotifications(ctx context.Context, rdb *redis.Client) checkLine {
	const name = "redis keyspace events"
	cur, err := rdb.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		if !isDenied(err) {
			return checkLine{checkFail, name, fmt.Sprintf("CONFIG GET notify-keyspace-events: %v", err)}
		}
		return checkLine{checkWarn, name, fmt.Sprintf("CONFIG GET denied (%v): the worker cannot check or set notify-keyspace-events; "+
			"unless it includes E and x, offline events wait for the sweep (PRESENCE_RECONCILE_INTERVAL)", err)}
	}
	flags := cur["notify-keyspace-events"]
	if presence.MergeNotifyFlags(flags) != flags {
		return checkLine{checkWarn, name, fmt.Sprintf("notify-keyspace-events is %q, without E and x: the worker adds them at start if CONFIG SET is allowed; "+
			"otherwise offline events wait for the sweep (PRESENCE_RECONCILE_INTERVAL)", flags)}
	}
	return checkLine{checkOK, name, fmt.Sprintf("notify-keyspace-events is %q (has E and x)", flags)}
}

func redisScripts(ctx context.Context, rdb *redis.Client, prefix, scratch string) checkLine {
	const name = "redis scripts"
	cmds, err := presence.ScriptCommands()
	if err != nil {
		return checkLine{checkFail, name, fmt.Sprintf("cannot tell which commands the worker's scripts run: %v", err)}
	}
	src, missing := checkScriptSource(cmds)
	if len(missing) > 0 {
		return checkLine{checkFail, name, fmt.Sprintf("the worker's scripts run %s, which presenced check has no probe for (add one to scriptProbes in cmd/presenced/check.go)",
			strings.Join(missing, ", "))}
	}
	script := redis.NewScript(src)
	k := scratch + "check"
	keys := []string{k, k + ":z", k + ":h", k + ":stream"}
	// Run loads the script (SCRIPT LOAD) and calls EVALSHA, as the worker does.
	if err := script.Load(ctx, rdb).Err(); err != nil {
		return checkLine{checkFail, name, deniedHint("SCRIPT LOAD", err, prefix, src)}
	}
	err = script.EvalSha(ctx, rdb, keys).Err()
	if err != nil {
		_ = rdb.Del(context.WithoutCancel(ctx), keys...).Err() // best effort: the script stopped half-way
		return checkLine{checkFail, name, deniedHint("EVALSHA", err, prefix, src)}
	}
	return checkLine{checkOK, name, fmt.Sprintf("SCRIPT LOAD, EVALSHA and the %d commands the scripts run, on %s* keys", len(cmds), prefix)}
}

func redisStreams(ctx context.Context, rdb *redis.Client, prefix, scratch string) checkLine {
	const name = "redis streams and reads"
	k := scratch + "check:stream"
	defer rdb.Del(context.WithoutCancel(ctx), k) // best effort; a denied DEL was reported by the scripts check
	steps := []struct {
		cmd string
		run func() error
	}{
		{"XGROUP CREATE", func() error { return rdb.XGroupCreateMkStream(ctx, k, "check", "0").Err() }},
		{"XADD", func() error { return rdb.XAdd(ctx, &redis.XAddArgs{Stream: k, Values: []string{"s", "check"}}).Err() }},
		{"XREADGROUP", func() error {
			return rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "check", Consumer: "check", Streams: []string{k, ">"}, Count: 1, Block: -1}).Err()
		}},
		{"XPENDING", func() error {
			return rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: k, Group: "check", Start: "-", End: "+", Count: 1}).Err()
		}},
		{"XAUTOCLAIM", func() error {
			return rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: k, Group: "check", Consumer: "check", Start: "0", Count: 1}).Err()
		}},
		{"XACK", func() error { return rdb.XAck(ctx, k, "check", "0-1").Err() }},
		{"XLEN", func() error { return rdb.XLen(ctx, k).Err() }},
		{"XREAD", func() error {
			return rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{k, "0-0"}, Count: 1, Block: -1}).Err()
		}},
		{"XREVRANGE", func() error { return rdb.XRevRangeN(ctx, k, "+", "-", 1).Err() }},
		{"XGROUP DELCONSUMER", func() error { return rdb.XGroupDelConsumer(ctx, k, "check", "check").Err() }},
		{"MGET", func() error { return rdb.MGet(ctx, scratch+"check").Err() }},
		{"ROLE", func() error { return rdb.Do(ctx, "ROLE").Err() }},
		{"DEL", func() error { return rdb.Del(ctx, k).Err() }},
	}
	for _, s := range steps {
		if err := s.run(); err != nil && !errors.Is(err, redis.Nil) {
			return checkLine{checkFail, name, deniedHint(s.cmd, err, prefix, "")}
		}
	}
	return checkLine{checkOK, name, fmt.Sprintf("outbox stream commands and MGET on %s* keys", prefix)}
}

func redisExpirySubscription(ctx context.Context, rdb *redis.Client, db int) checkLine {
	const name = "redis expiry subscription"
	channel := fmt.Sprintf("__keyevent@%d__:expired", db)
	ps := rdb.PSubscribe(ctx, channel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		if isDenied(err) {
			return checkLine{checkFail, name, fmt.Sprintf("PSUBSCRIBE %s: %v: allow the channel (&%s) for the worker's user", channel, err, channel)}
		}
		return checkLine{checkFail, name, fmt.Sprintf("PSUBSCRIBE %s: %v", channel, err)}
	}
	return checkLine{checkOK, name, "PSUBSCRIBE " + channel}
}

// isDenied reports an ACL denial or a disabled (renamed) command.
func isDenied(err error) bool {
	s := err.Error()
	return strings.Contains(s, "NOPERM") || strings.Contains(s, "unknown command") || strings.HasPrefix(s, "ERR unknown")
}

// deniedHint explains err from cmd; src is the script that ran, if any.
func deniedHint(cmd string, err error, prefix, src string) string {
	msg := err.Error()
	// A denial inside a script names only the script's line: show it.
	if _, after, ok := strings.Cut(msg, "@user_script:"); ok && src != "" {
		digits := strings.TrimRightFunc(after, func(r rune) bool { return r < '0' || r > '9' })
		if n, err := strconv.Atoi(digits); err == nil {
			if lines := strings.Split(src, "\n"); n >= 1 && n <= len(lines) {
				msg += " (" + strings.TrimSpace(lines[n-1]) + ")"
			}
		}
	}
	if strings.Contains(msg, "NOPERM") || strings.Contains(msg, "can't run this command") || strings.Contains(msg, "no permissions") {
		return fmt.Sprintf("%s: %s: denied by ACL: the worker's Redis user needs the commands presenced runs, on keys ~%s*", cmd, msg, prefix)
	}
	return fmt.Sprintf("%s: %s", cmd, msg)
}
