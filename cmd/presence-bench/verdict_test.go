package main

import (
	"context"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testenv"
)

func TestTally(t *testing.T) {
	const (
		dl    = int64(1_000_000_000_000) // a deadline, unix nanos
		grace = int64(10 * time.Second)
		ms    = int64(time.Millisecond)
	)
	type user struct {
		leaver   bool
		deadline int64
		events   uint32
		first    int64
	}
	tests := []struct {
		name  string
		users []user
		want  OfflineRow
		lat   []float64
	}{
		{"in time", []user{{true, dl, 1, dl + 150*ms}},
			OfflineRow{Leavers: 1, Received: 1}, []float64{150}},
		{"exactly at the grace is in time", []user{{true, dl, 1, dl + grace}},
			OfflineRow{Leavers: 1, Received: 1}, []float64{10000}},
		{"after the grace is late, and still in the percentiles", []user{{true, dl, 1, dl + grace + ms}},
			OfflineRow{Leavers: 1, Received: 1, Late: 1}, []float64{10001}},
		{"no event at all is missing, not in the percentiles", []user{{true, dl, 0, 0}},
			OfflineRow{Leavers: 1, Missing: 1}, nil},
		{"unknown deadline: a leaver, nothing else", []user{{true, 0, 1, dl}},
			OfflineRow{Leavers: 1}, nil},
		{"duplicate offline for a leaver", []user{{true, dl, 3, dl + 5*ms}},
			OfflineRow{Leavers: 1, Received: 1, DuplicatedUsers: 1, DuplicateEvents: 2}, []float64{5}},
		{"a late duplicate counts both ways", []user{{true, dl, 2, dl + 2*grace}},
			OfflineRow{Leavers: 1, Received: 1, Late: 1, DuplicatedUsers: 1, DuplicateEvents: 1}, []float64{20000}},
		{"offline for a user still heartbeating", []user{{false, 0, 2, dl}},
			OfflineRow{FalseOffline: 1, FalseOfflineEvents: 2}, nil},
		{"a user still heartbeating, no event", []user{{false, 0, 0, 0}}, OfflineRow{}, nil},
		{"early event (negative latency) is received", []user{{true, dl, 1, dl - 2*ms}},
			OfflineRow{Leavers: 1, Received: 1}, []float64{-2}},
		{"mixed", []user{{true, dl, 1, dl + ms}, {true, dl, 0, 0}, {true, dl, 1, dl + 30*grace}, {false, 0, 0, 0}},
			OfflineRow{Leavers: 3, Received: 2, Late: 1, Missing: 1}, []float64{1, 300000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var row OfflineRow
			var lat []float64
			for _, u := range tc.users {
				lat = row.tally(u.leaver, u.deadline, u.events, u.first, grace, lat)
			}
			if !reflect.DeepEqual(row, tc.want) {
				t.Errorf("row = %+v\nwant  %+v", row, tc.want)
			}
			if len(lat) != len(tc.lat) {
				t.Fatalf("latencies %v, want %v", lat, tc.lat)
			}
			for i := range lat {
				if lat[i] != tc.lat[i] {
					t.Errorf("latencies %v, want %v", lat, tc.lat)
				}
			}
		})
	}
}

func TestOfflineVerdicts(t *testing.T) {
	tests := []struct {
		name                   string
		row                    OfflineRow
		latency, missing, dups bool
	}{
		{"clean", OfflineRow{Leavers: 10, Received: 10, P99Ms: 200}, true, true, true},
		{"late events fail none-missing", OfflineRow{Leavers: 10, Received: 10, Late: 1, P99Ms: 200}, true, false, true},
		{"missing fails both", OfflineRow{Leavers: 10, Received: 9, Missing: 1, P99Ms: 200}, false, false, true},
		{"unknown deadlines fail none-missing", OfflineRow{Leavers: 10, Received: 9, UnknownDeadline: 1, P99Ms: 200}, true, false, true},
		{"slow p99", OfflineRow{Leavers: 10, Received: 10, P99Ms: 600}, false, true, true},
		{"duplicated", OfflineRow{Leavers: 10, Received: 10, DuplicatedUsers: 1, DuplicateEvents: 1}, true, true, false},
		{"false offline", OfflineRow{Leavers: 10, Received: 10, FalseOffline: 1}, true, true, false},
		{"online event in steady state", OfflineRow{Leavers: 10, Received: 10, Flaps: 1}, true, true, false},
		{"duplicate online at load", OfflineRow{Leavers: 10, Received: 10, DuplicateOnline: 1}, true, true, false},
		{"no event received: no latency to pass", OfflineRow{Leavers: 10, UnknownDeadline: 10}, false, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := offlineLatencyVerdict(&tc.row); ok != tc.latency {
				t.Errorf("latency verdict %v, want %v", ok, tc.latency)
			}
			got, ok := offlineMissingVerdict(&tc.row)
			if ok != tc.missing {
				t.Errorf("missing verdict %v (%s), want %v", ok, got, tc.missing)
			}
			if !strings.Contains(got, "late") {
				t.Errorf("missing verdict %q does not report late events", got)
			}
			if _, ok := offlineDuplicateVerdict(&tc.row); ok != tc.dups {
				t.Errorf("duplicate verdict %v, want %v", ok, tc.dups)
			}
		})
	}
}

