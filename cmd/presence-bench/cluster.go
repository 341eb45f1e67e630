package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/localredis"
)

// impl is one implementation under test.
type impl struct {
	name     string // "presenced" or "seed"
	keys     string // key prefix
	subjects contract.Subjects
	// parts are the key prefixes of presenced's partitions on a Redis
	// Cluster, partition p at index p; nil on one server.
	parts []string
}

// userKey is the key whose PTTL is id's deadline: presence:user:<id> on
// one server; on a cluster the key of the same name in id's partition,
// written by the same script as the session (presence:user:<id> itself
// is the mirror there, written after the script).
func (im impl) userKey(id string) string {
	if len(im.parts) > 0 {
		return im.parts[contract.PartitionOf(id, len(im.parts))] + "user:" + id
	}
	return im.keys + "user:" + id
}

// outboxKeys are the keys of presenced's outbox streams: one, or one per
// partition.
func (im impl) outboxKeys() []string {
	if len(im.parts) > 0 {
		out := make([]string, len(im.parts))
		for i, p := range im.parts {
			out[i] = p + "outbox"
		}
		return out
	}
	return []string{im.keys + "outbox"}
}

// cluster is the deployment the bench drives: NATS, Redis and the workers of
// the implementation under test, either started here (each in a process of
// its own, so their CPU and memory can be read from /proc) or external.
type cluster struct {
	cfg *config
	tmp string

	natsURL  string
	natsMon  string // http://host:port of nats-server's monitoring, or ""
	redisURL string
	natsProc *proc
	natsEmb  *server.Server
	redisSrv *localredis.Server
	redisOpt *redis.Options

	// On one server rdb is the bench's own client (INFO, PTTL, FLUSHALL,
	// background keys). On a Redis Cluster (--redis-cluster) rdb is nil:
	// crdb reads and writes keys, masters has a client per master for
	// what is per server (INFO, MEMORY STATS, FLUSHALL, DBSIZE), and
	// clusterAddrs are every node's address (the workers' seeds). kv is
	// whichever of rdb and crdb is in use.
	rdb          *redis.Client
	crdb         *redis.ClusterClient
	masters      []*redis.Client
	clusterNodes []*localredis.Server
	clusterAddrs []string
	kv           redis.UniversalClient

	pub *nats.Conn // requests and their replies
	ev  *nats.Conn // events

	presencedBin string
	selfBin      string
	natsBin      string

	workers []*proc
	current string // the implementation whose workers run
}

func (c *cluster) external() bool { return c.cfg.external }

// start brings up NATS and Redis (unless external) and the bench's clients.
func (c *cluster) start(ctx context.Context) error {
	var err error
	if c.tmp, err = os.MkdirTemp("", "presence-bench-"); err != nil {
		return err
	}
	if c.selfBin, err = os.Executable(); err != nil {
		return fmt.Errorf("find own executable (for seed-worker): %w", err)
	}
	if c.external() {
		c.natsURL, c.redisURL = c.cfg.natsURL, c.cfg.redisURL
	} else {
		if err := c.buildBinaries(ctx); err != nil {
			return err
		}
		if err := c.startNATS(ctx); err != nil {
			return err
		}
		if c.cfg.redisCluster {
			return c.startRedisCluster(ctx)
		}
		progress("starting redis-server")
		if c.redisSrv, err = localredis.Start(ctx); err != nil {
			return err
		}
		c.redisURL = c.redisSrv.URL()
	}
	if c.redisOpt, err = redis.ParseURL(c.redisURL); err != nil {
		return fmt.Errorf("redis url: %w", err)
	}
	o := *c.redisOpt
	o.PoolSize = 16
	c.rdb = redis.NewClient(&o)
	c.kv = c.rdb
	if err := c.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return c.connectNATS()
}

