package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestPromSum(t *testing.T) {
	const text = `# HELP presenced_heartbeats_total Heartbeat ids received, by result.
# TYPE presenced_heartbeats_total counter
presenced_heartbeats_total{result="accepted"} 333412
presenced_heartbeats_total{result="failed"} 3
presenced_heartbeats_total_extra 7
presenced_intake_dropped_total 0
seed_nats_dropped_total 1.2e+06 1700000000000
`
	tests := []struct {
		name, metric, labels string
		want                 float64
		ok                   bool
	}{
		{"labelled series", "presenced_heartbeats_total", `result="accepted"`, 333412, true},
		{"all series summed", "presenced_heartbeats_total", "", 333415, true},
		{"a name that only starts alike is another metric", "presenced_heartbeats", "", 0, false},
		{"zero is read, not missing", "presenced_intake_dropped_total", "", 0, true},
		{"exponent and timestamp", "seed_nats_dropped_total", "", 1.2e6, true},
		{"absent", "presenced_nats_slow_consumer_total", "", 0, false},
		{"no series with the labels", "presenced_heartbeats_total", `result="rejected"`, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := promSum(text, tc.metric, tc.labels)
			if got != tc.want || ok != tc.ok {
				t.Errorf("promSum(%q, %q) = %v, %v; want %v, %v", tc.metric, tc.labels, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestStormLost(t *testing.T) {
	clean := func() StormRow {
		return StormRow{Impl: "presenced", Users: 1000, Replicas: 3, Bound: "1m30s",
			StoredAtBound: 1000, OnlineAtBound: 1000, Stored: 1000, Online: 1000,
			Dropped: []int64{0, 0, 0}, SlowConsumer: []int64{0, 0, 0}, Failed: []int64{0, 0, 0}}
	}
	tests := []struct {
		name   string
		change func(r *StormRow)
		want   []string
	}{
		{"clean", func(*StormRow) {}, nil},
		{"dropped on one replica", func(r *StormRow) { r.Dropped[1] = 5 }, []string{"5 dropped"}},
		{"a replica's counters unread is not a pass", func(r *StormRow) { r.Dropped[2] = -1 }, []string{"drops not read on 1 of 3 replicas"}},
		{"no counters at all is not a pass", func(r *StormRow) { r.Dropped = nil }, []string{"drops not read (no replica's /metrics)"}},
		{"slow consumer, no intake drop", func(r *StormRow) { r.SlowConsumer[0] = 1 }, []string{"1 slow-consumer errors"}},
		{"the seed's n/a slow-consumer column", func(r *StormRow) { r.SlowConsumer = []int64{-1, -1, -1} }, nil},
		{"failed ids", func(r *StormRow) { r.Failed[0] = 2 }, []string{"2 failed"}},
		{"server cut a client off", func(r *StormRow) { r.ServerSlowConsumers = 1 }, []string{"1 slow consumers cut off by nats-server"}},
		{"server count unknown is not a loss", func(r *StormRow) { r.ServerSlowConsumers = -1 }, nil},
		{"late: stored after the bound", func(r *StormRow) { r.StoredAtBound, r.OnlineAtBound = 900, 880 },
			[]string{"100 not stored by 1m30s", "120 without an online event by 1m30s"}},
		{"lost: never stored", func(r *StormRow) {
			r.StoredAtBound, r.OnlineAtBound, r.Stored, r.Online, r.WaitedSeconds = 990, 990, 990, 990, 105
		}, []string{"10 not stored by 1m30s", "10 without an online event by 1m30s", "10 never stored (105s)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := clean()
			tc.change(&r)
			if got := stormLost(&r); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("stormLost = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestStormTarget(t *testing.T) {
	row := func(impl string, users int, dropped int64) StormRow {
		return StormRow{Impl: impl, Users: users, Replicas: 3, Bound: "1m30s",
			StoredAtBound: int64(users), OnlineAtBound: int64(users), Stored: int64(users), Online: int64(users),
			Dropped: []int64{dropped, 0, 0}, SlowConsumer: []int64{0, 0, 0}, Failed: []int64{0, 0, 0}}
	}
	if got := stormTarget(&Report{}); got.Status != "n/a" {
		t.Errorf("no storm run: status %q, want n/a", got.Status)
	}
	// The seed's losses do not judge presenced.
	r := &Report{Storm: []StormRow{row("presenced", 1000000, 0), row("seed", 1000000, 700000)}}
	if got := stormTarget(r); got.Status != "pass" || got.Note != "" {
		t.Errorf("clean 1M run: %+v, want pass without a note", got)
	}
	r.Storm[0].Dropped[0] = 1
	r.Storm[0].StoredAtBound--
	r.Storm[0].Stored--
	if got := stormTarget(r); got.Status != "FAIL" || !strings.Contains(got.Got, "1 dropped") || !strings.Contains(got.Got, "1 never stored") {
		t.Errorf("one drop: %+v, want FAIL naming the drop and the lost user", got)
	}
	r = &Report{Storm: []StormRow{row("presenced", 200000, 0)}}
	if got := stormTarget(r); got.Status != "pass" || !strings.Contains(got.Note, "200000 users, not 1M") {
		t.Errorf("small run: %+v, want pass noted as not at 1M", got)
	}
}
