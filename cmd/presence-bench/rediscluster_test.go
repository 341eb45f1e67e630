package main

import (
	"bytes"
	"io"
	"math"
	"strings"
	"testing"
)

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		name string
		vals []float64
		want float64
	}{
		{"equal", []float64{2, 2, 2}, 0},
		{"a fifth more", []float64{1, 1.2, 1.1}, 0.2},
		{"double", []float64{3, 1.5}, 1},
		{"all zero", []float64{0, 0, 0}, 0},
		{"one idle", []float64{0, 1, 1}, math.Inf(1)},
		{"one missing", []float64{1, -1, 1}, -1},
		{"one value", []float64{1}, -1},
		{"none", nil, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := spread(tc.vals); math.Abs(got-tc.want) > 1e-9 && !(math.IsInf(got, 1) && math.IsInf(tc.want, 1)) {
				t.Errorf("spread(%v) = %v, want %v", tc.vals, got, tc.want)
			}
		})
	}
}

// masters returns masterUsage rows with the given CPU seconds.
func masters(cpu ...float64) []masterUsage {
	out := make([]masterUsage, len(cpu))
	for i, c := range cpu {
		out[i] = masterUsage{Addr: "127.0.0.1:700" + string(rune('0'+i)), Partitions: 16, CPUSeconds: c, CPUPct: 10 * c, Commands: 1000, Keys: 500}
	}
	return out
}

func TestMasterSpreadTarget(t *testing.T) {
	report := func(phases ...[]masterUsage) *Report {
		r := &Report{}
		for i, ms := range phases {
			r.Offline = append(r.Offline, OfflineRow{Impl: "presenced", Users: 1000 * (i + 1), Usage: usage{RedisMasters: ms}})
		}
		return r
	}
	for _, tc := range []struct {
		name       string
		r          *Report
		present    bool
		status     string
		gotContain string
	}{
		{"one server", report(nil), false, "", ""},
		{"even", report(masters(1, 1.1, 1.05)), true, "pass", "10.0% worst of 1 phases"},
		{"at the bound", report(masters(1, 1.2, 1.1)), true, "pass", "20.0%"},
		{"one phase over", report(masters(1, 1.05, 1), masters(1, 1.3, 1.1)), true, "FAIL", "30.0% worst of 2 phases (presenced offline 2000 steady: 1.000/1.300/1.100"},
		{"a master idle", report(masters(0, 1, 1)), true, "FAIL", "inf"},
		{"a master not read", report(masters(1, -1, 1)), true, "n/a", "not measured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := masterSpreadTarget(tc.r)
			if ok != tc.present {
				t.Fatalf("present = %v, want %v", ok, tc.present)
			}
			if !ok {
				return
			}
			if got.Status != tc.status || !strings.Contains(got.Got, tc.gotContain) {
				t.Errorf("got %q, %s; want %s and %q in it", got.Got, got.Status, tc.status, tc.gotContain)
			}
		})
	}
}

func TestClusterConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    string
		wantErr string
	}{
		{"offline", "--redis-cluster --baseline none --scenarios offline", ""},
		{"throughput and offline, 5 masters", "--redis-cluster --redis-cluster-masters 5 --baseline none --scenarios throughput,offline", ""},
		{"seed baseline", "--redis-cluster --scenarios offline", "no seed baseline on a cluster"},
		{"ceiling", "--redis-cluster --baseline none --scenarios offline,ceiling", "ceiling: ceiling runs redis-benchmark"},
		{"every scenario", "--redis-cluster --baseline none", "not on a cluster: ceiling"},
		{"two masters", "--redis-cluster --redis-cluster-masters 2 --baseline none --scenarios offline", "at least 3"},
		{"external", "--redis-cluster --baseline none --scenarios offline --nats-url nats://x:4222 --redis-url redis://x:6379", "leave out --nats-url"},
		{"too many partitions", "--redis-cluster --baseline none --scenarios offline --redis-cluster-partitions 5000", "--redis-cluster-partitions 5000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NATS_URL", "")
			t.Setenv("REDIS_URL", "")
			_, err := parseConfig(strings.Fields(tc.args), io.Discard)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("parseConfig(%s): %v", tc.args, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("parseConfig(%s) = %v, want an error with %q", tc.args, err, tc.wantErr)
			}
		})
	}
}

// TestReportGoldenCluster pins a run on a Redis Cluster: the topology in
// the header and the titles, each master's share of each phase with the
// spreads, and the spread target.
func TestReportGoldenCluster(t *testing.T) {
	const topo = "Redis Cluster, 3 masters, 48 partitions"
	u := func(ms []masterUsage) usage {
		return usage{Seconds: 10, WorkerCPU: []float64{5, 6, 7}, WorkerCPUSum: 18, RedisCPU: 33, NATSCPU: 2, BenchCPU: 20, MachineIdlePc: 40, RedisMasters: ms}
	}
	ms := masters(1.1, 1.0, 1.05)
	ms[1].Commands, ms[2].Keys = 1100, -1
	r := &Report{
		Started: "2024-01-02T03:04:05Z", Finished: "2024-01-02T03:06:05Z",
		Machine: Machine{NProc: 2, CPUModel: "Test CPU", Go: "go1.x", Redis: "7.0.15", NATS: "2.10.0"},
		Settings: map[string]any{"scale": "small", "replicas": 3, "users": []int{1000}, "background_keys": 0,
			"user_id_length": 10, "seed_concurrency": 32, "redis_topology": topo},
		Throughput: []ThroughputRow{{Impl: "presenced", Topology: topo, Phase: "batched 100, refresh", IDs: 5000, Messages: 50, Seconds: 0.1, IDsPerSec: 50000,
			Usage: u(masters(0.3, 0.2, 0.25))}},
		Offline: []OfflineRow{{Impl: "presenced", Topology: topo, Users: 1000, Replicas: 3, TTL: "10s", HBInterval: "5s", Duration: "30s",
			LeavePctPerMin: 2, Grace: "10s", Leavers: 10, Received: 10, P50Ms: 100, P90Ms: 150, P99Ms: 200, MaxMs: 200, MinMs: 20, Usage: u(ms)}},
	}
	r.Targets = targets(r, &config{batchSize: 100, queryIDs: 10000})
	var text bytes.Buffer
	printReport(&text, r)
	checkGolden(t, "report.cluster.golden.txt", text.Bytes())
}
