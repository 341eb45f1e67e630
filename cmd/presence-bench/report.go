package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Report is everything one run measured; --json writes it as is.
type Report struct {
	Started    string          `json:"started"`
	Finished   string          `json:"finished"`
	Machine    Machine         `json:"machine"`
	Settings   map[string]any  `json:"settings"`
	MaxPayload int64           `json:"nats_max_payload"`
	Ceiling    *Ceiling        `json:"ceiling,omitempty"`
	Throughput []ThroughputRow `json:"throughput,omitempty"`
	Offline    []OfflineRow    `json:"offline,omitempty"`
	Idle       []IdleRow       `json:"idle,omitempty"`
	Query      []QueryRow      `json:"query,omitempty"`
	Storm      []StormRow      `json:"storm,omitempty"`
	Profiles   []Profile       `json:"profiles,omitempty"`
	Targets    []Target        `json:"targets,omitempty"`
	Notes      []string        `json:"notes,omitempty"`
	Error      string          `json:"error,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	NProc      int     `json:"nproc"`
	CPUModel   string  `json:"cpu_model"`
	MemTotalMB int64   `json:"mem_total_mb"`
	Kernel     string  `json:"kernel"`
	Go         string  `json:"go"`
	Redis      string  `json:"redis"`
	NATS       string  `json:"nats_server"`
	Load1Start float64 `json:"load1_at_start"`
	Load1End   float64 `json:"load1_at_end"`
}

// Ceiling is what redis-benchmark measured on the same redis-server.
type Ceiling struct {
	Command   string  `json:"command"`
	N         int     `json:"n"` // requests of the best SET EX GET run
	Pipeline  int     `json:"pipeline"`
	SetExGet  float64 `json:"set_ex_get_ops_per_sec"` // the best run's
	RedisCPU  float64 `json:"redis_cpu_pct"`          // during the best run
	Saturated bool    `json:"saturated"`              // some run had Redis at >= saturatedCPU
	// Attempts are every SET EX GET run, in order.
	Attempts    []CeilingAttempt `json:"attempts"`
	Set         float64          `json:"set_ops_per_sec"`
	SetRedisCPU float64          `json:"set_redis_cpu_pct"`
}

// CeilingAttempt is one redis-benchmark run.
type CeilingAttempt struct {
	N            int     `json:"n"`
	OpsPerSec    float64 `json:"ops_per_sec"`
	Seconds      float64 `json:"seconds"`
	RedisCPU     float64 `json:"redis_cpu_pct"`
	BenchmarkCPU float64 `json:"redis_benchmark_cpu_pct"`
	MachineIdle  float64 `json:"machine_idle_pct"` // all cores
}

// summarize sets the best rate and whether Redis was saturated from the
// attempts. The best rate is kept even when it came from an unsaturated
// run (a higher ceiling only makes the target harder); Saturated says
// whether any run showed Redis at its limit.
func (c *Ceiling) summarize() {
	c.Saturated = false
	c.SetExGet, c.RedisCPU, c.N = 0, 0, 0
	for _, a := range c.Attempts {
		if a.OpsPerSec > c.SetExGet {
			c.SetExGet, c.RedisCPU, c.N = a.OpsPerSec, a.RedisCPU, a.N
		}
		if a.RedisCPU >= saturatedCPU {
			c.Saturated = true
		}
	}
}

// maxMachineIdle is the highest machine idle % of the attempts.
func (c *Ceiling) maxMachineIdle() float64 {
	m := 0.0
	for _, a := range c.Attempts {
		m = max(m, a.MachineIdle)
	}
	return m
}

// maxRedisCPU is the highest Redis CPU of the attempts.
func (c *Ceiling) maxRedisCPU() float64 {
	m := 0.0
	for _, a := range c.Attempts {
		m = max(m, a.RedisCPU)
	}
	return m
}

// ThroughputRow is one heartbeat throughput phase of one implementation.
type ThroughputRow struct {
	Impl            string  `json:"impl"`
	Phase           string  `json:"phase"`
	IDs             int64   `json:"ids"`
	Messages        int64   `json:"messages"`
	Seconds         float64 `json:"seconds"`
	IDsPerSec       float64 `json:"ids_per_sec"`
	MsgsPerSec      float64 `json:"msgs_per_sec"`
	MissingOnline   int64   `json:"missing_online"`
	DuplicateOnline int64   `json:"duplicate_online_users"`
	Flaps           int64   `json:"online_events_on_refresh"`
	Failed          int64   `json:"failed_requests"`
	Lost            int64   `json:"lost_requests"`
	FirstError      string  `json:"first_error,omitempty"`
	Usage           usage   `json:"usage"`
}

// OfflineRow is one offline-latency run.
type OfflineRow struct {
	Impl           string  `json:"impl"`
	Users          int     `json:"users"`
	BackgroundKeys int     `json:"background_keys"`
	Replicas       int     `json:"replicas"`
	TTL            string  `json:"ttl"`
	HBInterval     string  `json:"hb_interval"`
	Duration       string  `json:"leaving_for"`
	LeavePctPerMin float64 `json:"leave_pct_per_min"`
	Grace          string  `json:"grace"`
	Leavers        int64   `json:"leavers"`
	// Received counts leavers with an offline event (their first one is in
	// the percentiles), Late those of them whose event came after the
	// grace, Missing leavers with no event at all by the scenario's end
	// (at least the grace after every leaver's deadline).
	Received           int64   `json:"received"`
	Late               int64   `json:"late"`
	Missing            int64   `json:"missing"`
	UnknownDeadline    int64   `json:"unknown_deadline"`
	DuplicatedUsers    int64   `json:"duplicated_users"`
	DuplicateEvents    int64   `json:"duplicate_events"`
	FalseOffline       int64   `json:"false_offline_users"`
	FalseOfflineEvents int64   `json:"false_offline_events"`
	Flaps              int64   `json:"online_events_in_steady_state"`
	DuplicateOnline    int64   `json:"duplicate_online_users_at_load"`
	P50Ms              float64 `json:"p50_ms"`
	P90Ms              float64 `json:"p90_ms"`
	P99Ms              float64 `json:"p99_ms"`
	MaxMs              float64 `json:"max_ms"`
	MinMs              float64 `json:"min_ms"`
	LoadSeconds        float64 `json:"load_seconds"`
	LoadIDsPerSec      float64 `json:"load_ids_per_sec"`
	MemPerUser         float64 `json:"redis_data_bytes_per_user"`
	UsedPerUser        float64 `json:"redis_used_memory_bytes_per_user"`
	UsedMemoryMB       float64 `json:"redis_used_memory_mb"`
	MaxRoundSeconds    float64 `json:"max_heartbeat_round_seconds"`
	FailedRequests     int64   `json:"failed_requests"`
	Usage              usage   `json:"usage_steady"`
}

// IdleRow is the idle measurement with users online and no traffic.
type IdleRow struct {
	Impl           string  `json:"impl"`
	Users          int     `json:"users"`
	BackgroundKeys int     `json:"background_keys"`
	LoadSeconds    float64 `json:"load_seconds"`
	MemPerUser     float64 `json:"redis_data_bytes_per_user"`
	UsedPerUser    float64 `json:"redis_used_memory_bytes_per_user"`
	UsedMemoryMB   float64 `json:"redis_used_memory_mb"`
	// Breakdown is presenced's data bytes per user by group of keys
	// (MEMORY USAGE ... SAMPLES 0 of every key under the prefix but the
	// user keys, found with SCAN; "user keys and the rest" is what remains
	// of MemPerUser). BreakdownKeys counts the keys of each group;
	// BreakdownSeconds is what the SCAN and MEMORY USAGE calls took.
	Breakdown        map[string]float64 `json:"redis_bytes_per_user_by_group,omitempty"`
	BreakdownKeys    map[string]int     `json:"redis_keys_by_group,omitempty"`
	BreakdownSeconds float64            `json:"breakdown_seconds,omitempty"`
	BreakdownScans   int                `json:"breakdown_scan_calls,omitempty"`
	Usage            usage              `json:"usage"`
}

// QueryRow is one query's latency.
type QueryRow struct {
	Impl           string  `json:"impl"`
	Query          string  `json:"query"`
	Path           string  `json:"path"`
	Reps           int     `json:"reps"`
	P50Ms          float64 `json:"p50_ms"`
	P99Ms          float64 `json:"p99_ms"`
	MaxMs          float64 `json:"max_ms"`
	Wrong          int     `json:"wrong_answers"`
	Pages          int     `json:"pages,omitempty"`
	IDs            int     `json:"ids,omitempty"`
	Distinct       int     `json:"distinct,omitempty"`
	Missing        int     `json:"missing,omitempty"`
	MaxReplyBytes  int     `json:"max_reply_bytes,omitempty"`
	MaxPayload     int     `json:"max_payload,omitempty"`
	OverMaxPayload int     `json:"replies_over_max_payload,omitempty"`
	Detail         string  `json:"detail,omitempty"`
}

// Profile is a CPU profile taken during a scenario: Seconds one-second
// pieces, merged. PhaseEndedAfter is when the phase's load ended, in
// seconds after the profile started (0: the phase outlasted the profile,
// or the profile was of repeated untimed queries); the profile's last
// Seconds-PhaseEndedAfter seconds are then after the phase.
type Profile struct {
	Impl            string  `json:"impl"`
	Phase           string  `json:"phase"`
	Seconds         int     `json:"seconds"`
	PhaseEndedAfter float64 `json:"phase_ended_after_s,omitempty"`
	File            string  `json:"file,omitempty"`
	Top             string  `json:"top,omitempty"`
	Error           string  `json:"error,omitempty"`
}

// Target is one goal of the issue and whether this run met it.
type Target struct {
	Name   string `json:"name"`
	Want   string `json:"want"`
	Got    string `json:"got"`
	Status string `json:"status"` // pass, FAIL, n/a
	Note   string `json:"note,omitempty"`
}

func machineInfo() Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version(), Load1Start: load1()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
				m.MemTotalMB = kb / 1024
			}
		}
		f.Close()
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	return m
}

func load1() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(data))[0], 64)
	return f
}

// finish evaluates the targets.
func (b *bench) finish() {
	r := b.rep
	r.Finished = time.Now().UTC().Format(time.RFC3339)
	r.Machine.Load1End = load1()
	if r.Machine.Load1Start >= 1 {
		r.Notes = append(r.Notes, fmt.Sprintf("load average was %.2f at the start: the machine was not quiet, figures are pessimistic", r.Machine.Load1Start))
	}
	r.Targets = targets(r, b.cfg)
}

func thr(r *Report, impl, phase string) *ThroughputRow {
	for i := range r.Throughput {
		if r.Throughput[i].Impl == impl && strings.HasPrefix(r.Throughput[i].Phase, phase) {
			return &r.Throughput[i]
		}
	}
	return nil
}

func status(ok bool) string {
	if ok {
		return "pass"
	}
	return "FAIL"
}

func targets(r *Report, cfg *config) []Target {
	var ts []Target
	add := func(t Target) { ts = append(ts, t) }

	for _, phase := range []string{"single-id, new users", "single-id, refresh"} {
		t := Target{Name: "heartbeats, " + phase, Want: ">= 5x seed (same run)", Status: "n/a"}
		p, s := thr(r, "presenced", phase), thr(r, "seed", phase)
		if p != nil && s != nil && s.IDsPerSec > 0 {
			ratio := p.IDsPerSec / s.IDsPerSec
			t.Got = fmt.Sprintf("%.2fx (%s vs %s ids/s)", ratio, num(p.IDsPerSec), num(s.IDsPerSec))
			t.Status = status(ratio >= 5)
			cleanRows(&t, p, s)
		}
		add(t)
	}
	for _, kind := range []string{"new users", "refresh"} {
		t := Target{Name: fmt.Sprintf("heartbeats, batched %d, %s", cfg.batchSize, kind), Want: ">= 50% of redis-benchmark SET EX GET (Redis saturated)", Status: "n/a"}
		p := thr(r, "presenced", fmt.Sprintf("batched %d, %s", cfg.batchSize, kind))
		if p != nil && r.Ceiling != nil && r.Ceiling.SetExGet > 0 {
			t.Got, t.Status, t.Note = batchedVerdict(p.IDsPerSec, r.Ceiling)
			cleanRows(&t, p, nil)
		}
		add(t)
	}

	// Offline latency at the largest scale measured.
	var off *OfflineRow
	for i := range r.Offline {
		if o := &r.Offline[i]; o.Impl == "presenced" && (off == nil || o.Users > off.Users) {
			off = o
		}
	}
	cond := ""
	if off != nil {
		var gaps []string
		if off.Users < 1000000 {
			gaps = append(gaps, fmt.Sprintf("%d users, not 1M", off.Users))
		}
		if off.BackgroundKeys < 1000000 {
			gaps = append(gaps, fmt.Sprintf("%d background keys, not 1M", off.BackgroundKeys))
		}
		if off.Replicas != 3 {
			gaps = append(gaps, fmt.Sprintf("%d replicas, not 3", off.Replicas))
		}
		if off.LeavePctPerMin != 2 {
			gaps = append(gaps, fmt.Sprintf("%.1f%%/min leaving, not 2%%", off.LeavePctPerMin))
		}
		if off.FailedRequests > 0 {
			gaps = append(gaps, fmt.Sprintf("%d heartbeat requests failed in steady state", off.FailedRequests))
		}
		if len(gaps) > 0 {
			cond = "not at the target conditions: " + strings.Join(gaps, ", ")
		}
	}
	offT := func(name, want string, got func(o *OfflineRow) (string, bool)) {
		t := Target{Name: name, Want: want, Status: "n/a", Note: cond}
		if off != nil {
			g, ok := got(off)
			t.Got, t.Status = g, status(ok)
			if off.Leavers == 0 {
				t.Status, t.Note = "n/a", "no user left during the run"
			}
		}
		add(t)
	}
	offT("offline latency p99", "< 500ms (1M online, 2%/min, +1M background keys, 3 replicas)", offlineLatencyVerdict)
	offT("offline events missing", "none: every leaver's offline within the grace", offlineMissingVerdict)
	offT("offline events duplicated", "none, with 3 replicas", offlineDuplicateVerdict)

	q := func(prefix string) *QueryRow {
		for i := range r.Query {
			if r.Query[i].Impl == "presenced" && strings.HasPrefix(r.Query[i].Query, prefix) {
				return &r.Query[i]
			}
		}
		return nil
	}
	t := Target{Name: fmt.Sprintf("query of %d ids", cfg.queryIDs), Want: "< 10ms", Status: "n/a"}
	if o := q("online"); o != nil {
		t.Got = fmt.Sprintf("p99 %.2fms, p50 %.2fms (%s)", o.P99Ms, o.P50Ms, o.Path)
		if o.Wrong > 0 {
			t.Got += fmt.Sprintf(", %d of %d wrong answers", o.Wrong, o.Reps)
		}
		t.Status = status(o.P99Ms < 10 && o.Wrong == 0)
		if cfg.queryIDs != 10000 {
			t.Note = "not 10k ids"
		}
	}
	add(t)
	t = Target{Name: "paged listing of every user online", Want: "< 2s for 1M, no reply over max_payload", Status: "n/a"}
	if o := q("list"); o != nil {
		t.Got = fmt.Sprintf("%.2fs for %d users, %d pages, largest %s, %d over max_payload, %d missing (%s)",
			o.P50Ms/1000, o.Distinct+o.Missing, o.Pages, mib(o.MaxReplyBytes), o.OverMaxPayload, o.Missing, o.Path)
		t.Status = status(o.P50Ms < 2000 && o.OverMaxPayload == 0 && o.Missing == 0)
		if o.Distinct+o.Missing < 1000000 {
			t.Note = "not at 1M users"
		}
	}
	add(t)
	add(idleCPUTarget(r))
	add(memoryTarget(r))
	add(stormTarget(r))
	return ts
}

// cleanRows marks a throughput target whose rows had errors: presenced's
// errors fail it (its rate counts ids that were not applied or whose
// events were duplicated); the seed's are noted.
func cleanRows(t *Target, p, s *ThroughputRow) {
	var notes []string
	if c := checks(p); c != "ok" {
		t.Status = "FAIL"
		notes = append(notes, "presenced's run was not clean: "+c)
	}
	if s != nil {
		if c := checks(s); c != "ok" {
			notes = append(notes, "the seed's run was not clean: "+c)
		}
	}
	if len(notes) > 0 {
		t.Note = strings.Join(append(notes, t.Note), "; ")
		t.Note = strings.TrimSuffix(t.Note, "; ")
	}
}

// batchedVerdict judges a batched phase's rate against the ceiling. A
// ceiling that never saturated Redis is below what Redis can do: a pass
// against it proves nothing ("inconclusive"), a FAIL against it stands.
func batchedVerdict(idsPerSec float64, c *Ceiling) (got, st, note string) {
	f := idsPerSec / c.SetExGet
	got = fmt.Sprintf("%.0f%% (%s ids/s vs %s ops/s)", 100*f, num(idsPerSec), num(c.SetExGet))
	if c.Saturated {
		return got, status(f >= 0.5), ""
	}
	unsat := fmt.Sprintf("the ceiling did not saturate Redis (at most %.0f%% of a core in %d runs)", c.maxRedisCPU(), len(c.Attempts))
	if f >= 0.5 {
		return got, "inconclusive", unsat + ": the real ceiling is higher, so this share is overstated"
	}
	return got, "FAIL", unsat + ": a saturated ceiling would only be higher, so the FAIL stands"
}

func offlineLatencyVerdict(o *OfflineRow) (string, bool) {
	got := fmt.Sprintf("%.0fms at %d users (p50 %.0fms, max %.0fms; over %d received events)", o.P99Ms, o.Users, o.P50Ms, o.MaxMs, o.Received)
	if o.Missing > 0 {
		got += fmt.Sprintf("; %d leavers missing, not in the percentiles", o.Missing)
	}
	// No event received means no percentile: not a pass.
	return got, o.Received > 0 && o.P99Ms < 500 && o.Missing == 0
}

// offlineMissingVerdict: "none missing" fails on a leaver with no event
// at all (missing), on one whose event came after the grace (late: it is
// in the percentiles too) and on one whose deadline could not be read
// (unknown: not checked at all).
func offlineMissingVerdict(o *OfflineRow) (string, bool) {
	got := fmt.Sprintf("%d missing, %d late (after the %s grace) of %d leavers", o.Missing, o.Late, o.Grace, o.Leavers)
	if o.UnknownDeadline > 0 {
		got += fmt.Sprintf(", %d leavers with an unknown deadline (not checked)", o.UnknownDeadline)
	}
	return got, o.Missing == 0 && o.Late == 0 && o.UnknownDeadline == 0
}

// offlineDuplicateVerdict: a second offline for a leaver, an offline for
// a user still heartbeating, a second online for a user while loading, or
// an online event in steady state (every user was online already: a new
// session means one ended that should not have, or an event was
// republished) all break exactly once.
func offlineDuplicateVerdict(o *OfflineRow) (string, bool) {
	got := fmt.Sprintf("%d users (%d extra events); false offline %d; online events in steady state %d; users with duplicate online at load %d",
		o.DuplicatedUsers, o.DuplicateEvents, o.FalseOffline, o.Flaps, o.DuplicateOnline)
	return got, o.DuplicatedUsers == 0 && o.FalseOffline == 0 && o.Flaps == 0 && o.DuplicateOnline == 0
}

// idleCPUTarget judges the busiest presenced replica's CPU while idle. A
// replica whose CPU could not be read (-1) makes it n/a, not a pass.
func idleCPUTarget(r *Report) Target {
	t := Target{Name: "idle replica CPU", Want: "< 2% of one core (1M online, no traffic)", Status: "n/a"}
	row := largestIdle(r, "presenced")
	if row == nil || len(row.Usage.WorkerCPU) == 0 {
		return t
	}
	mx := slices.Max(row.Usage.WorkerCPU)
	if slices.Min(row.Usage.WorkerCPU) < 0 {
		t.Got = fmt.Sprintf("not measured: the CPU of %d of %d replicas could not be read", countNeg(row.Usage.WorkerCPU), len(row.Usage.WorkerCPU))
		return t
	}
	t.Got = fmt.Sprintf("%.2f%% (busiest of %d replicas, %d users online)", mx, len(row.Usage.WorkerCPU), row.Users)
	t.Status = status(mx < 2)
	if row.Users < 1000000 {
		t.Note = "not at 1M users"
	}
	return t
}

func countNeg(fs []float64) int {
	n := 0
	for _, f := range fs {
		if f < 0 {
			n++
		}
	}
	return n
}

// largestIdle returns impl's idle row with the most users, or nil.
func largestIdle(r *Report, impl string) *IdleRow {
	var best *IdleRow
	for i := range r.Idle {
		if row := &r.Idle[i]; row.Impl == impl && (best == nil || row.Users > best.Users) {
			best = row
		}
	}
	return best
}

// issueSeedKeyBytes is the seed's bare key as the issue sizes it.
const issueSeedKeyBytes = 72

// memoryTarget judges Redis memory per online user. Only the idle
// scenario counts: the users loaded once, no churn, at the largest
// --users (the offline rows are at other counts, where a doubling of
// Redis's dicts can land on few users; see BENCHMARKS.md). The verdict
// compares with the seed's bytes per user measured in the same run (its
// key with the dict and expiry overhead that any key pays); without a seed
// run, with the issue's 72 bytes. Both ratios are printed.
func memoryTarget(r *Report) Target {
	t := Target{Name: "Redis memory per online user", Want: "<= 2x the seed's bare key (~72 bytes)", Status: "n/a"}
	p := largestIdle(r, "presenced")
	if p == nil || p.MemPerUser <= 0 {
		t.Got = "not measured (judged only from the idle scenario, which did not run)"
		return t
	}
	var s *IdleRow
	if sr := largestIdle(r, "seed"); sr != nil && sr.Users == p.Users && sr.MemPerUser > 0 {
		s = sr
	}
	vs72 := p.MemPerUser / issueSeedKeyBytes
	if s != nil {
		t.Got = fmt.Sprintf("%.0f bytes = %.2fx the seed's %.0f bytes in this run (verdict); %.2fx the issue's 72 bytes", p.MemPerUser, p.MemPerUser/s.MemPerUser, s.MemPerUser, vs72)
		t.Status = status(p.MemPerUser <= 2*s.MemPerUser)
	} else {
		t.Got = fmt.Sprintf("%.0f bytes = %.2fx the issue's 72 bytes (verdict: no seed run to compare with)", p.MemPerUser, vs72)
		t.Status = status(p.MemPerUser <= 2*issueSeedKeyBytes)
	}
	t.Got += fmt.Sprintf(", idle scenario at %d users", p.Users)
	if p.Users < 1000000 {
		t.Note = "not at 1M users"
	}
	return t
}

// ---- printing ----

func num(f float64) string {
	switch {
	case f < 0:
		return "-"
	case f >= 1e6:
		return fmt.Sprintf("%.2fM", f/1e6)
	case f >= 1e4:
		return fmt.Sprintf("%.0fk", f/1e3)
	case f >= 100:
		return fmt.Sprintf("%.0f", f)
	default:
		return fmt.Sprintf("%.2f", f)
	}
}

func ratio(a, b float64) string {
	if a < 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func cpuCell(u usage) string {
	f := func(v float64) string {
		if v < 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%s/%s/%s/%s idle %s%%", f(u.WorkerCPUSum), f(u.RedisCPU), f(u.NATSCPU), f(u.BenchCPU), f(u.MachineIdlePc))
}

// table writes rows under a title; align has one letter per column, l or
// r (missing letters mean r; the first column defaults to l).
func table(w io.Writer, align, title string, rows [][]string) {
	fmt.Fprintf(w, "\n%s\n", title)
	widths := map[int]int{}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for k, r := range rows {
		var sb strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			left := i == 0
			if i < len(align) {
				left = align[i] == 'l'
			}
			if left {
				sb.WriteString("  " + c + pad)
			} else {
				sb.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(sb.String(), " "))
		if k == 0 {
			fmt.Fprintln(w, "  "+strings.Repeat("-", utf8.RuneCountInString(strings.TrimSpace(sb.String()))))
		}
	}
}

func printReport(w io.Writer, r *Report) {
	m := r.Machine
	fmt.Fprintf(w, "presence-bench  %s .. %s\n", r.Started, r.Finished)
	fmt.Fprintf(w, "machine: %d cpus, %s, %d MiB, %s; load1 %.2f at start, %.2f at end\n", m.NProc, m.CPUModel, m.MemTotalMB, m.Kernel, m.Load1Start, m.Load1End)
	fmt.Fprintf(w, "versions: %s, redis %s, nats-server %s; NATS max_payload %d\n", m.Go, m.Redis, m.NATS, r.MaxPayload)
	if s := r.Settings; s != nil {
		fmt.Fprintf(w, "settings: scale %v, replicas %v, users %v, background keys %v, user id length %v, seed concurrency %v\n",
			s["scale"], s["replicas"], s["users"], s["background_keys"], s["user_id_length"], s["seed_concurrency"])
	}
	fmt.Fprintln(w, "CPU figures are % of one core (this machine has", m.NProc, "cores), as workers(sum of replicas)/redis/nats/bench, then the machine's idle % (all cores) in the phase.")

	if c := r.Ceiling; c != nil {
		rows := [][]string{{"command", "requests", "ops/s", "redis cpu", "redis-benchmark cpu", "machine idle", "s"}}
		for i, a := range c.Attempts {
			name := fmt.Sprintf("SET key:__rand_int__ 1 EX 60 GET, run %d", i+1)
			if a.N == c.N && a.OpsPerSec == c.SetExGet {
				name += " (best)"
			}
			rows = append(rows, []string{name, num(float64(a.N)), num(a.OpsPerSec), fmt.Sprintf("%.0f%%", a.RedisCPU), fmt.Sprintf("%.0f%%", a.BenchmarkCPU), fmt.Sprintf("%.0f%%", a.MachineIdle), fmt.Sprintf("%.1f", a.Seconds)})
		}
		rows = append(rows, []string{"SET (-t set)", "", num(c.Set), fmt.Sprintf("%.0f%%", c.SetRedisCPU), "", "", ""})
		sat := fmt.Sprintf("Redis saturated (>= %d%% of a core)", saturatedCPU)
		if !c.Saturated {
			sat = fmt.Sprintf("Redis NOT saturated in any run (at most %.0f%%, want >= %d%%): the ceiling is understated", c.maxRedisCPU(), saturatedCPU)
		}
		table(w, "lrrrrrr", fmt.Sprintf("Redis ceiling: redis-benchmark -P %d -r 1000000 on the same redis-server, no workers running; SET EX GET repeats (longer) until Redis is saturated, at most %d runs, best kept. %s", c.Pipeline, ceilingAttempts, sat), rows)
	}

	if len(r.Throughput) > 0 {
		rows := [][]string{{"scenario", "ids", "presenced ids/s", "seed ids/s", "ratio", "presenced cpu", "seed cpu", "presenced checks", "seed checks"}}
		var phases []string
		for _, t := range r.Throughput {
			if !slices.Contains(phases, t.Phase) {
				phases = append(phases, t.Phase)
			}
		}
		for _, ph := range phases {
			p, s := thr(r, "presenced", ph), thr(r, "seed", ph)
			row := []string{ph, "", "-", "-", "-", "", "", "", ""}
			if p != nil {
				row[1], row[2], row[5], row[7] = num(float64(p.IDs)), num(p.IDsPerSec), cpuCell(p.Usage), checks(p)
			}
			if s != nil {
				row[3], row[6], row[8] = num(s.IDsPerSec), cpuCell(s.Usage), checks(s)
			}
			if p != nil && s != nil {
				row[4] = ratio(p.IDsPerSec, s.IDsPerSec)
			}
			rows = append(rows, row)
		}
		table(w, "lrrrrrrll", "Heartbeat throughput, end to end: published until applied in Redis (reply) and, for new users, every online event received; ratio = presenced/seed", rows)
	}

	for _, n := range uniqueUsers(r.Offline) {
		var p, s *OfflineRow
		for i := range r.Offline {
			o := &r.Offline[i]
			if o.Users == n {
				if o.Impl == "presenced" {
					p = o
				} else {
					s = o
				}
			}
		}
		ref := p
		if ref == nil {
			ref = s
		}
		title := fmt.Sprintf("Offline latency at %d online users (+%d background keys, %d replicas, ttl %s, heartbeat every %s, %.1f%%/min leaving for %s): event received minus deadline",
			n, ref.BackgroundKeys, ref.Replicas, ref.TTL, ref.HBInterval, ref.LeavePctPerMin, ref.Duration)
		rows := [][]string{{"metric", "presenced", "seed", "ratio"}}
		f := func(name string, get func(o *OfflineRow) float64, format string, withRatio bool) {
			row := []string{name, "-", "-", ""}
			var pv, sv float64 = -1, -1
			if p != nil {
				pv = get(p)
				row[1] = cell(format, pv)
			}
			if s != nil {
				sv = get(s)
				row[2] = cell(format, sv)
			}
			if withRatio {
				row[3] = ratio(pv, sv)
			}
			rows = append(rows, row)
		}
		f("users who left", func(o *OfflineRow) float64 { return float64(o.Leavers) }, "%.0f", false)
		f("p50 ms", func(o *OfflineRow) float64 { return o.P50Ms }, "%.1f", true)
		f("p90 ms", func(o *OfflineRow) float64 { return o.P90Ms }, "%.1f", true)
		f("p99 ms", func(o *OfflineRow) float64 { return o.P99Ms }, "%.1f", true)
		f("max ms", func(o *OfflineRow) float64 { return o.MaxMs }, "%.1f", true)
		f("min ms", func(o *OfflineRow) float64 { return o.MinMs }, "%+.1f", false)
		f("received (in the percentiles)", func(o *OfflineRow) float64 { return float64(o.Received) }, "%.0f", false)
		f("late (received after the grace "+ref.Grace+")", func(o *OfflineRow) float64 { return float64(o.Late) }, "%.0f", false)
		f("missing (no event at all by the end)", func(o *OfflineRow) float64 { return float64(o.Missing) }, "%.0f", false)
		f("leavers with unknown deadline", func(o *OfflineRow) float64 { return float64(o.UnknownDeadline) }, "%.0f", false)
		f("duplicated users", func(o *OfflineRow) float64 { return float64(o.DuplicatedUsers) }, "%.0f", false)
		f("duplicate events", func(o *OfflineRow) float64 { return float64(o.DuplicateEvents) }, "%.0f", false)
		f("false offline (still heartbeating)", func(o *OfflineRow) float64 { return float64(o.FalseOffline) }, "%.0f", false)
		f("online events in steady state", func(o *OfflineRow) float64 { return float64(o.Flaps) }, "%.0f", false)
		f("users with duplicate online at load", func(o *OfflineRow) float64 { return float64(o.DuplicateOnline) }, "%.0f", false)
		f("failed heartbeat requests", func(o *OfflineRow) float64 { return float64(o.FailedRequests) }, "%.0f", false)
		f("slowest heartbeat round s", func(o *OfflineRow) float64 { return o.MaxRoundSeconds }, "%.1f", false)
		f("load: ids/s (batched, new)", func(o *OfflineRow) float64 { return o.LoadIDsPerSec }, "%.0f", true)
		f("redis data bytes per user", func(o *OfflineRow) float64 { return o.MemPerUser }, "%.0f", true)
		f("redis used_memory bytes per user", func(o *OfflineRow) float64 { return o.UsedPerUser }, "%.0f", true)
		f("workers cpu % (sum)", func(o *OfflineRow) float64 { return o.Usage.WorkerCPUSum }, "%.1f", true)
		f("busiest worker rss MiB", func(o *OfflineRow) float64 { return maxOr(o.Usage.WorkerRSSMB) }, "%.1f", true)
		f("redis cpu %", func(o *OfflineRow) float64 { return o.Usage.RedisCPU }, "%.1f", true)
		f("nats cpu %", func(o *OfflineRow) float64 { return o.Usage.NATSCPU }, "%.1f", false)
		f("machine idle %", func(o *OfflineRow) float64 { return o.Usage.MachineIdlePc }, "%.0f", false)
		table(w, "lrrr", title, rows)
	}

	if len(r.Idle) > 0 {
		var p, s *IdleRow
		for i := range r.Idle {
			if r.Idle[i].Impl == "presenced" {
				p = &r.Idle[i]
			} else {
				s = &r.Idle[i]
			}
		}
		ref := p
		if ref == nil {
			ref = s
		}
		rows := [][]string{{"metric", "presenced", "seed", "ratio"}}
		f := func(name string, get func(o *IdleRow) float64, format string, withRatio bool) {
			row := []string{name, "-", "-", ""}
			var pv, sv float64 = -1, -1
			if p != nil {
				pv = get(p)
				row[1] = cell(format, pv)
			}
			if s != nil {
				sv = get(s)
				row[2] = cell(format, sv)
			}
			if withRatio {
				row[3] = ratio(pv, sv)
			}
			rows = append(rows, row)
		}
		f("busiest replica cpu %", func(o *IdleRow) float64 { return maxOr(o.Usage.WorkerCPU) }, "%.2f", false)
		f("all replicas cpu %", func(o *IdleRow) float64 { return o.Usage.WorkerCPUSum }, "%.2f", false)
		f("busiest replica rss MiB", func(o *IdleRow) float64 { return maxOr(o.Usage.WorkerRSSMB) }, "%.1f", true)
		f("redis cpu %", func(o *IdleRow) float64 { return o.Usage.RedisCPU }, "%.2f", false)
		f("redis data bytes per user", func(o *IdleRow) float64 { return o.MemPerUser }, "%.0f", true)
		f("redis used_memory bytes per user", func(o *IdleRow) float64 { return o.UsedPerUser }, "%.0f", true)
		if p != nil && len(p.Breakdown) > 0 {
			for _, k := range breakdownGroups {
				label := "  of which " + k
				if k != groupUsers {
					label += fmt.Sprintf(" (%d keys)", p.BreakdownKeys[k])
				}
				rows = append(rows, []string{label, fmt.Sprintf("%.0f", p.Breakdown[k]), "", ""})
			}
			rows = append(rows, []string{fmt.Sprintf("  breakdown took s (%d SCAN calls, MEMORY USAGE)", p.BreakdownScans), fmt.Sprintf("%.2f", p.BreakdownSeconds), "", ""})
		}
		f("redis used_memory MiB", func(o *IdleRow) float64 { return o.UsedMemoryMB }, "%.1f", true)
		f("load: ids/s (batched, new)", func(o *IdleRow) float64 { return float64(o.Users) / o.LoadSeconds }, "%.0f", true)
		table(w, "lrrr", fmt.Sprintf("Idle: %d users online (+%d background keys), no traffic, long TTL", ref.Users, ref.BackgroundKeys), rows)
	}

	if len(r.Query) > 0 {
		rows := [][]string{{"query", "presenced p50 ms", "p99 ms", "seed p50 ms", "p99 ms", "ratio p50", "presenced detail", "seed detail"}}
		var names []string
		for _, q := range r.Query {
			if !slices.Contains(names, q.Query) {
				names = append(names, q.Query)
			}
		}
		paths := map[string]string{}
		for _, name := range names {
			row := []string{name, "-", "-", "-", "-", "", "", ""}
			var pv, sv float64 = -1, -1
			for _, q := range r.Query {
				if q.Query != name {
					continue
				}
				paths[q.Impl] = q.Path
				d := q.Detail
				if q.Wrong > 0 {
					d += fmt.Sprintf(" %d WRONG answers", q.Wrong)
				}
				if q.Missing > 0 {
					d += fmt.Sprintf(" %d missing", q.Missing)
				}
				if q.Impl == "presenced" {
					pv = q.P50Ms
					row[1], row[2], row[6] = fmt.Sprintf("%.3f", q.P50Ms), fmt.Sprintf("%.3f", q.P99Ms), d
				} else {
					sv = q.P50Ms
					row[3], row[4], row[7] = fmt.Sprintf("%.3f", q.P50Ms), fmt.Sprintf("%.3f", q.P99Ms), d
				}
			}
			row[5] = ratio(pv, sv)
			rows = append(rows, row)
		}
		table(w, "lrrrrrll", fmt.Sprintf("Query latency (presenced via %s; seed via %s); a listing is one timed run", paths["presenced"], paths["seed"]), rows)
	}

	printStorm(w, r)

	var cmdRows [][]string
	addCmds := func(label string, u usage) {
		if len(u.RedisCommands) == 0 {
			return
		}
		var total int64
		for _, c := range u.RedisCommands {
			total += c.Usec
		}
		var parts []string
		for _, c := range u.RedisCommands[:min(5, len(u.RedisCommands))] {
			parts = append(parts, fmt.Sprintf("%s %.0fus/s (%s calls/s, %.1fus)", c.Command, float64(c.Usec)/u.Seconds, num(float64(c.Calls)/u.Seconds), c.UsecPerCall))
		}
		cmdRows = append(cmdRows, []string{label, strings.Join(parts, "; ")})
	}
	for _, t := range r.Throughput {
		addCmds(t.Impl+" "+t.Phase, t.Usage)
	}
	for _, o := range r.Offline {
		addCmds(fmt.Sprintf("%s offline %d steady", o.Impl, o.Users), o.Usage)
	}
	for _, s := range r.Storm {
		addCmds(fmt.Sprintf("%s storm %d", s.Impl, s.Users), s.Usage)
	}
	if len(cmdRows) > 0 {
		table(w, "ll", "Redis time by command (INFO commandstats per second of the phase; a script's commands count inside EVALSHA and again on their own)",
			append([][]string{{"phase", "top commands"}}, cmdRows...))
	}

	if len(r.Targets) > 0 {
		rows := [][]string{{"target", "want", "got", "status"}}
		for _, t := range r.Targets {
			st := t.Status
			if t.Note != "" {
				st += " (" + t.Note + ")"
			}
			rows = append(rows, []string{t.Name, t.Want, t.Got, st})
		}
		table(w, "llll", "Targets", rows)
	}
	for _, p := range r.Profiles {
		fmt.Fprintf(w, "\nCPU profile: %s replica 0, %s, %ds: %s\n", p.Impl, p.Phase, p.Seconds, p.File)
		if p.PhaseEndedAfter > 0 {
			fmt.Fprintf(w, "  the phase's load ended %.1fs into the profile: its last %.1fs are after the phase\n", p.PhaseEndedAfter, max(0, float64(p.Seconds)-p.PhaseEndedAfter))
		}
		if p.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", p.Error)
		}
		for _, line := range strings.Split(strings.TrimSpace(p.Top), "\n") {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
	if r.Error != "" {
		fmt.Fprintf(w, "\nRUN FAILED: %s\n", r.Error)
	}
}

// cell formats v, or "-" when it was not measured (negative), unless the
// format is signed ("%+...").
func cell(format string, v float64) string {
	if v < 0 && !strings.HasPrefix(format, "%+") {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func checks(t *ThroughputRow) string {
	var parts []string
	if t.MissingOnline > 0 {
		parts = append(parts, fmt.Sprintf("%d missing", t.MissingOnline))
	}
	if t.DuplicateOnline > 0 {
		parts = append(parts, fmt.Sprintf("%d dup", t.DuplicateOnline))
	}
	if t.Flaps > 0 {
		parts = append(parts, fmt.Sprintf("%d online on refresh", t.Flaps))
	}
	if t.Failed > 0 || t.Lost > 0 {
		parts = append(parts, fmt.Sprintf("%d failed, %d lost", t.Failed, t.Lost))
	}
	if len(parts) == 0 {
		return "ok"
	}
	return strings.Join(parts, ", ")
}

func uniqueUsers(rows []OfflineRow) []int {
	var out []int
	for _, r := range rows {
		if !slices.Contains(out, r.Users) {
			out = append(out, r.Users)
		}
	}
	return out
}

func maxOr(fs []float64) float64 {
	if len(fs) == 0 {
		return -1
	}
	return slices.Max(fs)
}

func writeJSON(path string, r *Report, stderr io.Writer) error {
	if path == "" {
		return nil
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err == nil {
		err = os.WriteFile(path, append(data, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintf(stderr, "presence-bench: write %s: %v\n", path, err)
	}
	return err
}
