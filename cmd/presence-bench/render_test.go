package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenReport is a report of fixed data with every section filled: the
// ceiling, throughput with both implementations and an unclean row,
// offline, idle with a breakdown, queries, a storm, the gateways scenario,
// Redis command stats,
// a profile, notes and an error. Its targets are computed, so the golden
// files pin the verdicts' text too.
func goldenReport() *Report {
	u := func(workers ...float64) usage {
		sum := 0.0
		for _, w := range workers {
			sum += w
		}
		return usage{
			Seconds: 2, WorkerCPU: workers, WorkerCPUSum: sum,
			WorkerRSSMB: []float64{31.5, 29}, WorkerPeakMB: []float64{40, 38},
			RedisCPU: 88.4, NATSCPU: -1, BenchCPU: 120, MachineIdlePc: 12,
			RedisCommands: []cmdStat{
				{Command: "evalsha", Calls: 2000, Usec: 90000, UsecPerCall: 45},
				{Command: "zadd", Calls: 2000, Usec: 8000, UsecPerCall: 4},
			},
		}
	}
	r := &Report{
		Started:  "2024-01-02T03:04:05Z",
		Finished: "2024-01-02T03:14:05Z",
		Machine: Machine{NProc: 8, CPUModel: "Test CPU @ 3GHz", MemTotalMB: 16000, Kernel: "Linux 6.1",
			Go: "go1.x", Redis: "7.2.4", NATS: "2.10.0", Load1Start: 1.25, Load1End: 0.5},
		Settings: map[string]any{
			"scale": "small", "replicas": 3, "users": []int{1000, 20000}, "background_keys": 5000,
			"user_id_length": 16, "seed_concurrency": 8,
		},
		MaxPayload: 1048576,
		Ceiling: &Ceiling{
			Command: "redis-benchmark", Pipeline: 16, Set: 900000, SetRedisCPU: 97,
			Attempts: []CeilingAttempt{
				{N: 100000, OpsPerSec: 400000, Seconds: 0.25, RedisCPU: 80, BenchmarkCPU: 90, MachineIdle: 60},
				{N: 400000, OpsPerSec: 520000, Seconds: 0.77, RedisCPU: 96, BenchmarkCPU: 99, MachineIdle: 50},
			},
		},
		Throughput: []ThroughputRow{
			{Impl: "presenced", Phase: "single-id, new users", IDs: 20000, Messages: 20000, Seconds: 0.5, IDsPerSec: 40000, MsgsPerSec: 40000, Usage: u(50, 40)},
			{Impl: "seed", Phase: "single-id, new users", IDs: 20000, Messages: 20000, Seconds: 2, IDsPerSec: 10000, MsgsPerSec: 10000, Usage: u(20)},
			{Impl: "presenced", Phase: "single-id, refresh", IDs: 20000, Messages: 20000, Seconds: 0.4, IDsPerSec: 50000, Flaps: 3, Usage: u(45, 44)},
			{Impl: "seed", Phase: "single-id, refresh", IDs: 20000, Messages: 20000, Seconds: 1, IDsPerSec: 20000, Failed: 2, Lost: 1, FirstError: "timeout", Usage: u(25)},
			{Impl: "presenced", Phase: "batched 500, new users", IDs: 200000, Messages: 400, Seconds: 0.5, IDsPerSec: 400000, Usage: u(150, 140)},
			{Impl: "presenced", Phase: "batched 500, refresh", IDs: 200000, Messages: 400, Seconds: 1, IDsPerSec: 200000, MissingOnline: 4, DuplicateOnline: 1, Usage: u(100, 90)},
		},
		Offline: []OfflineRow{
			{Impl: "presenced", Users: 1000, BackgroundKeys: 5000, Replicas: 3, TTL: "10s", HBInterval: "3s", Duration: "1m0s",
				LeavePctPerMin: 2, Grace: "5s", Leavers: 20, Received: 19, Late: 1, Missing: 1, P50Ms: 120.5, P90Ms: 300, P99Ms: 450.25, MaxMs: 700, MinMs: -3.5,
				LoadSeconds: 0.1, LoadIDsPerSec: 10000, MemPerUser: 150, UsedPerUser: 210, UsedMemoryMB: 3.2, MaxRoundSeconds: 0.4, Usage: u(3, 2)},
			{Impl: "seed", Users: 1000, BackgroundKeys: 5000, Replicas: 3, TTL: "10s", HBInterval: "3s", Duration: "1m0s",
				LeavePctPerMin: 2, Grace: "5s", Leavers: 20, Received: 20, P50Ms: 900, P90Ms: 1500, P99Ms: 2000, MaxMs: 2100, MinMs: 10,
				DuplicatedUsers: 2, DuplicateEvents: 3, LoadSeconds: 0.3, LoadIDsPerSec: 3300, MemPerUser: 90, UsedPerUser: 120, UsedMemoryMB: 2.1, FailedRequests: 1, Usage: u(6)},
			{Impl: "presenced", Users: 20000, BackgroundKeys: 5000, Replicas: 1, TTL: "10s", HBInterval: "3s", Duration: "1m0s",
				LeavePctPerMin: 1.5, Grace: "5s", Leavers: 0, Usage: u(3)},
		},
		Idle: []IdleRow{
			{Impl: "presenced", Users: 20000, BackgroundKeys: 5000, LoadSeconds: 0.5, MemPerUser: 130, UsedPerUser: 170, UsedMemoryMB: 4.4,
				Breakdown:        map[string]float64{groupUsers: 80, groupSessions: 30, groupIndex: 15, groupOutbox: 5, groupOther: 0},
				BreakdownKeys:    map[string]int{groupSessions: 10, groupIndex: 1, groupOutbox: 2, groupOther: 0},
				BreakdownSeconds: 0.12, BreakdownScans: 7, Usage: u(0.5, 0.25)},
			{Impl: "seed", Users: 20000, BackgroundKeys: 5000, LoadSeconds: 2, MemPerUser: 80, UsedPerUser: 100, UsedMemoryMB: 2.5, Usage: u(0.1)},
		},
		Query: []QueryRow{
			{Impl: "presenced", Query: "online 10000 ids", Path: "micro", Reps: 50, P50Ms: 2.5, P99Ms: 6.125, MaxMs: 7, Detail: "ok"},
			{Impl: "seed", Query: "online 10000 ids", Path: "redis MGET", Reps: 50, P50Ms: 5, P99Ms: 9, MaxMs: 12, Wrong: 2, Detail: "ok"},
			{Impl: "presenced", Query: "list all", Path: "micro", Reps: 1, P50Ms: 850, P99Ms: 850, MaxMs: 850, Pages: 4, IDs: 20000, Distinct: 19990, Missing: 10,
				MaxReplyBytes: 300000, MaxPayload: 1048576, Detail: "4 pages"},
		},
		Storm: []StormRow{
			{Impl: "presenced", Users: 20000, Replicas: 3, Bound: "90s", PublishSeconds: 0.8, PublishRate: 25000, StoredSeconds: 1.5, OnlineSeconds: 2,
				StoredAtBound: 20000, OnlineAtBound: 20000, Stored: 20000, Online: 20000, WaitedSeconds: 2, EndReason: "all online",
				Dropped: []int64{0, 0, 0}, SlowConsumer: []int64{0, 0, 0}, Accepted: []int64{7000, 6500, 6500}, Failed: []int64{0, 0, 0}, Usage: u(30, 30, 30)},
			{Impl: "seed", Users: 20000, Replicas: 3, Bound: "90s", SeedPendingLimit: 1000, PublishSeconds: 0.7, PublishRate: 28000, StoredSeconds: -1, OnlineSeconds: -1,
				StoredAtBound: 15000, OnlineAtBound: 14000, Stored: 15000, Online: 14000, DuplicateOnline: 2, WaitedSeconds: 20, EndReason: "stalled",
				Dropped: []int64{2000, -1, 3000}, SlowConsumer: []int64{-1, -1, -1}, Accepted: []int64{5000, 5000, 5000}, Failed: []int64{0, 0, 0},
				ServerSlowConsumers: -1, Usage: u(20, 20, 20)},
		},
		Gateways: []GatewaysRow{
			{Users: 20000, Gateways: 5, Connections: 26000, ConnsPerUser: 1.3, Replicas: 3, BackgroundKeys: 5000, TTL: "5s", HBInterval: "2.5s", Lease: "2s",
				Duration: "15s", LeavePctPerMin: 2, Grace: "10s", LoadSeconds: 0.5, LoadConnsPerSec: 52000, MemPerUser: 250, UsedPerUser: 260, UsedMemoryMB: 9.5,
				MaxRoundSeconds: 2.5, RejectedEntries: 1, Flaps: 0, KilledAfterS: 7.5, KilledGateway: "gw-0", KilledConns: 5200, LeaseExpiryKnown: true,
				Expired:   OfflineRow{Leavers: 90, Received: 89, Missing: 1, P50Ms: 130, P90Ms: 200, P99Ms: 260.5, MaxMs: 270, MinMs: -0.5, FalseOffline: 2, FalseOfflineEvents: 2},
				Lost:      OfflineRow{Leavers: 2800, Received: 2800, Late: 3, DuplicatedUsers: 1, DuplicateEvents: 1, P50Ms: 240, P90Ms: 400, P99Ms: 900, MaxMs: 1200, MinMs: 220},
				LostBound: "1s", Elsewhere: OfflineRow{FalseOffline: 1, FalseOfflineEvents: 1}, ElsewhereUsers: 2400, LostWrongReason: 2,
				Graced: []int64{0, 5, -1}, ConnsLost: []int64{5200, 0, -1}, Usage: u(10, 9, 8)},
		},
		Profiles: []Profile{
			{Impl: "presenced", Phase: "batched 500, new users", Seconds: 5, PhaseEndedAfter: 3.5, File: "/tmp/p.pprof", Top: "flat  flat%\n 1s  50%  main.f\n"},
			{Impl: "presenced", Phase: "idle", Seconds: 2, Error: "connection refused"},
		},
		Notes: []string{"load average was 1.25 at the start", "a second note"},
		Error: "scenario x: boom",
	}
	r.Ceiling.summarize()
	r.Targets = targets(r, &config{batchSize: 500, queryIDs: 10000})
	return r
}

// TestReportGolden pins the printed report and its JSON for fixed data:
// moving or reshaping the rendering code must not change a byte. Run with
// -update to rewrite the golden files after an intended change.
func TestReportGolden(t *testing.T) {
	r := goldenReport()

	var text bytes.Buffer
	printReport(&text, r)
	checkGolden(t, "report.golden.txt", text.Bytes())

	path := filepath.Join(t.TempDir(), "report.json")
	var stderr bytes.Buffer
	if err := writeJSON(path, r, &stderr); err != nil {
		t.Fatalf("writeJSON: %v (stderr %q)", err, stderr.String())
	}
	js, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "report.golden.json", js)
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestReportGolden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update if the change is intended):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// TestReportGoldenSparse pins a run that measured little: every section
// with nothing in it must be left out.
func TestReportGoldenSparse(t *testing.T) {
	r := &Report{Started: "2024-01-02T03:04:05Z", Machine: Machine{NProc: 2}, Error: "redis: connection refused"}
	r.Targets = targets(r, &config{batchSize: 500, queryIDs: 10000})
	var text bytes.Buffer
	printReport(&text, r)
	checkGolden(t, "report.sparse.golden.txt", text.Bytes())
}