// startRedisCluster starts the cluster of --redis-cluster-masters masters
// and the bench's clients.
func (c *cluster) startRedisCluster(ctx context.Context) error {
	progress("starting a Redis Cluster: %d masters, %d replicas each", c.cfg.clusterMasters, c.cfg.clusterReplicas)
	nodes, masters, crdb, err := startRedisCluster(ctx, c.cfg.clusterMasters, c.cfg.clusterReplicas)
	c.clusterNodes = nodes
	if err != nil {
		return err
	}
	c.crdb, c.kv = crdb, crdb
	for _, n := range nodes {
		c.clusterAddrs = append(c.clusterAddrs, n.Addr)
	}
	for _, a := range masters {
		c.masters = append(c.masters, redis.NewClient(&redis.Options{Addr: a, PoolSize: 4}))
	}
	c.redisURL = "cluster:" + strings.Join(c.clusterAddrs, ",")
	return c.connectNATS()
}

// servers are the clients of the servers holding data: the one server, or
// every master of the cluster.
func (c *cluster) servers() []*redis.Client {
	if c.crdb != nil {
		return c.masters
	}
	return []*redis.Client{c.rdb}
}

// topology names the Redis the workers use, for the report.
func (c *cluster) topology() string {
	switch {
	case c.cfg.redisCluster:
		s := fmt.Sprintf("Redis Cluster, %d masters", c.cfg.clusterMasters)
		if c.cfg.clusterReplicas > 0 {
			s += fmt.Sprintf(" with %d replicas each", c.cfg.clusterReplicas)
		}
		return s + fmt.Sprintf(", %d partitions", c.partitions())
	case c.external():
		return "external Redis"
	}
	return "one redis-server"
}

func (c *cluster) connectNATS() error {
	for _, p := range []**nats.Conn{&c.pub, &c.ev} {
		nc, err := nats.Connect(c.natsURL, nats.Name("presence-bench"), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("nats: %w", err)
		}
		*p = nc
	}
	return nil
}

// moduleRoot finds the presenced module's directory from the working
// directory up, for go build.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/presenced/presenced\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the presenced module: run from the repository or pass --presenced-bin and --nats-server-bin")
		}
		dir = parent
	}
}