func TestCeilingSummarize(t *testing.T) {
	tests := []struct {
		name      string
		attempts  []CeilingAttempt
		best      float64
		saturated bool
	}{
		{"one saturated run", []CeilingAttempt{{N: 1, OpsPerSec: 300e3, RedisCPU: 99}}, 300e3, true},
		{"unsaturated then saturated", []CeilingAttempt{{N: 1, OpsPerSec: 173e3, RedisCPU: 80}, {N: 2, OpsPerSec: 312e3, RedisCPU: 99}}, 312e3, true},
		{"best rate kept even if a saturated run was lower", []CeilingAttempt{{N: 1, OpsPerSec: 320e3, RedisCPU: 90}, {N: 2, OpsPerSec: 310e3, RedisCPU: 97}}, 320e3, true},
		{"never saturated", []CeilingAttempt{{N: 1, OpsPerSec: 173e3, RedisCPU: 80}, {N: 2, OpsPerSec: 180e3, RedisCPU: 94.9}}, 180e3, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Ceiling{Attempts: tc.attempts}
			c.summarize()
			if c.SetExGet != tc.best || c.Saturated != tc.saturated {
				t.Errorf("best %v saturated %v, want %v %v", c.SetExGet, c.Saturated, tc.best, tc.saturated)
			}
		})
	}
}

func TestBatchedVerdict(t *testing.T) {
	sat := &Ceiling{SetExGet: 200e3, Saturated: true, Attempts: []CeilingAttempt{{RedisCPU: 99}}}
	unsat := &Ceiling{SetExGet: 200e3, Attempts: []CeilingAttempt{{RedisCPU: 80}, {RedisCPU: 85}}}
	tests := []struct {
		name     string
		ids      float64
		c        *Ceiling
		status   string
		noteHas  string
		noteNone bool
	}{
		{"saturated pass", 150e3, sat, "pass", "", true},
		{"saturated fail", 50e3, sat, "FAIL", "", true},
		{"unsaturated pass is inconclusive", 150e3, unsat, "inconclusive", "85%", false},
		{"unsaturated fail stands", 50e3, unsat, "FAIL", "FAIL stands", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, st, note := batchedVerdict(tc.ids, tc.c)
			if st != tc.status {
				t.Errorf("status %q, want %q", st, tc.status)
			}
			if tc.noteNone && note != "" {
				t.Errorf("note %q, want none", note)
			}
			if !strings.Contains(note, tc.noteHas) {
				t.Errorf("note %q does not say %q", note, tc.noteHas)
			}
		})
	}
}

func TestCleanRows(t *testing.T) {
	clean := &ThroughputRow{}
	failed := &ThroughputRow{Failed: 3}
	dup := &ThroughputRow{DuplicateOnline: 1}
	tests := []struct {
		name   string
		p, s   *ThroughputRow
		status string
		note   string
	}{
		{"both clean", clean, clean, "pass", ""},
		{"presenced failed requests", failed, clean, "FAIL", "presenced's run was not clean: 3 failed"},
		{"seed unclean only noted", clean, dup, "pass", "the seed's run was not clean: 1 dup"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg := Target{Status: "pass"}
			cleanRows(&tg, tc.p, tc.s)
			if tg.Status != tc.status || !strings.HasPrefix(tg.Note, tc.note) || (tc.note == "" && tg.Note != "") {
				t.Errorf("status %q note %q, want %q %q", tg.Status, tg.Note, tc.status, tc.note)
			}
		})
	}
}

