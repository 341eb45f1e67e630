package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
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
	Gateways   []GatewaysRow   `json:"gateways,omitempty"`
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
	Topology        string  `json:"redis_topology,omitempty"`
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
	Topology       string  `json:"redis_topology,omitempty"`
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
