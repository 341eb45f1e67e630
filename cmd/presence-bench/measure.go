package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// What the bench reads off the running cluster: Redis INFO and memory,
// CPU of Redis and the workers (the meter), command statistics.

// info returns the fields of INFO section of the first server (the one
// server, or the cluster's first master).
func (c *cluster) info(ctx context.Context, section string) (map[string]string, error) {
	return serverInfo(ctx, c.servers()[0], section)
}

func serverInfo(ctx context.Context, rdb *redis.Client, section string) (map[string]string, error) {
	m, err := parseInfo(rdb.Info(ctx, section).Result())
	if err != nil {
		return nil, fmt.Errorf("info %s: %w", section, err)
	}
	return m, nil
}

// parseInfo returns the fields of an INFO reply.
func parseInfo(s string, err error) (map[string]string, error) {
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

// usedMemory is used_memory summed over the servers holding data.
func (c *cluster) usedMemory(ctx context.Context) (int64, error) {
	var total int64
	for _, s := range c.servers() {
		m, err := serverInfo(ctx, s, "memory")
		if err != nil {
			return 0, err
		}
		n, err := strconv.ParseInt(m["used_memory"], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("used_memory of %s: %w", s.Options().Addr, err)
		}
		total += n
	}
	return total, nil
}

// dataMemory returns the memory Redis uses for data (keys, values, their
// hash tables and expiry entries), summed over the servers holding data:
// MEMORY STATS total.allocated without the clients' buffers, Lua and
// function caches, replication buffers and cluster links, which depend on
// how many connections the workers hold, not on the users online.
func (c *cluster) dataMemory(ctx context.Context) (int64, error) {
	var total int64
	for _, s := range c.servers() {
		n, err := serverDataMemory(ctx, s)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

func serverDataMemory(ctx context.Context, rdb *redis.Client) (int64, error) {
	res, err := rdb.Do(ctx, "MEMORY", "STATS").Result()
	if err != nil {
		return 0, fmt.Errorf("memory stats: %w", err)
	}
	stats := map[string]int64{}
	put := func(k, v any) {
		ks, _ := k.(string)
		switch n := v.(type) {
		case int64:
			stats[ks] = n
		case float64:
			stats[ks] = int64(n)
		}
	}
	switch r := res.(type) {
	case map[any]any:
		for k, v := range r {
			put(k, v)
		}
	case []any:
		for i := 0; i+1 < len(r); i += 2 {
			put(r[i], r[i+1])
		}
	default:
		return 0, fmt.Errorf("memory stats: unexpected reply %T", res)
	}
	total, ok := stats["total.allocated"]
	if !ok {
		return 0, errors.New("memory stats: no total.allocated")
	}
	for _, k := range []string{"clients.normal", "clients.slaves", "replication.backlog", "aof.buffer", "lua.caches", "functions.caches", "cluster.links"} {
		total -= stats[k]
	}
	return total, nil
}

// redisCPU is used_cpu_user + used_cpu_sys in seconds, summed over the
// servers holding data; -1 when one did not answer.
func (c *cluster) redisCPU(ctx context.Context) float64 {
	total := 0.0
	for _, srv := range c.servers() {
		m, err := serverInfo(ctx, srv, "cpu")
		if err != nil {
			return -1
		}
		u, _ := strconv.ParseFloat(m["used_cpu_user"], 64)
		s, _ := strconv.ParseFloat(m["used_cpu_sys"], 64)
		total += u + s
	}
	return total
}

// redisHostPort returns the host and port of the Redis URL, for
// redis-benchmark.
func (c *cluster) redisHostPort() (string, string, string) {
	u, err := url.Parse(c.redisURL)
	if err != nil {
		return "127.0.0.1", "6379", ""
	}
	pw, _ := u.User.Password()
	port := u.Port()
	if port == "" {
		port = "6379"
	}
	return u.Hostname(), port, pw
}

// usage is the CPU and memory of the processes during one phase. CPU is in
// % of one core (200 = both cores of this machine); -1 means not measured.
type usage struct {
	Seconds       float64   `json:"seconds"`
	WorkerCPU     []float64 `json:"worker_cpu_pct"`
	WorkerCPUSum  float64   `json:"worker_cpu_pct_sum"`
	WorkerRSSMB   []float64 `json:"worker_rss_mb"`
	WorkerPeakMB  []float64 `json:"worker_peak_rss_mb"`
	RedisCPU      float64   `json:"redis_cpu_pct"`
	RedisCommands []cmdStat `json:"redis_commands,omitempty"`
	// RedisMasters is each master's share on a Redis Cluster (RedisCPU
	// and RedisCommands are then sums over the masters).
	RedisMasters  []masterUsage `json:"redis_masters,omitempty"`
	NATSCPU       float64       `json:"nats_cpu_pct"`
	BenchCPU      float64       `json:"bench_cpu_pct"`
	MachineIdlePc float64       `json:"machine_idle_pct"`
}

// meter measures usage between its creation and done.
type meter struct {
	c       *cluster
	t0      time.Time
	workers []cpuMeter
	redis0  float64
	nats    cpuMeter
	bench   cpuMeter
	idle0   float64
	total0  float64
	cmds0   map[string]cmdStat
	masters []masterSnap
}

// cmdStat is one command's share of Redis's time (INFO commandstats; the
// commands a script runs are counted both on their own and in its EVALSHA).
type cmdStat struct {
	Command     string  `json:"command"`
	Calls       int64   `json:"calls"`
	Usec        int64   `json:"usec"`
	UsecPerCall float64 `json:"usec_per_call"`
}

// commandStats returns INFO commandstats summed over the servers holding
// data; nil when one did not answer.
func (c *cluster) commandStats(ctx context.Context) map[string]cmdStat {
	out := map[string]cmdStat{}
	for _, srv := range c.servers() {
		m, err := serverInfo(ctx, srv, "commandstats")
		if err != nil {
			return nil
		}
		addCommandStats(out, m)
	}
	return out
}

// addCommandStats adds the commands of one server's INFO commandstats m
// to out.
func addCommandStats(out map[string]cmdStat, m map[string]string) {
	for k, v := range m {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok {
			continue
		}
		st := cmdStat{Command: name}
		for _, kv := range strings.Split(v, ",") {
			f, val, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseInt(val, 10, 64)
			switch f {
			case "calls":
				st.Calls = n
			case "usec":
				st.Usec = n
			}
		}
		sum := out[name]
		sum.Command = name
		sum.Calls += st.Calls
		sum.Usec += st.Usec
		out[name] = sum
	}
}

// commandDelta returns the commands that ran between two snapshots, the
// most time first (at most 8).
func commandDelta(before, after map[string]cmdStat) []cmdStat {
	var out []cmdStat
	for name, a := range after {
		b := before[name]
		d := cmdStat{Command: name, Calls: a.Calls - b.Calls, Usec: a.Usec - b.Usec}
		if d.Calls <= 0 || name == "info" {
			continue
		}
		d.UsecPerCall = float64(d.Usec) / float64(d.Calls)
		out = append(out, d)
	}
	slices.SortFunc(out, func(x, y cmdStat) int { return cmp.Compare(y.Usec, x.Usec) })
	return out[:min(len(out), 8)]
}

func (c *cluster) meter(ctx context.Context) *meter {
	m := &meter{c: c, t0: time.Now(), redis0: c.redisCPU(ctx), bench: startCPU(os.Getpid())}
	for _, pid := range c.workerPIDs() {
		m.workers = append(m.workers, startCPU(pid))
	}
	if c.natsProc != nil {
		m.nats = startCPU(c.natsProc.pid())
	}
	m.idle0, m.total0 = machineCPU()
	m.cmds0 = c.commandStats(ctx)
	m.masters = c.masterSnaps(ctx)
	return m
}

func (m *meter) done(ctx context.Context) usage {
	wall := time.Since(m.t0).Seconds()
	u := usage{Seconds: wall, RedisCPU: -1, NATSCPU: m.nats.percent(), BenchCPU: m.bench.percent()}
	if r := m.c.redisCPU(ctx); r >= 0 && m.redis0 >= 0 && wall > 0 {
		u.RedisCPU = 100 * (r - m.redis0) / wall
	}
	if m.cmds0 != nil {
		u.RedisCommands = commandDelta(m.cmds0, m.c.commandStats(ctx))
	}
	u.RedisMasters = m.c.masterUsages(ctx, m.masters, m.c.masterSnaps(ctx), wall)
	for _, w := range m.workers {
		p := w.percent()
		u.WorkerCPU = append(u.WorkerCPU, p)
		if p > 0 {
			u.WorkerCPUSum += p
		}
		rss, hwm, err := memoryKB(w.pid)
		if err == nil {
			u.WorkerRSSMB = append(u.WorkerRSSMB, float64(rss)/1024)
			u.WorkerPeakMB = append(u.WorkerPeakMB, float64(hwm)/1024)
		}
	}
	if len(m.workers) == 0 {
		u.WorkerCPUSum = -1
	}
	idle1, total1 := machineCPU()
	if total1 > m.total0 {
		u.MachineIdlePc = 100 * (idle1 - m.idle0) / (total1 - m.total0)
	}
	return u
}

// machineCPU returns the idle and total jiffies of all CPUs (/proc/stat).
func machineCPU() (idle, total float64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:] {
		v, _ := strconv.ParseFloat(s, 64)
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return idle, total
}