func TestMemoryTarget(t *testing.T) {
	idle := func(impl string, users int, mem float64) IdleRow {
		return IdleRow{Impl: impl, Users: users, MemPerUser: mem}
	}
	tests := []struct {
		name    string
		r       Report
		status  string
		gotHas  []string
		noteHas string
	}{
		{"no idle scenario: not measured, even with a flattering offline row",
			Report{Offline: []OfflineRow{{Impl: "presenced", Users: 100000, MemPerUser: 636}, {Impl: "seed", Users: 100000, MemPerUser: 432}}},
			"n/a", []string{"not measured"}, ""},
		{"judged on the seed in the same run, 72-byte ratio printed",
			Report{Idle: []IdleRow{idle("presenced", 1000000, 311), idle("seed", 1000000, 113)}},
			"FAIL", []string{"2.75x the seed's 113 bytes in this run (verdict)", "4.32x the target's nominal 72 bytes for the seed's key"}, ""},
		{"pass against the seed while over 2x 72 bytes",
			Report{Idle: []IdleRow{idle("presenced", 1000000, 200), idle("seed", 1000000, 113)}},
			"pass", []string{"1.77x the seed's", "2.78x the target's nominal 72 bytes for the seed's key"}, ""},
		{"no seed run: judged on 72 bytes, and says so",
			Report{Idle: []IdleRow{idle("presenced", 1000000, 140)}},
			"pass", []string{"verdict: no seed run"}, ""},
		{"below 1M users is noted",
			Report{Idle: []IdleRow{idle("presenced", 10000, 313), idle("seed", 10000, 100)}},
			"FAIL", []string{"3.13x"}, "not at 1M users"},
		{"memory not read",
			Report{Idle: []IdleRow{idle("presenced", 10000, -1), idle("seed", 10000, 100)}},
			"n/a", []string{"not measured"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg := memoryTarget(&tc.r)
			if tg.Status != tc.status {
				t.Errorf("status %q, want %q (got %q)", tg.Status, tc.status, tg.Got)
			}
			for _, s := range tc.gotHas {
				if !strings.Contains(tg.Got, s) {
					t.Errorf("got %q, want it to say %q", tg.Got, s)
				}
			}
			if tg.Note != tc.noteHas {
				t.Errorf("note %q, want %q", tg.Note, tc.noteHas)
			}
		})
	}
}

func TestIdleCPUTarget(t *testing.T) {
	row := func(cpu ...float64) Report {
		return Report{Idle: []IdleRow{{Impl: "presenced", Users: 1000000, Usage: usage{WorkerCPU: cpu}}}}
	}
	tests := []struct {
		name   string
		r      Report
		status string
	}{
		{"quiet replicas", row(0.5, 0.6, 0.4), "pass"},
		{"one busy replica", row(0.5, 2.5, 0.4), "FAIL"},
		{"unreadable CPU is not a pass", row(-1, -1, -1), "n/a"},
		{"one unreadable replica", row(0.5, -1, 0.4), "n/a"},
		{"idle not measured (query only)", Report{Idle: []IdleRow{{Impl: "presenced", Users: 1000000}}}, "n/a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tg := idleCPUTarget(&tc.r); tg.Status != tc.status {
				t.Errorf("status %q (%s), want %q", tg.Status, tg.Got, tc.status)
			}
		})
	}
}

func TestKeyGroup(t *testing.T) {
	tests := map[string]string{
		// the bucketed layout
		"s:0": groupSessions, "s:15": groupSessions,
		"d:1234:0": groupIndex, "dir": groupIndex,
		"count": groupOther, "clock": groupOther, "epoch": groupOther, "sweep": groupOther, "grace": groupOther,
		"outbox": groupOutbox,
		// the old layout
		"deadlines": groupIndex, "sessions": groupSessions,
		// user keys
		"user:u-1": groupUsers,
		// unknown names are other, not a structure they resemble
		"sessionsx": groupOther, "directory": groupOther,
	}
	for rest, want := range tests {
		if got := keyGroup(rest); got != want {
			t.Errorf("keyGroup(%q) = %q, want %q", rest, got, want)
		}
	}
}