func (c *cluster) buildBinaries(ctx context.Context) error {
	c.presencedBin, c.natsBin = c.cfg.presencedBin, c.cfg.natsBin
	if c.presencedBin != "" && (c.natsBin != "" || c.cfg.natsMode == "embedded") {
		return nil
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	build := func(out, pkg string) error {
		progress("go build %s", pkg)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
		return nil
	}
	if c.presencedBin == "" {
		c.presencedBin = filepath.Join(c.tmp, "presenced")
		if err := build(c.presencedBin, "./cmd/presenced"); err != nil {
			return err
		}
	}
	if c.natsBin == "" && c.cfg.natsMode == "process" {
		c.natsBin = filepath.Join(c.tmp, "nats-server")
		if err := build(c.natsBin, "github.com/nats-io/nats-server/v2"); err != nil {
			return err
		}
	}
	return nil
}

func (c *cluster) startNATS(ctx context.Context) error {
	if c.cfg.natsMode == "embedded" {
		progress("starting embedded nats-server (its CPU counts as the bench's)")
		o := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true}
		if c.cfg.stream != "" {
			o.JetStream, o.StoreDir = true, filepath.Join(c.tmp, "jetstream")
		}
		s, err := server.NewServer(o)
		if err != nil {
			return fmt.Errorf("nats-server: %w", err)
		}
		s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			return errors.New("embedded nats-server not ready")
		}
		c.natsEmb, c.natsURL = s, s.ClientURL()
		return nil
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	mon, err := freeAddr()
	if err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(addr)
	_, monPort, _ := net.SplitHostPort(mon)
	progress("starting nats-server process on %s (monitoring on %s)", addr, mon)
	nargs := []string{"-a", host, "-p", port, "-m", monPort}
	if c.cfg.stream != "" {
		nargs = append(nargs, "-js", "-sd", filepath.Join(c.tmp, "jetstream"))
	}
	p, err := startProc("nats-server", c.natsBin, nargs, cleanEnv(), "")
	if err != nil {
		return err
	}
	c.natsProc, c.natsURL, c.natsMon = p, "nats://"+addr, "http://"+mon
	for {
		nc, err := nats.Connect(c.natsURL, nats.Timeout(time.Second))
		if err == nil {
			nc.Close()
			return nil
		}
		select {
		case <-p.done:
			return p.exitErr()
		case <-ctx.Done():
			return fmt.Errorf("nats-server not ready: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop stops everything the bench started.
func (c *cluster) stop() {
	_ = c.stopWorkers()
	for _, nc := range []*nats.Conn{c.pub, c.ev} {
		if nc != nil {
			nc.Close()
		}
	}
	if c.rdb != nil {
		_ = c.rdb.Close()
	}
	if c.crdb != nil {
		_ = c.crdb.Close()
	}
	for _, m := range c.masters {
		_ = m.Close()
	}
	for _, n := range c.clusterNodes {
		n.Stop()
	}
	if c.natsProc != nil {
		_ = c.natsProc.stop(5 * time.Second)
	}
	if c.natsEmb != nil {
		c.natsEmb.Shutdown()
	}
	if c.redisSrv != nil {
		c.redisSrv.Stop()
	}
	if c.tmp != "" && !c.cfg.keep {
		_ = os.RemoveAll(c.tmp)
	}
}

// impls returns the implementations to run, presenced first.
func (c *cluster) impls() []impl {
	out := []impl{c.presenced()}
	if c.cfg.baseline == "seed" {
		out = append(out, c.seed())
	}
	return out
}

func (c *cluster) presenced() impl {
	if c.external() {
		return impl{name: "presenced", keys: c.cfg.keyPrefix, subjects: contract.Subjects{Prefix: c.cfg.subjectPrefix}}
	}
	im := impl{name: "presenced", keys: "presence:", subjects: contract.Subjects{Prefix: "bench.presenced"}}
	if c.cfg.redisCluster {
		im.parts = partitionPrefixes(im.keys, c.partitions())
	}
	return im
}

func (c *cluster) seed() impl {
	if c.external() {
		// Beside a live deployment: keys of the same length, other names.
		return impl{name: "seed", keys: "seedpres:", subjects: contract.Subjects{Prefix: "bench.seed"}}
	}
	return impl{name: "seed", keys: "presence:", subjects: contract.Subjects{Prefix: "bench.seed"}}
}

// reset prepares a fresh run of im: stops the workers, empties Redis, loads
// the background keys and starts replicas workers with ttl (presenced
// workers also get extra, a scenario's own flags). External: only the
// seed's workers are (re)started, nothing is flushed.
func (c *cluster) reset(ctx context.Context, im impl, replicas int, ttl time.Duration, extra ...string) error {
	if err := c.stopWorkers(); err != nil {
		return err
	}
	if !c.external() {
		for _, s := range c.servers() {
			if err := s.FlushAll(ctx).Err(); err != nil {
				return fmt.Errorf("flushall %s: %w", s.Options().Addr, err)
			}
			// Each implementation sets the flags it needs.
			if err := s.ConfigSet(ctx, "notify-keyspace-events", "").Err(); err != nil {
				return fmt.Errorf("reset notify-keyspace-events on %s: %w", s.Options().Addr, err)
			}
		}
		if c.cfg.bgKeys > 0 {
			if err := c.loadBackground(ctx, c.cfg.bgKeys); err != nil {
				return err
			}
		}
	}
	if c.external() && im.name == "presenced" {
		c.current = im.name
		return nil
	}
	return c.startWorkers(ctx, im, replicas, ttl, extra)
}

// loadBackground writes n volatile keys (SET bg:<i> x EX 3600, pipelined),
// which make Redis's active expiry find expired presence keys more slowly.
func (c *cluster) loadBackground(ctx context.Context, n int) error {
	progress("loading %d background volatile keys", n)
	const chunk = 10000
	for start := 0; start < n; start += chunk {
		_, err := c.kv.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := start; i < min(start+chunk, n); i++ {
				p.Set(ctx, "bg:"+strconv.Itoa(i), "x", time.Hour)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("background keys: %w", err)
		}
	}
	return nil
}

func (c *cluster) startWorkers(ctx context.Context, im impl, n int, ttl time.Duration, extra []string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for i := range n {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		var p *proc
		name := fmt.Sprintf("%s-%d", im.name, i)
		if im.name == "presenced" {
			redisArgs := []string{"--redis-url", c.redisURL}
			if c.cfg.redisCluster {
				// REDIS_URL stays empty (cleanEnv): one topology only.
				redisArgs = []string{"--redis-cluster-addrs", strings.Join(c.clusterAddrs, ","),
					"--redis-cluster-partitions", strconv.Itoa(c.partitions())}
			}
			args := []string{"--nats-url", c.natsURL}
			args = append(args, redisArgs...)
			args = append(args, "--ttl", ttl.String(),
				"--key-prefix", im.keys, "--subject-prefix", im.subjects.Prefix, "--queue-group", "presenced",
				"--http-addr", addr, "--log-level", c.cfg.workerLogLevel,
			)
			var pprofAddr string
			if c.cfg.pprofDir != "" {
				// presenced serves pprof on its status address only.
				if pprofAddr, err = freeAddr(); err != nil {
					return err
				}
				args = append(args, "--pprof", "--status-addr", pprofAddr)
			}
			if c.cfg.stream != "" {
				args = append(args, "--stream", c.cfg.stream)
			}
			args = append(args, extra...)
			args = append(args, c.cfg.presencedFlags...)
			p, err = startProc(name, c.presencedBin, args, cleanEnv(), addr)
			if p != nil {
				p.pprof = pprofAddr
			}
		} else {
			args := []string{"seed-worker",
				"--nats-url", c.natsURL, "--redis-url", c.redisURL, "--ttl", ttl.String(),
				"--key-prefix", im.keys, "--subject-prefix", im.subjects.Prefix, "--queue-group", "seed",
				"--concurrency", strconv.Itoa(c.cfg.seedConcurrency), "--pending-limit", strconv.Itoa(c.cfg.seedPending), "--http-addr", addr,
			}
			p, err = startProc(name, c.selfBin, args, cleanEnv(), addr)
			if p != nil {
				p.pprof = addr
			}
		}
		if err != nil {
			return err
		}
		c.workers = append(c.workers, p)
	}
	for _, p := range c.workers {
		if err := p.waitReady(ctx); err != nil {
			return err
		}
	}
	c.current = im.name
	// Ready means subscribed; give the server a moment to have the queue
	// subscriptions of every replica before traffic starts.
	time.Sleep(200 * time.Millisecond)
	return nil
}

// stopWorkers stops the running workers (SIGTERM, then kill after 30s).
func (c *cluster) stopWorkers() error {
	var errs []error
	for _, p := range c.workers {
		if err := p.stop(30 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	c.workers = nil
	c.current = ""
	return errors.Join(errs...)
}

// checkWorkers reports a worker that exited on its own.
func (c *cluster) checkWorkers() error {
	for _, p := range c.workers {
		if p.exited() {
			return p.exitErr()
		}
	}
	return nil
}

// workerPIDs are the processes whose CPU and memory are reported as the
// workers': the ones started here, or --worker-pids when external.
func (c *cluster) workerPIDs() []int {
	if c.external() && c.current == "presenced" {
		return c.cfg.workerPIDs
	}
	pids := make([]int, len(c.workers))
	for i, p := range c.workers {
		pids[i] = p.pid()
	}
	return pids
}
