package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/seedbaseline"
	"github.com/presenced/presenced/presence"
)

// bench runs the scenarios and fills the report.
type bench struct {
	cfg    *config
	c      *cluster
	rep    *Report
	profMu sync.Mutex
}

func (b *bench) run(ctx context.Context) error {
	b.rep.Started = time.Now().UTC().Format(time.RFC3339)
	b.rep.Machine = machineInfo()
	b.rep.Settings = b.settings()
	if err := b.c.start(ctx); err != nil {
		return err
	}
	b.rep.Machine.NATS = b.c.pub.ConnectedServerVersion()
	if m, err := b.c.info(ctx, "server"); err == nil {
		b.rep.Machine.Redis = m["redis_version"]
	}
	b.rep.MaxPayload = b.c.pub.MaxPayload()
	if b.cfg.external {
		b.note("external deployment: presenced workers were not started by the bench; nothing is flushed between scenarios, so Redis memory per user is a delta over whatever else changed meanwhile")
		if len(b.cfg.workerPIDs) == 0 {
			b.note("external deployment without --worker-pids: presenced worker CPU and RSS are not measured")
		}
	}
	if b.cfg.natsMode == "embedded" {
		b.note("nats-server embedded in the bench process: its CPU is counted in the bench's")
	}
	if b.cfg.scenarios["ceiling"] {
		if err := b.ceiling(ctx); err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
	}
	if b.cfg.scenarios["throughput"] {
		if err := b.throughput(ctx); err != nil {
			return fmt.Errorf("throughput: %w", err)
		}
	}
	if b.cfg.scenarios["offline"] {
		for _, n := range b.cfg.users {
			for _, im := range b.c.impls() {
				if err := b.offline(ctx, im, n); err != nil {
					return fmt.Errorf("%s offline at %d users: %w", im.name, n, err)
				}
			}
		}
	}
	if b.cfg.scenarios["idle"] || b.cfg.scenarios["query"] {
		n := slices.Max(b.cfg.users)
		for _, im := range b.c.impls() {
			if err := b.idleQuery(ctx, im, n); err != nil {
				return fmt.Errorf("%s idle/query at %d users: %w", im.name, n, err)
			}
		}
	}
	if b.cfg.scenarios["storm"] {
		for _, im := range b.c.impls() {
			if err := b.storm(ctx, im, b.cfg.stormUsers); err != nil {
				return fmt.Errorf("%s storm of %d users: %w", im.name, b.cfg.stormUsers, err)
			}
		}
	}
	return b.c.stopWorkers()
}

func (b *bench) note(format string, args ...any) {
	b.rep.Notes = append(b.rep.Notes, fmt.Sprintf(format, args...))
}

func (b *bench) settings() map[string]any {
	c := b.cfg
	return map[string]any{
		"scale": c.scale, "users": c.users, "replicas": c.replicas, "baseline": c.baseline,
		"external": c.external, "nats": c.natsMode,
		"hb_users": c.hbUsers, "batch_users": c.batchUsers, "rounds": c.rounds, "batch_size": c.batchSize,
		"window": c.window, "batch_window": c.batchWindow, "hb_ttl": c.hbTTL.String(),
		"ttl": c.offTTL.String(), "hb_interval": c.hbInterval.String(), "offline_duration": c.offDuration.String(),
		"offline_grace": c.offGrace.String(), "leave_pct_per_min": c.leavePct, "background_keys": c.bgKeys,
		"idle_ttl": c.idleTTL.String(), "idle_duration": c.idleDuration.String(),
		"query_reps": c.queryReps, "query_batch_reps": c.query10k, "query_ids": c.queryIDs,
		"ceiling_n": c.ceilingN, "seed_concurrency": c.seedConcurrency, "seed_scan_count": c.scanCount, "seed_pending_limit": c.seedPending,
		"storm_users": c.stormUsers, "storm_bound": c.stormBound.String(),
		"user_id_length": len("o-") + idWidth, "timeout": c.timeout.String(), "presenced_flags": strings.Join(c.presencedFlags, " "), "reply_every": c.replyEvery,
		"stream": c.stream,
	}
}

// ---- ceiling ----

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

// ---- throughput ----

type hbPhase struct {
	name     string
	tag      string
	users    int
	batch    int
	rounds   int
	window   int
	newUsers bool // wait for every user's online event
	profile  string
}

// hbGroups are the throughput phases, in groups that share users.
func (b *bench) hbGroups() [][]hbPhase {
	cfg := b.cfg
	tag := "t-"
	if cfg.external {
		tag = fmt.Sprintf("t%02d-", rand.IntN(100)) // apart from earlier runs' users
	}
	single := []hbPhase{
		{name: "single-id, new users", tag: "s" + tag, users: cfg.hbUsers, batch: 1, rounds: 1, window: cfg.window, newUsers: true, profile: "single-new"},
		{name: "single-id, refresh", tag: "s" + tag, users: cfg.hbUsers, batch: 1, rounds: cfg.rounds, window: cfg.window, profile: "single-refresh"},
	}
	batched := []hbPhase{
		{name: fmt.Sprintf("batched %d, new users", cfg.batchSize), tag: "b" + tag, users: cfg.batchUsers, batch: cfg.batchSize, rounds: 1, window: cfg.batchWindow, newUsers: true, profile: "batched-new"},
		{name: fmt.Sprintf("batched %d, refresh", cfg.batchSize), tag: "b" + tag, users: cfg.batchUsers, batch: cfg.batchSize, rounds: cfg.rounds, window: cfg.batchWindow, profile: "batched-refresh"},
	}
	return [][]hbPhase{single, batched}
}