func TestBreakdownMatch(t *testing.T) {
	for prefix, want := range map[string]string{
		"presence:":  `presence:[^u]*`,
		"a*b?[c]\\:": `a\*b\?\[c\]\\:[^u]*`,
	} {
		if got := breakdownMatch(prefix); got != want {
			t.Errorf("breakdownMatch(%q) = %q, want %q", prefix, got, want)
		}
	}
}

func TestPerUser(t *testing.T) {
	kb := keyBreakdown{Bytes: map[string]int64{groupSessions: 8000, groupIndex: 12000, groupOther: 100}}
	got := kb.perUser(300, 100)
	want := map[string]float64{groupSessions: 80, groupIndex: 120, groupOther: 1, groupUsers: 99}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

// TestScanBreakdown runs the scan against a real redis-server with both
// key layouts beside user and unrelated keys: the MATCH pattern must skip
// the user keys and the grouping must find every structure.
func TestScanBreakdown(t *testing.T) {
	rdb := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	for _, prefix := range []string{"presence:", "p[1]:"} {
		t.Run(prefix, func(t *testing.T) {
			if err := rdb.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			p := rdb.Pipeline()
			for i := range 500 {
				p.Set(ctx, prefix+"user:u-"+strconv.Itoa(i), "1", time.Hour)
				p.Set(ctx, "bg:"+strconv.Itoa(i), "x", time.Hour)
			}
			for s := range 4 {
				p.HSet(ctx, prefix+"s:"+strconv.Itoa(s), "u-1", "1")
			}
			p.HSet(ctx, prefix+"d:100:0", "u-1", "1")
			p.HSet(ctx, prefix+"d:100:1", "u-2", "1")
			p.ZAdd(ctx, prefix+"dir", redis.Z{Score: 100, Member: prefix + "d:100:0"})
			p.ZAdd(ctx, prefix+"deadlines", redis.Z{Score: 1, Member: "u-1"}) // the old layout
			p.HSet(ctx, prefix+"sessions", "u-1", "1")
			p.XAdd(ctx, &redis.XAddArgs{Stream: prefix + "outbox", Values: []string{"a", "b"}})
			for _, k := range []string{"count", "clock", "epoch", "sweep", "grace"} {
				p.Set(ctx, prefix+k, "1", 0)
			}
			p.Set(ctx, "other:presence:s:9", "1", 0) // not under the prefix
			if _, err := p.Exec(ctx); err != nil {
				t.Fatal(err)
			}
			kb, err := scanBreakdown(ctx, rdb, prefix)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]int{groupSessions: 5, groupIndex: 4, groupOutbox: 1, groupOther: 5}
			for g, n := range want {
				if kb.Keys[g] != n {
					t.Errorf("%s: %d keys, want %d (all: %v)", g, kb.Keys[g], n, kb.Keys)
				}
				if kb.Bytes[g] <= 0 {
					t.Errorf("%s: %d bytes", g, kb.Bytes[g])
				}
			}
			if kb.Keys[groupUsers] != 0 {
				t.Errorf("user keys were scanned: %v", kb.Keys)
			}
		})
	}
}

// TestOfflineSettleKeepsUsersAlive: the offline scenario's users are quiet
// from the load until their first steady heartbeat, up to the settle plus
// one interval; that must stay under the TTL, or users expire before the
// measurement and show as false offlines (a 45 s settle does that at both
// scales).
func TestOfflineSettleKeepsUsersAlive(t *testing.T) {
	for _, c := range []struct{ ttl, interval time.Duration }{
		{5 * time.Second, 2500 * time.Millisecond}, // small
		{time.Minute, 30 * time.Second},            // full
		{time.Second, time.Second},                 // no slack at all
	} {
		quiet := offlineSettle(c.ttl, c.interval) + c.interval
		if quiet > c.ttl-(c.ttl-c.interval)/2 {
			t.Errorf("ttl %s, interval %s: quiet for up to %s", c.ttl, c.interval, quiet)
		}
	}
	if got := offlineSettle(time.Minute, 30*time.Second); got != 15*time.Second {
		t.Errorf("full scale settles %s, want 15s", got)
	}
}
