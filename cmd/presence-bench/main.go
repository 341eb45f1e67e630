package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/presenced/presenced/presence"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "seed-worker" {
		os.Exit(runSeedWorker(os.Args[2:], os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// config is the bench's settings; scale fills the zero ones.
type config struct {
	scale    string
	users    []int
	replicas int
	baseline string
	jsonOut  string

	external      bool
	natsURL       string
	redisURL      string
	natsMode      string
	natsBin       string
	presencedBin  string
	keyPrefix     string
	subjectPrefix string
	workerPIDs    []int

	// redisCluster: Redis is a Redis Cluster of clusterMasters masters
	// with clusterReplicas replicas each, started here; the workers get
	// clusterPartitions (0: presenced's default).
	redisCluster      bool
	clusterMasters    int
	clusterReplicas   int
	clusterPartitions int

	hbUsers, batchUsers, rounds int
	window, batchWindow         int
	batchSize                   int
	replyEvery                  int
	hbTTL                       time.Duration

	offTTL, hbInterval, offDuration, offGrace time.Duration
	leavePct                                  float64
	bgKeys                                    int

	idleTTL, idleDuration time.Duration
	queryReps, query10k   int
	queryIDs              int

	stormUsers int
	stormBound time.Duration

	gwUsers      int
	gateways     int
	connsPerUser float64
	gwLease      time.Duration

	ceilingN        int
	seedConcurrency int
	seedPending     int
	scanCount       int

	pprofDir       string
	pprofSeconds   int
	scenarios      map[string]bool
	timeout        time.Duration
	keep           bool
	workerLogLevel string
	presencedFlags []string
	stream         string // PRESENCE_STREAM of the presenced workers; JetStream on in the bench's nats-server
}

var allScenarios = []string{"ceiling", "throughput", "offline", "idle", "query", "storm", "gateways"}

func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `presence-bench: end-to-end benchmark of presenced, with the seed's algorithm beside it.

Usage:
  presence-bench [flags]

Scenarios (--scenarios, comma-separated; default all):
  ceiling     redis-benchmark -P 32 SET key:__rand_int__ 1 EX 60 GET (and plain SET) on the same redis-server,
              repeated longer until Redis is saturated (>= 95% of a core), at most 4 runs
  throughput  heartbeats end to end: single-id and 100-id messages, new users and refreshes
  offline     offline latency (event minus deadline) with users leaving at --leave-per-min, at each --users
  idle        CPU of idle replicas with the largest --users online (long TTL), Redis memory per user
              (the memory target is judged only from this scenario)
  query       one id, --query-ids ids, full paged listing (with the idle scenario's users online)
  storm       a reconnect storm: --storm-users single-id first heartbeats (new users, no reply subject)
              published as fast as one NATS connection can; users stored and online by --storm-bound and
              at the end, messages each replica dropped, peak RSS of each replica
  gateways    --gw-users online through --gateways gateways with leases, --conns-per-user named connections
              per user on average (presenced only): users leaving as in offline (every connection stops),
              and one gateway killed halfway (its lease and its heartbeats stop); offline latency after the
              deadline, and after the killed gateway's lease expired

Redis Cluster (--redis-cluster): the bench starts --redis-cluster-masters masters (and
--redis-cluster-replicas replicas each) from the local redis-server and redis-cli, the workers
run on REDIS_CLUSTER_ADDRS, and each phase reports every master's CPU seconds, commands and
keys and their spread (max/min - 1). Only throughput and offline run there, with --baseline none:
the seed, ceiling, idle, query, storm and gateways read or write keys of the one-server layout.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func parseConfig(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("presence-bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.scale, "scale", "small", "small (10k users, seconds per scenario) or full (10k, 100k and 1M users; tens of minutes)")
	users := fs.String("users", "", "online users for offline/idle/query, comma-separated (default: small 10000; full 10000,100000,1000000)")
	fs.IntVar(&c.replicas, "replicas", 3, "worker processes per implementation")
	fs.StringVar(&c.baseline, "baseline", "seed", "seed: run every scenario through the seed's algorithm too; none: presenced only")
	fs.StringVar(&c.jsonOut, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&c.natsURL, "nats-url", os.Getenv("NATS_URL"), "NATS of an existing deployment (with --redis-url); default: start nats-server (env NATS_URL)")
	fs.StringVar(&c.redisURL, "redis-url", os.Getenv("REDIS_URL"), "Redis of an existing deployment (with --nats-url); default: start redis-server (env REDIS_URL)")
	fs.BoolVar(&c.redisCluster, "redis-cluster", false, "start a Redis Cluster instead of one redis-server (throughput and offline only, --baseline none)")
	fs.IntVar(&c.clusterMasters, "redis-cluster-masters", 3, "--redis-cluster: masters (at least 3)")
	fs.IntVar(&c.clusterReplicas, "redis-cluster-replicas", 0, "--redis-cluster: replicas of each master (they share the machine's cores with everything else)")
	fs.IntVar(&c.clusterPartitions, "redis-cluster-partitions", 0, "--redis-cluster: the workers' REDIS_CLUSTER_PARTITIONS (0: presenced's default)")
	fs.StringVar(&c.natsMode, "nats", "process", "process: nats-server as a child process; embedded: in the bench process")
	fs.StringVar(&c.natsBin, "nats-server-bin", "", "nats-server binary (default: go build github.com/nats-io/nats-server/v2)")
	fs.StringVar(&c.presencedBin, "presenced-bin", "", "presenced binary (default: go build ./cmd/presenced)")
	fs.StringVar(&c.keyPrefix, "key-prefix", "presence:", "external deployment: its PRESENCE_KEY_PREFIX")
	fs.StringVar(&c.subjectPrefix, "subject-prefix", "presence", "external deployment: its PRESENCE_SUBJECT_PREFIX")
	pids := fs.String("worker-pids", "", "external deployment: pids of its presenced processes on this host, to measure their CPU and RSS")
	fs.IntVar(&c.hbUsers, "hb-users", 0, "throughput: users of the single-id scenarios (default: small 20000, full 100000)")
	fs.IntVar(&c.batchUsers, "batch-users", 0, "throughput: users of the batched scenarios (default: small 50000, full 1000000)")
	fs.IntVar(&c.rounds, "rounds", 0, "throughput: refresh rounds over the users (default: small 5, full 2)")
	fs.IntVar(&c.window, "window", 4096, "single-id messages awaiting a reply at once")
	fs.IntVar(&c.batchWindow, "batch-window", 256, "batched messages awaiting a reply at once")
	fs.IntVar(&c.batchSize, "batch-size", 100, "ids per batched message")
	fs.IntVar(&c.replyEvery, "reply-every", 1, "throughput: only every n-th message (and a round's last) asks for a reply; 1 means all, so every figure is exact")
	fs.DurationVar(&c.hbTTL, "hb-ttl", 10*time.Minute, "throughput: presence TTL (long, so nothing expires)")
	fs.DurationVar(&c.offTTL, "ttl", 0, "offline: presence TTL (default: small 5s, full 60s)")
	fs.DurationVar(&c.hbInterval, "hb-interval", 0, "offline: heartbeat period of a connected user (default ttl/2)")
	fs.DurationVar(&c.offDuration, "offline-duration", 0, "offline: how long users keep leaving (default: small 15s, full 2m)")
	fs.DurationVar(&c.offGrace, "offline-grace", 0, "offline: an offline event later than this after the deadline is late (in the percentiles, and a failure of none-missing); the scenario waits this long after the last deadline, and a leaver with no event by then is missing (default: small 10s, full 60s)")
	fs.Float64Var(&c.leavePct, "leave-per-min", 2, "offline: % of the online users who stop heartbeating per minute")
	fs.IntVar(&c.bgKeys, "background-keys", 0, "extra volatile keys in Redis (SET bg:<i> x EX 3600) for offline, idle and query")
	fs.DurationVar(&c.idleTTL, "idle-ttl", time.Hour, "idle/query: presence TTL (long: no expiry during the measurement)")
	fs.DurationVar(&c.idleDuration, "idle-duration", 0, "idle: measurement window (default: small 5s, full 30s)")
	fs.IntVar(&c.queryReps, "query-reps", 0, "query: one-id queries (default: small 200, full 1000)")
	fs.IntVar(&c.query10k, "query-batch-reps", 0, "query: --query-ids queries (default: small 100, full 300: enough that p99 is not the slowest one)")
	fs.IntVar(&c.queryIDs, "query-ids", 10000, "query: ids per multi-id query (half online)")
	fs.IntVar(&c.stormUsers, "storm-users", 0, "storm: single-id first heartbeats, one per new user (default: small 200000, full 1000000)")
	fs.DurationVar(&c.stormBound, "storm-bound", 90*time.Second, "storm: a user not stored, or without its online event, this long after the first publish is missing; the wait goes on to --timeout (or until nothing moves for 15s past the bound) to tell late from lost")
	fs.IntVar(&c.gwUsers, "gw-users", 0, "gateways: online users (default: small 20000, full 1000000)")
	fs.IntVar(&c.gateways, "gateways", 5, "gateways: gateways the users are connected through, each with a lease")
	fs.Float64Var(&c.connsPerUser, "conns-per-user", 1.3, "gateways: connections per user on average (1 to --gateways), each on another gateway")
	fs.DurationVar(&c.gwLease, "gateway-lease", 0, "gateways: presenced's --gateway-lease; must be shorter than --ttl, so the killed gateway's connections end by its lease (default: small 2s, full 15s)")
	fs.IntVar(&c.ceilingN, "ceiling-n", 0, "ceiling: redis-benchmark -n (default: small 200000, full 1000000)")
	fs.IntVar(&c.seedConcurrency, "seed-concurrency", 32, "seed: messages each seed worker handles at once (the seed's async handlers)")
	fs.IntVar(&c.seedPending, "seed-pending-limit", 0, "seed: messages each seed subscription holds before NATS drops them (0: the port's 65536 with 64 MiB; -1: no limit, as the Node seed's client)")
	fs.IntVar(&c.scanCount, "seed-scan-count", 100, "seed: SCAN COUNT of its listing (the seed's: 100)")
	fs.StringVar(&c.pprofDir, "pprof-dir", "", "profile replica 0 of each implementation during the refresh scenarios; profiles and `go tool pprof -top` go here")
	fs.IntVar(&c.pprofSeconds, "pprof-seconds", 10, "most seconds of each CPU profile; a shorter phase is profiled for its own length, rounded up to a second (one-second pieces, merged)")
	scen := fs.String("scenarios", strings.Join(allScenarios, ","), "scenarios to run")
	fs.DurationVar(&c.timeout, "timeout", 0, "bound on each wait within a scenario (default: small 2m, full 15m)")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (binaries, profiles)")
	fs.StringVar(&c.workerLogLevel, "worker-log-level", "warn", "presenced workers' LOG_LEVEL")
	fs.StringVar(&c.stream, "stream", "", "run presenced in JetStream mode: PRESENCE_STREAM of its workers (the bench's nats-server gets JetStream, file store in the temporary directory); empty: core NATS")
	pflags := fs.String("presenced-flags", "", `more flags for every presenced worker, space-separated, e.g. "--inflight 1" (experiments; reported in the settings)`)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stderr, fs)
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	small := c.scale == "small"
	if !small && c.scale != "full" {
		return nil, fmt.Errorf("--scale %q: want small or full", c.scale)
	}
	pick := func(dst *int, s, f int) {
		if *dst == 0 {
			*dst = map[bool]int{true: s, false: f}[small]
		}
	}
	pickD := func(dst *time.Duration, s, f time.Duration) {
		if *dst == 0 {
			*dst = map[bool]time.Duration{true: s, false: f}[small]
		}
	}
	pick(&c.hbUsers, 20000, 100000)
	pick(&c.batchUsers, 50000, 1000000)
	pick(&c.rounds, 5, 2)
	pick(&c.queryReps, 200, 1000)
	pick(&c.query10k, 100, 300)
	pick(&c.ceilingN, 200000, 1000000)
	pick(&c.stormUsers, 200000, 1000000)
	pick(&c.gwUsers, 20000, 1000000)
	pickD(&c.gwLease, 2*time.Second, 15*time.Second)
	pickD(&c.offTTL, 5*time.Second, 60*time.Second)
	pickD(&c.offDuration, 15*time.Second, 2*time.Minute)
	pickD(&c.offGrace, 10*time.Second, 60*time.Second)
	pickD(&c.idleDuration, 5*time.Second, 30*time.Second)
	pickD(&c.timeout, 2*time.Minute, 15*time.Minute)
	if c.hbInterval == 0 {
		c.hbInterval = c.offTTL / 2
	}
	if *users == "" {
		if small {
			*users = "10000"
		} else {
			*users = "10000,100000,1000000"
		}
	}
	for _, s := range strings.Split(*users, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 100 {
			return nil, fmt.Errorf("--users %q: want numbers >= 100", *users)
		}
		c.users = append(c.users, n)
	}
	c.presencedFlags = strings.Fields(*pflags)
	if *pids != "" {
		for _, s := range strings.Split(*pids, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("--worker-pids %q: %v", *pids, err)
			}
			c.workerPIDs = append(c.workerPIDs, n)
		}
	}
	c.scenarios = map[string]bool{}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		ok := false
		for _, a := range allScenarios {
			ok = ok || a == s
		}
		if !ok {
			return nil, fmt.Errorf("--scenarios: unknown %q (want %s)", s, strings.Join(allScenarios, ","))
		}
		c.scenarios[s] = true
	}
	switch {
	case (c.natsURL == "") != (c.redisURL == ""):
		return nil, errors.New("give both --nats-url and --redis-url (an existing deployment) or neither")
	case c.natsURL != "":
		c.external = true
	}
	if c.baseline != "seed" && c.baseline != "none" {
		return nil, fmt.Errorf("--baseline %q: want seed or none", c.baseline)
	}
	if err := c.checkCluster(); err != nil {
		return nil, err
	}
	if c.natsMode != "process" && c.natsMode != "embedded" {
		return nil, fmt.Errorf("--nats %q: want process or embedded", c.natsMode)
	}
	if c.stormUsers < 1 || c.stormBound <= 0 {
		return nil, errors.New("--storm-users and --storm-bound must be positive")
	}
	if c.replicas < 1 || c.batchSize < 1 || c.window < 1 || c.batchWindow < 1 || c.rounds < 1 || c.replyEvery < 1 {
		return nil, errors.New("--replicas, --batch-size, --window, --batch-window, --rounds and --reply-every must be at least 1")
	}
	if c.gateways < 2 || c.connsPerUser < 1 || c.connsPerUser > float64(c.gateways) || c.gwUsers < 100 {
		return nil, errors.New("--gateways must be at least 2, --conns-per-user between 1 and --gateways, --gw-users at least 100")
	}
	if c.gwLease < time.Second || c.gwLease >= c.offTTL {
		return nil, fmt.Errorf("--gateway-lease %s must be at least 1s and shorter than --ttl %s", c.gwLease, c.offTTL)
	}
	if c.hbInterval >= c.offTTL {
		return nil, fmt.Errorf("--hb-interval %s must be shorter than --ttl %s", c.hbInterval, c.offTTL)
	}
	return c, nil
}

// checkCluster refuses what cannot run on a Redis Cluster.
func (c *config) checkCluster() error {
	if !c.redisCluster {
		return nil
	}
	switch {
	case c.external:
		return errors.New("--redis-cluster starts its own cluster: leave out --nats-url and --redis-url")
	case c.clusterMasters < 3:
		return fmt.Errorf("--redis-cluster-masters %d: a Redis Cluster needs at least 3", c.clusterMasters)
	case c.clusterReplicas < 0:
		return fmt.Errorf("--redis-cluster-replicas %d: want 0 or more", c.clusterReplicas)
	case c.clusterPartitions < 0 || c.clusterPartitions > presence.MaxPartitions:
		return fmt.Errorf("--redis-cluster-partitions %d: want 1 to %d, or 0 for presenced's default", c.clusterPartitions, presence.MaxPartitions)
	case c.baseline == "seed":
		return errors.New("--redis-cluster: the seed's algorithm runs on one redis-server (its listing SCANs one server, its keyspace notifications come from one server), so there is no seed baseline on a cluster: add --baseline none")
	}
	var refused []string
	for _, s := range allScenarios {
		if c.scenarios[s] {
			if why := clusterRefusal(s); why != "" {
				refused = append(refused, s+": "+why)
			}
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("--redis-cluster runs only the scenarios %s (--scenarios); not on a cluster: %s",
			strings.Join(clusterScenarios, ","), strings.Join(refused, "; "))
	}
	return nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "presence-bench: %v (try --help)\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{cfg: cfg, c: &cluster{cfg: cfg}, rep: &Report{}}
	defer b.c.stop()
	if err := b.run(ctx); err != nil {
		fmt.Fprintf(stderr, "presence-bench: %v\n", err)
		// Print what was measured before the failure.
		b.finish()
		b.rep.Error = err.Error()
		printReport(stdout, b.rep)
		writeJSON(cfg.jsonOut, b.rep, stderr)
		return 1
	}
	b.finish()
	printReport(stdout, b.rep)
	if err := writeJSON(cfg.jsonOut, b.rep, stderr); err != nil {
		return 1
	}
	return 0
}

var startTime = time.Now()

// progress logs what the bench is doing to stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(startTime).Seconds(), fmt.Sprintf(format, args...))
}