// throughput runs each group of phases (new users, then their refreshes)
// through every implementation in turn, from a fresh Redis each time, so a
// change in the machine's other load hits both about alike.
func (b *bench) throughput(ctx context.Context) error {
	cfg := b.cfg
	for _, group := range b.hbGroups() {
		for _, im := range b.c.impls() {
			progress("%s throughput: %d replicas", im.name, cfg.replicas)
			if err := b.c.reset(ctx, im, cfg.replicas, cfg.hbTTL); err != nil {
				return fmt.Errorf("%s: %w", im.name, err)
			}
			for _, p := range group {
				row, err := b.heartbeats(ctx, im, p)
				if err != nil {
					return fmt.Errorf("%s %s: %w", im.name, p.name, err)
				}
				b.rep.Throughput = append(b.rep.Throughput, row)
				progress("  %-28s %10.0f ids/s  (%d ids in %.2fs; workers %.0f%% cpu, redis %.0f%%)", p.name, row.IDsPerSec, row.IDs, row.Seconds, row.Usage.WorkerCPUSum, row.Usage.RedisCPU)
				if err := b.c.checkWorkers(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (b *bench) heartbeats(ctx context.Context, im impl, p hbPhase) (ThroughputRow, error) {
	row := ThroughputRow{Impl: im.name, Phase: p.name}
	col, err := newCollector(b.c.ev, im.subjects, p.tag, p.users)
	if err != nil {
		return row, err
	}
	defer col.close()
	col.mark()
	req, err := newRequester(b.c.pub, p.window)
	if err != nil {
		return row, err
	}
	defer req.close()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
	defer cancel()

	// The profile covers the phase, up to --pprof-seconds; the phase is
	// not repeated to fill it.
	var profDone <-chan struct{}
	profStop := make(chan struct{})
	defer func() {
		select {
		case <-profStop:
		default:
			close(profStop)
		}
	}()
	if p.profile != "" && b.cfg.pprofDir != "" {
		profDone = b.profile(im, p.profile, profStop)
	}
	subject := im.subjects.Heartbeat()
	m := b.c.meter(ctx)
	t0 := time.Now()
	var ids, msgs int64
	every := int64(b.cfg.replyEvery)
	for round := 0; round < p.rounds; round++ {
		for start := 0; start < p.users; start += p.batch {
			end := min(start+p.batch, p.users)
			var payload []byte
			if p.batch == 1 {
				payload = singlePayload(p.tag, start)
			} else {
				payload = rangePayload(p.tag, start, end)
			}
			msgs++
			// Every reply-every'th message, and the last of a round, asks
			// for a reply; the window bounds those, so at most window *
			// reply-every messages are on their way.
			if msgs%every == 0 || end == p.users {
				err = req.send(ctx, subject, payload, nil)
			} else {
				err = req.publish(subject, payload)
			}
			if err != nil {
				return row, err
			}
			ids += int64(end - start)
		}
	}
	if err := req.wait(ctx); err != nil {
		return row, fmt.Errorf("replies: %w", err)
	}
	end := time.Unix(0, req.lastReply.Load())
	if p.newUsers {
		if err := col.waitOnline(ctx, p.users); err != nil {
			return row, err
		}
		onlineAt := time.Unix(0, col.allOnlineAt.Load())
		progress("  %s: last reply after %.2fs, last online event after %.2fs", p.name, end.Sub(t0).Seconds(), onlineAt.Sub(t0).Seconds())
		end = maxTime(end, onlineAt)
	}
	row.Usage = m.done(ctx)
	close(profStop)
	if profDone != nil {
		<-profDone
	}
	row.IDs, row.Messages = ids, msgs
	row.Seconds = end.Sub(t0).Seconds()
	row.IDsPerSec = float64(ids) / row.Seconds
	row.MsgsPerSec = float64(msgs) / row.Seconds
	row.Failed, row.Lost = req.failed.Load(), req.lost()
	row.FirstError = req.err()
	if p.newUsers {
		row.MissingOnline = int64(p.users) - col.onDistinct.Load()
		row.DuplicateOnline, _ = col.onlineDuplicates()
	} else {
		row.Flaps = col.sinceMark.Load()
	}
	return row, nil
}

// rangePayload is {"userIds":[...]} for users start..end-1.
func rangePayload(tag string, start, end int) []byte {
	idx := make([]int, 0, end-start)
	for i := start; i < end; i++ {
		idx = append(idx, i)
	}
	return batchPayload(tag, idx)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// load brings users tag0..n-1 online with batched heartbeats and waits for
// every reply and every online event. It returns the seconds it took.
func (b *bench) load(ctx context.Context, im impl, col *collector, tag string, n int) (float64, error) {
	req, err := newRequester(b.c.pub, b.cfg.batchWindow)
	if err != nil {
		return 0, err
	}
	defer req.close()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
	defer cancel()
	t0 := time.Now()
	for start := 0; start < n; start += b.cfg.batchSize {
		if err := req.send(ctx, im.subjects.Heartbeat(), rangePayload(tag, start, min(start+b.cfg.batchSize, n)), nil); err != nil {
			return 0, err
		}
	}
	if err := req.wait(ctx); err != nil {
		return 0, err
	}
	if f := req.failed.Load(); f > 0 {
		return 0, fmt.Errorf("%d heartbeat requests failed: %s", f, req.err())
	}
	if err := col.waitOnline(ctx, n); err != nil {
		return 0, err
	}
	return time.Since(t0).Seconds(), nil
}

// settle waits until the relay has published and trimmed the outbox, so
// Redis memory is measured on the steady data set, for at most limit (the
// trailing second for the last trim included). presenced keeps published
// entries PRESENCE_OUTBOX_RETENTION (30s by default) for its query views,
// so the idle scenario, whose users live an hour, waits up to 45s; the
// offline scenario's users stop heartbeating while it waits and must not
// expire, so it waits less (see offlineSettle).
func (b *bench) settle(ctx context.Context, im impl, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		n, err := b.c.rdb.XLen(ctx, im.keys+"outbox").Result()
		if err != nil || n <= 10 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(min(time.Second, time.Until(deadline)))
}

// offlineSettle bounds the offline scenario's settle: its users heartbeat
// last during the load and next at most one interval into the steady
// state, so quiet time plus the interval must stay under the TTL. Half the
// slack is 15s at the full scale's defaults (TTL 60s, every 30s): the
// outbox still holds its retained entries then, and the offline table's
// memory figure includes them.
func offlineSettle(ttl, interval time.Duration) time.Duration {
	return max(0, (ttl-interval)/2)
}

// memBase is Redis memory before users come online.
type memBase struct{ used, data int64 }

func (b *bench) memBase(ctx context.Context) (memBase, error) {
	used, err := b.c.usedMemory(ctx)
	if err != nil {
		return memBase{}, err
	}
	data, err := b.c.dataMemory(ctx)
	return memBase{used, data}, err
}

// memPerUser returns the data memory per user since base (see dataMemory),
// the used_memory per user since base, and used_memory in MiB.
func (b *bench) memPerUser(ctx context.Context, base memBase, n int) (data, used, usedMB float64) {
	u, err1 := b.c.usedMemory(ctx)
	d, err2 := b.c.dataMemory(ctx)
	if err1 != nil || err2 != nil {
		return -1, -1, -1
	}
	return float64(d-base.data) / float64(n), float64(u-base.used) / float64(n), float64(u) / (1 << 20)
}

// ---- offline latency ----

func (b *bench) offline(ctx context.Context, im impl, n int) error {
	cfg := b.cfg
	progress("%s offline: %d users, %d replicas, ttl %s, heartbeat every %s, %.1f%%/min leaving for %s, %d background keys",
		im.name, n, cfg.replicas, cfg.offTTL, cfg.hbInterval, cfg.leavePct, cfg.offDuration, cfg.bgKeys)
	if err := b.c.reset(ctx, im, cfg.replicas, cfg.offTTL); err != nil {
		return err
	}
	row := OfflineRow{Impl: im.name, Users: n, BackgroundKeys: cfg.bgKeys, Replicas: len(b.c.workerPIDs()),
		TTL: cfg.offTTL.String(), Grace: cfg.offGrace.String(), HBInterval: cfg.hbInterval.String(), Duration: cfg.offDuration.String(), LeavePctPerMin: cfg.leavePct}
	base, err := b.memBase(ctx)
	if err != nil {
		return err
	}
	tag := "o-"
	if cfg.external {
		tag = fmt.Sprintf("o%02d-", rand.IntN(100))
	}
	col, err := newCollector(b.c.ev, im.subjects, tag, n)
	if err != nil {
		return err
	}
	defer col.close()
	if row.LoadSeconds, err = b.load(ctx, im, col, tag, n); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	row.LoadIDsPerSec = float64(n) / row.LoadSeconds
	row.DuplicateOnline, _ = col.onlineDuplicates()
	b.settle(ctx, im, offlineSettle(cfg.offTTL, cfg.hbInterval))
	row.MemPerUser, row.UsedPerUser, row.UsedMemoryMB = b.memPerUser(ctx, base, n)
	progress("  loaded in %.1fs; %.0f bytes/user in Redis; steady state for %s", row.LoadSeconds, row.MemPerUser, cfg.offDuration)

	col.mark()
	st, err := b.steady(ctx, im, col, tag, n)
	if err != nil {
		return err
	}
	row.Usage = st.usage
	row.MaxRoundSeconds = st.maxRound.Seconds()
	row.FailedRequests = st.failed
	row.UnknownDeadline = st.unknown.Load()

	var lat []float64
	grace := cfg.offGrace.Nanoseconds()
	for i := range n {
		lat = row.tally(st.leaver[i].Load(), st.deadline[i].Load(), col.offline[i].Load(), col.offFirst[i].Load(), grace, lat)
	}
	row.Flaps = col.sinceMark.Load()
	if len(lat) > 0 {
		slices.Sort(lat)
		row.P50Ms, row.P90Ms, row.P99Ms = pct(lat, 50), pct(lat, 90), pct(lat, 99)
		row.MinMs, row.MaxMs = lat[0], lat[len(lat)-1]
	}
	b.rep.Offline = append(b.rep.Offline, row)
	progress("  %d leavers: p50 %.0fms p99 %.0fms max %.0fms; missing %d, late %d, duplicated %d (%d events), false offline %d, flaps %d; workers %.0f%% cpu",
		row.Leavers, row.P50Ms, row.P99Ms, row.MaxMs, row.Missing, row.Late, row.DuplicatedUsers, row.DuplicateEvents, row.FalseOffline, row.Flaps, row.Usage.WorkerCPUSum)
	return b.c.checkWorkers()
}

// tally adds one user to the row: a user who kept heartbeating and got an
// offline is a false offline; a leaver is unknown (its deadline could not
// be read: steady counts it in UnknownDeadline, nothing else does),
// missing (no event by the end), or received, and then also late if its
// first event came more than grace after its deadline. Every received
// leaver's latency (first event minus deadline, ms) is appended to lat,
// late ones included. Times are unix nanos.
func (row *OfflineRow) tally(leaver bool, deadline int64, events uint32, first, grace int64, lat []float64) []float64 {
	if !leaver {
		if events > 0 {
			row.FalseOffline++
			row.FalseOfflineEvents += int64(events)
		}
		return lat
	}
	row.Leavers++
	if deadline == 0 {
		return lat
	}
	if events == 0 {
		row.Missing++
		return lat
	}
	row.Received++
	if first-deadline > grace {
		row.Late++
	}
	if events > 1 {
		row.DuplicatedUsers++
		row.DuplicateEvents += int64(events) - 1
	}
	return append(lat, float64(first-deadline)/1e6)
}

type steadyResult struct {
	leaver   []atomic.Bool
	deadline []atomic.Int64 // unix nanos; 0 when unknown
	usage    usage
	maxRound time.Duration
	failed   int64
	unknown  atomic.Int64
}

// batchQueue is an unbounded queue of leaver batches from the reply
// goroutine (which must not block) to the PTTL reader.
type batchQueue struct {
	mu     sync.Mutex
	items  [][]int32
	closed bool
	signal chan struct{}
}

func (q *batchQueue) push(b []int32) {
	q.mu.Lock()
	if !q.closed {
		q.items = append(q.items, b)
	}
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *batchQueue) take() ([][]int32, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items, q.closed
}

func (q *batchQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
}

// steady keeps the n users online with batched heartbeats every
// hbInterval, spread evenly over the interval. While offline-duration runs,
// each heartbeat is, with the probability that makes leave-per-min % of the
// users leave per minute, a user's last: the user leaves, and its deadline
// is read with PTTL once the heartbeat is applied. It stops when every
// leaver's deadline is 2s past and its offline event arrived, or
// offline-grace after the last deadline.
func (b *bench) steady(ctx context.Context, im impl, col *collector, tag string, n int) (*steadyResult, error) {
	cfg := b.cfg
	st := &steadyResult{leaver: make([]atomic.Bool, n), deadline: make([]atomic.Int64, n)}
	req, err := newRequester(b.c.pub, cfg.batchWindow)
	if err != nil {
		return nil, err
	}
	defer req.close()
	ctx, cancel := context.WithTimeout(ctx, cfg.offDuration+cfg.offTTL+cfg.offGrace+cfg.timeout)
	defer cancel()

	// Deadlines of leavers, read after their last heartbeat was applied.
	// deadline = time before the PTTL + PTTL: at most one round trip and
	// 1ms early, so a latency is at most that much too long.
	pttl := &batchQueue{signal: make(chan struct{}, 1)}
	var leavers, known, maxDeadline atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			batches, closed := pttl.take()
			for _, batch := range batches {
				t := time.Now().UnixNano()
				cmds := make([]*redis.DurationCmd, len(batch))
				_, _ = b.c.rdb.Pipelined(context.Background(), func(p redis.Pipeliner) error {
					for k, i := range batch {
						cmds[k] = p.PTTL(context.Background(), im.userKey(userID(tag, int(i))))
					}
					return nil
				})
				for k, i := range batch {
					d, err := cmds[k].Result()
					if err == nil && d >= 0 {
						dl := t + d.Nanoseconds()
						st.deadline[i].Store(dl)
						for {
							cur := maxDeadline.Load()
							if dl <= cur || maxDeadline.CompareAndSwap(cur, dl) {
								break
							}
						}
					} else {
						st.unknown.Add(1)
					}
					known.Add(1)
				}
			}
			if closed && len(batches) == 0 {
				return
			}
			if len(batches) == 0 {
				select {
				case <-pttl.signal:
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}()
	// Replies may still come after this returns: the queue ignores them.
	defer func() { pttl.close(); wg.Wait() }()

	rng := rand.New(rand.NewPCG(uint64(n), 42))
	perSecond := float64(n) * cfg.leavePct / 100 / 60
	m := b.c.meter(ctx)
	start := time.Now()
	leaveUntil := start.Add(cfg.offDuration)
	lastCheck := time.Time{}
	finished := func(now time.Time) bool {
		if now.Before(leaveUntil) || now.Sub(lastCheck) < 250*time.Millisecond {
			return false
		}
		lastCheck = now
		if known.Load() < leavers.Load() {
			return false
		}
		md := time.Unix(0, maxDeadline.Load())
		switch {
		case now.Before(md.Add(2 * time.Second)): // room for duplicates
			return false
		case now.After(md.Add(cfg.offGrace)):
			return true
		}
		for i := range n {
			if st.leaver[i].Load() && st.deadline[i].Load() != 0 && col.offline[i].Load() == 0 {
				return false
			}
		}
		return true
	}
	subject := im.subjects.Heartbeat()
	active := make([]int32, n)
	for i := range active {
		active[i] = int32(i)
	}
	next := make([]int32, 0, n)
	done := false
	for !done {
		roundStart := time.Now()
		prob := perSecond * cfg.hbInterval.Seconds() / float64(max(len(active), 1))
		batches := (len(active) + cfg.batchSize - 1) / cfg.batchSize
		if batches == 0 {
			return nil, errors.New("every user left: lower --leave-per-min or --offline-duration")
		}
		for k := 0; k < batches && !done; k++ {
			target := roundStart.Add(time.Duration(int64(cfg.hbInterval) * int64(k) / int64(batches)))
			for {
				now := time.Now()
				if done = finished(now); done || !now.Before(target) {
					break
				}
				select {
				case <-ctx.Done():
					return nil, fmt.Errorf("steady state: %w", ctx.Err())
				case <-time.After(min(target.Sub(now), 250*time.Millisecond)):
				}
			}
			if done {
				break
			}
			batch := active[k*cfg.batchSize : min((k+1)*cfg.batchSize, len(active))]
			leaving := time.Now().Before(leaveUntil)
			idx := make([]int, len(batch))
			var gone []int32
			for j, i := range batch {
				idx[j] = int(i)
				if leaving && rng.Float64() < prob {
					gone = append(gone, i)
					st.leaver[i].Store(true)
					leavers.Add(1)
				} else {
					next = append(next, i)
				}
			}
			var cb func()
			if len(gone) > 0 {
				cb = func() { pttl.push(gone) }
			}
			if err := req.send(ctx, subject, batchPayload(tag, idx), cb); err != nil {
				return nil, fmt.Errorf("steady state: %w", err)
			}
		}
		if !done {
			// users of the batches not sent are still in active
			active, next = next, active[:0]
			st.maxRound = max(st.maxRound, time.Since(roundStart))
		}
		if err := b.c.checkWorkers(); err != nil {
			return nil, err
		}
	}
	st.usage = m.done(ctx)
	_ = req.wait(ctx)
	st.failed = req.failed.Load() + req.lost()
	return st, nil
}

// pct returns the p-th percentile of sorted (nearest rank).
func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	k := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(k, len(sorted)-1))]
}

// ---- idle and query ----

func (b *bench) idleQuery(ctx context.Context, im impl, n int) error {
	cfg := b.cfg
	progress("%s idle/query: %d users online, ttl %s, %d replicas", im.name, n, cfg.idleTTL, cfg.replicas)
	if err := b.c.reset(ctx, im, cfg.replicas, cfg.idleTTL); err != nil {
		return err
	}
	base, err := b.memBase(ctx)
	if err != nil {
		return err
	}
	tag := "q-"
	if cfg.external {
		tag = fmt.Sprintf("q%02d-", rand.IntN(100))
	}
	col, err := newCollector(b.c.ev, im.subjects, tag, n)
	if err != nil {
		return err
	}
	secs, err := b.load(ctx, im, col, tag, n)
	col.close()
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	b.settle(ctx, im, 45*time.Second)
	row := IdleRow{Impl: im.name, Users: n, BackgroundKeys: cfg.bgKeys, LoadSeconds: secs}
	row.MemPerUser, row.UsedPerUser, row.UsedMemoryMB = b.memPerUser(ctx, base, n)
	if im.name == "presenced" && !cfg.external {
		// Where the bytes go: every key under the prefix but the user
		// keys, by name (either key layout), measured whole; the rest is
		// the users' own keys. Before the idle window, so its SCAN does
		// not count in the idle CPU.
		kb, err := scanBreakdown(ctx, b.c.rdb, im.keys)
		if err != nil {
			return fmt.Errorf("memory breakdown: %w", err)
		}
		row.Breakdown = kb.perUser(row.MemPerUser, n)
		row.BreakdownKeys = kb.Keys
		row.BreakdownSeconds = kb.Took.Seconds()
		row.BreakdownScans = kb.Scans
		progress("  memory breakdown: %d SCAN calls and MEMORY USAGE of %d keys in %.2fs", kb.Scans, sumInts(kb.Keys), kb.Took.Seconds())
	}
	if cfg.scenarios["idle"] {
		time.Sleep(2 * time.Second)
		m := b.c.meter(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.idleDuration):
		}
		row.Usage = m.done(ctx)
		progress("  idle %s: workers %v %% cpu, redis %.1f%%; %.0f bytes/user", cfg.idleDuration, fmtFloats(row.Usage.WorkerCPU), row.Usage.RedisCPU, row.MemPerUser)
	}
	b.rep.Idle = append(b.rep.Idle, row)
	if cfg.scenarios["query"] {
		if err := b.queries(ctx, im, tag, n); err != nil {
			return fmt.Errorf("queries: %w", err)
		}
	}
	return b.c.checkWorkers()
}

func fmtFloats(fs []float64) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = strconv.FormatFloat(f, 'f', 2, 64)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// queryAPI is how one implementation answers the three queries.
type queryAPI struct {
	path   string
	status func(ctx context.Context, id string) (bool, error)
	online func(ctx context.Context, ids []string, payload []byte) (int, error)
	// page returns one listing step: ids (as bytes of the reply, for
	// counting), the next cursor ("" when done) and the reply's size.
	page  func(ctx context.Context, cursor string) ([]string, string, int, error)
	count func(ctx context.Context) (int64, error)
}

func (b *bench) queryAPI(ctx context.Context, im impl) queryAPI {
	maxPayload := b.c.pub.MaxPayload()
	if im.name == "seed" {
		q := seedbaseline.NewQueries(b.c.rdb, im.keys)
		q.ScanCount = b.cfg.scanCount
		return queryAPI{
			path:   "redis (the seed's repository)",
			status: q.IsOnline,
			online: func(ctx context.Context, ids []string, _ []byte) (int, error) {
				on, err := q.OnlineAmong(ctx, ids)
				return len(on), err
			},
			page: func(ctx context.Context, cursor string) ([]string, string, int, error) {
				cur, _ := strconv.ParseUint(cursor, 10, 64)
				ids, next, err := q.ScanPage(ctx, cur)
				nc := ""
				if next != 0 {
					nc = strconv.FormatUint(next, 10)
				}
				return ids, nc, 0, err
			},
		}
	}
	nc := b.c.pub
	_, err := nc.Request(im.subjects.Query(contract.QueryCount), []byte("{}"), 2*time.Second)
	if err != nil {
		b.note("presenced queries measured on presence.Store directly, not over NATS: %s answered %v (the query service is not wired into presenced)", im.subjects.Query(contract.QueryCount), err)
		store := presence.NewStore(b.c.rdb, presence.Options{Prefix: im.keys, TTL: b.cfg.idleTTL})
		// The page size the query service would use: the most worst-case
		// ids that fit the max payload, as in bus.listCap.
		limit := int((maxPayload - 64) / (2*contract.MaxUserIDLen + 3))
		return queryAPI{
			path: "presence.Store (query service not wired)",
			status: func(ctx context.Context, id string) (bool, error) {
				s, err := store.Status(ctx, id)
				return s.Online, err
			},
			online: func(ctx context.Context, ids []string, _ []byte) (int, error) {
				on, err := store.GetOnlineUsers(ctx, ids)
				return len(on), err
			},
			page: func(ctx context.Context, cursor string) ([]string, string, int, error) {
				p, err := store.List(ctx, cursor, limit)
				if err != nil {
					return nil, "", 0, err
				}
				data, _ := json.Marshal(contract.ListReply{UserIDs: p.UserIDs, Cursor: p.Cursor})
				return p.UserIDs, p.Cursor, len(data), nil
			},
			count: store.Count,
		}
	}
	qc := client.New(nc, client.WithPrefix(im.subjects.Prefix), client.WithBatchSize(10000), client.WithTimeout(time.Minute))
	request := func(ctx context.Context, endpoint string, data []byte) (*nats.Msg, error) {
		m, err := nc.RequestWithContext(ctx, im.subjects.Query(endpoint), data)
		if err != nil {
			return nil, err
		}
		if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
			return nil, fmt.Errorf("%s: %s %s", endpoint, code, m.Header.Get("Nats-Service-Error"))
		}
		return m, nil
	}
	return queryAPI{
		path: "NATS query service",
		status: func(ctx context.Context, id string) (bool, error) {
			data, _ := json.Marshal(contract.StatusRequest{UserID: id})
			m, err := request(ctx, contract.QueryStatus, data)
			if err != nil {
				return false, err
			}
			var r contract.StatusReply
			err = json.Unmarshal(m.Data, &r)
			return r.Online, err
		},
		// Online goes through the Go client presenced ships, as a service
		// would call it: it encodes the request and decodes the reply
		// without reflection (encoding/json on the bench's side cost ~3.7 ms
		// of a 10k-id round trip), in one request of up to 10000 ids.
		online: func(ctx context.Context, ids []string, _ []byte) (int, error) {
			on, err := qc.Online(ctx, ids)
			return len(on), err
		},
		page: func(ctx context.Context, cursor string) ([]string, string, int, error) {
			data, _ := json.Marshal(contract.ListRequest{Cursor: cursor, Limit: 10000})
			m, err := request(ctx, contract.QueryList, data)
			if err != nil {
				return nil, "", 0, err
			}
			var r contract.ListReply
			err = json.Unmarshal(m.Data, &r)
			return r.UserIDs, r.Cursor, len(m.Data), err
		},
		count: func(ctx context.Context) (int64, error) {
			m, err := request(ctx, contract.QueryCount, []byte("{}"))
			if err != nil {
				return 0, err
			}
			var r contract.CountReply
			err = json.Unmarshal(m.Data, &r)
			return r.Online, err
		},
	}
}

func (b *bench) queries(ctx context.Context, im impl, tag string, n int) error {
	cfg := b.cfg
	api := b.queryAPI(ctx, im)
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	rng := rand.New(rand.NewPCG(7, uint64(n)))
	maxPayload := int(b.c.pub.MaxPayload())
	timed := func(reps int, f func() error) ([]float64, error) {
		lat := make([]float64, 0, reps)
		for range reps {
			t0 := time.Now()
			if err := f(); err != nil {
				return nil, err
			}
			lat = append(lat, float64(time.Since(t0).Nanoseconds())/1e6)
		}
		slices.Sort(lat)
		return lat, nil
	}
	add := func(q QueryRow, lat []float64) {
		q.Impl, q.Path, q.Reps = im.name, api.path, len(lat)
		if len(lat) > 0 {
			q.P50Ms, q.P99Ms, q.MaxMs = pct(lat, 50), pct(lat, 99), lat[len(lat)-1]
		}
		b.rep.Query = append(b.rep.Query, q)
		progress("  %-10s p50 %.3fms p99 %.3fms max %.3fms %s", q.Query, q.P50Ms, q.P99Ms, q.MaxMs, q.Detail)
	}

	// One id.
	wrong := 0
	lat, err := timed(cfg.queryReps, func() error {
		on, err := api.status(ctx, userID(tag, rng.IntN(n)))
		if err == nil && !on {
			wrong++
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	add(QueryRow{Query: "status (1 id)", Wrong: wrong}, lat)

	// Many ids, half of them online. The requests are built before timing.
	k := cfg.queryIDs
	type onlineReq struct {
		ids     []string
		payload []byte
		want    int
	}
	reqs := make([]onlineReq, cfg.query10k)
	for r := range reqs {
		ids := make([]string, k)
		for j := range ids {
			if j%2 == 0 {
				ids[j] = userID(tag, rng.IntN(n))
			} else {
				ids[j] = userID("zz-", j) // never online
			}
		}
		ids = dedupe(ids)
		payload, _ := json.Marshal(contract.OnlineRequest{UserIDs: ids})
		want := 0
		for _, id := range ids {
			if strings.HasPrefix(id, tag) {
				want++
			}
		}
		reqs[r] = onlineReq{ids, payload, want}
	}
	wrong = 0
	next := 0
	lat, err = timed(len(reqs), func() error {
		r := reqs[next]
		next++
		got, err := api.online(ctx, r.ids, r.payload)
		if err == nil && got != r.want {
			wrong++
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("online: %w", err)
	}
	if cfg.pprofDir != "" && api.path == "NATS query service" {
		// Profile a replica while the same queries repeat (untimed).
		done := b.profile(im, "query-online", nil)
		for i := 0; ; i++ {
			select {
			case <-done:
			default:
				if _, err := api.online(ctx, reqs[i%len(reqs)].ids, reqs[i%len(reqs)].payload); err != nil {
					return fmt.Errorf("online: %w", err)
				}
				continue
			}
			break
		}
	}
	add(QueryRow{Query: fmt.Sprintf("online (%d ids)", k), Wrong: wrong}, lat)

	// The whole listing, paged.
	seen := make([]bool, n)
	q := QueryRow{Query: fmt.Sprintf("list all %d", n), MaxPayload: maxPayload}
	var all []string
	t0 := time.Now()
	cursor := ""
	for {
		ids, next, size, err := api.page(ctx, cursor)
		if err != nil {
			return fmt.Errorf("list page %d: %w", q.Pages, err)
		}
		q.Pages++
		if im.name == "seed" {
			all = append(all, ids...)
		}
		q.MaxReplyBytes = max(q.MaxReplyBytes, size)
		if size > maxPayload {
			q.OverMaxPayload++
		}
		for _, id := range ids {
			q.IDs++
			if i := parseIndex(tag, []byte(id)); i >= 0 && i < n && !seen[i] {
				seen[i] = true
				q.Distinct++
			}
		}
		if next == "" {
			break
		}
		cursor = next
		if ctx.Err() != nil {
			return fmt.Errorf("list: %w", ctx.Err())
		}
	}
	if im.name == "seed" {
		// The seed's getAllOnlineUsers returns one array: that is its reply.
		data, _ := json.Marshal(all)
		q.MaxReplyBytes = len(data)
		if len(data) > maxPayload {
			q.OverMaxPayload = 1
		}
		q.Detail = fmt.Sprintf("%d SCAN calls (COUNT %d) over %d keys; one reply of %s", q.Pages, cfg.scanCount, n+cfg.bgKeys, mib(len(data)))
	} else {
		q.Detail = fmt.Sprintf("%d pages, largest reply %s", q.Pages, mib(q.MaxReplyBytes))
	}
	q.Missing = n - q.Distinct
	add(q, []float64{float64(time.Since(t0).Nanoseconds()) / 1e6})

	if api.count != nil {
		var got int64
		lat, err := timed(min(cfg.queryReps, 200), func() error {
			var err error
			got, err = api.count(ctx)
			return err
		})
		if err != nil {
			return fmt.Errorf("count: %w", err)
		}
		add(QueryRow{Query: "count", Detail: fmt.Sprintf("%d online", got)}, lat)
	}
	return nil
}

func dedupe(ids []string) []string {
	seen := make(map[string]struct{}, len(ids))
	out := ids[:0]
	for _, id := range ids {
		if _, ok := seen[id]; !ok {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}

func mib(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.0f KiB", float64(n)/1024)
}

// ---- profiles ----

// profile fetches a CPU profile of replica 0 of im into --pprof-dir, in
// one-second pieces (pprof's unit), until stop closes or --pprof-seconds
// are covered, and merges the pieces; the channel it returns closes when
// the profile is written. So a phase shorter than --pprof-seconds is
// profiled for its own length (rounded up to a second), and no phase is
// stretched to fill a profile. A nil stop profiles --pprof-seconds.
// `go tool pprof -top` of the profile is saved beside it and added to the
// report.
func (b *bench) profile(im impl, label string, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	if len(b.c.workers) == 0 || b.c.workers[0].pprof == "" {
		close(done)
		return done
	}
	addr := b.c.workers[0].pprof
	limit := b.cfg.pprofSeconds
	go func() {
		defer close(done)
		pr := Profile{Impl: im.name, Phase: label}
		defer func() {
			b.profMu.Lock()
			b.rep.Profiles = append(b.rep.Profiles, pr)
			b.profMu.Unlock()
		}()
		if err := os.MkdirAll(b.cfg.pprofDir, 0o755); err != nil {
			pr.Error = err.Error()
			return
		}
		pr.File = filepath.Join(b.cfg.pprofDir, fmt.Sprintf("%s-%s.pprof", im.name, label))
		client := &http.Client{Timeout: 30 * time.Second}
		t0 := time.Now()
		var pieces []string
		defer func() {
			for _, f := range pieces {
				_ = os.Remove(f)
			}
		}()
		// When the phase ended: stop is only looked at between pieces.
		stopAt := make(chan time.Time, 1)
		if stop != nil {
			go func() { <-stop; stopAt <- time.Now() }()
		}
		stopped := false
		for len(pieces) < limit && !stopped {
			f := fmt.Sprintf("%s.%d", pr.File, len(pieces))
			if err := fetchProfile(client, addr, f); err != nil {
				pr.Error = err.Error()
				return
			}
			pieces = append(pieces, f)
			select {
			case at := <-stopAt:
				stopped = true
				pr.PhaseEndedAfter = at.Sub(t0).Seconds()
			default:
			}
		}
		pr.Seconds = len(pieces)
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "go"
		}
		// pprof merges several profiles of one program into one.
		merged, err := exec.Command(goBin, append([]string{"tool", "pprof", "-proto"}, pieces...)...).Output()
		if err == nil {
			err = os.WriteFile(pr.File, merged, 0o644)
		}
		if err != nil {
			pr.Error = fmt.Sprintf("merge %d profiles: %v", len(pieces), err)
			return
		}
		out, err := exec.Command(goBin, "tool", "pprof", "-top", "-nodecount=25", pr.File).CombinedOutput()
		if err != nil {
			pr.Error = fmt.Sprintf("go tool pprof: %v", err)
			return
		}
		pr.Top = string(out)
		_ = os.WriteFile(strings.TrimSuffix(pr.File, ".pprof")+".top.txt", out, 0o644)
	}()
	return done
}

// fetchProfile writes a one-second CPU profile of the process serving
// pprof at addr to file.
func fetchProfile(client *http.Client, addr, file string) error {
	resp, err := client.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=1", addr))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
