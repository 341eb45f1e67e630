package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var rpsRE = regexp.MustCompile(`([0-9.]+) requests per second`)

// saturatedCPU is the Redis CPU (% of one core) at or above which a
// ceiling run counts as having saturated Redis.
const saturatedCPU = 95

// ceilingAttempts bounds the SET EX GET runs of the ceiling phase.
const ceilingAttempts = 4

// ceiling runs redis-benchmark against the same redis-server, with no
// workers running, for the SET EX GET and plain SET rates with 32-deep
// pipelines: what Redis alone can do on this machine. A run is only a
// ceiling if it saturated Redis (its CPU >= saturatedCPU% of a core), so
// the SET EX GET run repeats, longer each time, until one does or
// ceilingAttempts ran; the best rate is kept, and whether any run
// saturated Redis is reported.
func (b *bench) ceiling(ctx context.Context) error {
	bin, err := exec.LookPath("redis-benchmark")
	if err != nil {
		b.note("redis-benchmark not found: no ceiling (apt-get install redis-tools)")
		return nil
	}
	if err := b.c.stopWorkers(); err != nil {
		return err
	}
	host, port, pw := b.c.redisHostPort()
	runOne := func(n int, cmd ...string) (CeilingAttempt, string, error) {
		at := CeilingAttempt{N: n}
		args := []string{"-h", host, "-p", port, "-P", "32", "-n", strconv.Itoa(n), "-r", "1000000", "-q"}
		if pw != "" {
			args = append(args, "-a", pw)
		}
		args = append(args, cmd...)
		line := "redis-benchmark " + strings.Join(args, " ")
		if pw != "" {
			line = strings.Replace(line, "-a "+pw, "-a ***", 1)
		}
		progress("%s", line)
		c0 := b.c.redisCPU(ctx)
		idle0, total0 := machineCPU()
		t0 := time.Now()
		rctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
		defer cancel()
		ex := exec.CommandContext(rctx, bin, args...)
		out, err := ex.CombinedOutput()
		wall := time.Since(t0).Seconds()
		if err != nil {
			return at, line, fmt.Errorf("%s: %v\n%s", line, err, out)
		}
		m := rpsRE.FindAllSubmatch(out, -1)
		if len(m) == 0 {
			return at, line, fmt.Errorf("%s: no rate in %q", line, out)
		}
		at.OpsPerSec, _ = strconv.ParseFloat(string(m[len(m)-1][1]), 64)
		at.Seconds = wall
		at.RedisCPU = 100 * (b.c.redisCPU(ctx) - c0) / wall
		if ps := ex.ProcessState; ps != nil {
			at.BenchmarkCPU = 100 * (ps.UserTime() + ps.SystemTime()).Seconds() / wall
		}
		if idle1, total1 := machineCPU(); total1 > total0 {
			at.MachineIdle = 100 * (idle1 - idle0) / (total1 - total0)
		}
		progress("  %.0f ops/s; redis %.0f%% cpu, redis-benchmark %.0f%% cpu, machine idle %.0f%%, %.1fs", at.OpsPerSec, at.RedisCPU, at.BenchmarkCPU, at.MachineIdle, wall)
		return at, line, nil
	}
	ce := &Ceiling{Pipeline: 32}
	n := b.cfg.ceilingN
	for range ceilingAttempts {
		at, line, err := runOne(n, "SET", "key:__rand_int__", "1", "EX", "60", "GET")
		if err != nil {
			return err
		}
		ce.Command = strings.Replace(line, "-n "+strconv.Itoa(n), "-n N", 1) // N: each attempt's
		ce.Attempts = append(ce.Attempts, at)
		if at.RedisCPU >= saturatedCPU {
			break
		}
		// Longer next time: at least twice the requests, and about 3 s at
		// the rate just seen, so start-up and a moment of other load on
		// the machine weigh less. (With the machine busy, Redis cannot
		// get a whole core however long the run: the machine idle % of
		// each run tells that apart from a load generator too slow.)
		n = min(max(2*n, int(at.OpsPerSec*3)), 20_000_000)
	}
	ce.summarize()
	if !ce.Saturated {
		why := ""
		if ce.maxMachineIdle() < 5 {
			why = "; the machine had no idle CPU during the runs (other load), so Redis could not get a whole core: rerun on a quiet machine"
		}
		b.note("the Redis ceiling never saturated Redis (at most %.0f%% of a core in %d runs, want >= %d%%): it understates what Redis can do, so a share of it overstates presenced%s", ce.maxRedisCPU(), len(ce.Attempts), saturatedCPU, why)
	}
	set, _, err := runOne(b.cfg.ceilingN, "-t", "set")
	if err != nil {
		return err
	}
	ce.Set, ce.SetRedisCPU = set.OpsPerSec, set.RedisCPU
	b.rep.Ceiling = ce
	if !b.c.external() {
		return b.c.rdb.FlushAll(ctx).Err()
	}
	return nil
}
