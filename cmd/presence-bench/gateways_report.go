package main

import (
	"fmt"
	"io"
	"strings"
)

// The gateways scenario's verdicts and table.

// gatewaysTargets judges the gateways scenario: offline latency with
// connection heartbeats, and the killed gateway's users.
func gatewaysTargets(r *Report) []Target {
	exp := Target{Name: "gateways: offline latency p99", Want: "< 500ms, none missing or doubled (1M users, 5 gateways, 1.3 connections per user, 3 replicas)", Status: "n/a"}
	lost := Target{Name: "gateways: one gateway killed", Want: "every affected user offline (gateway_lost) within lease + 1s, users connected elsewhere untouched, none doubled", Status: "n/a"}
	if len(r.Gateways) == 0 {
		return []Target{exp, lost}
	}
	g := &r.Gateways[0]
	for i := range r.Gateways {
		if r.Gateways[i].Users > g.Users {
			g = &r.Gateways[i]
		}
	}
	var gaps []string
	if g.Users < 1000000 {
		gaps = append(gaps, fmt.Sprintf("%d users, not 1M", g.Users))
	}
	if g.Gateways != 5 {
		gaps = append(gaps, fmt.Sprintf("%d gateways, not 5", g.Gateways))
	}
	if g.ConnsPerUser < 1.25 || g.ConnsPerUser > 1.35 {
		gaps = append(gaps, fmt.Sprintf("%.2f connections per user, not 1.3", g.ConnsPerUser))
	}
	if g.Replicas != 3 {
		gaps = append(gaps, fmt.Sprintf("%d replicas, not 3", g.Replicas))
	}
	if g.FailedRequests > 0 || g.RejectedEntries > 0 || g.LeaseFailures > 0 {
		gaps = append(gaps, fmt.Sprintf("%d heartbeat requests failed, %d entries rejected, %d lease renewals failed", g.FailedRequests, g.RejectedEntries, g.LeaseFailures))
	}
	note := ""
	if len(gaps) > 0 {
		note = "not at the target conditions: " + strings.Join(gaps, ", ")
	}

	e := &g.Expired
	exp.Note = note
	exp.Got = fmt.Sprintf("%.0fms at %d users (p50 %.0fms, max %.0fms; %d leavers, %d received); missing %d, late %d, unknown deadline %d; duplicated %d users, wrong reason %d; false offline %d, online events in steady state %d, duplicate online at load %d",
		e.P99Ms, g.Users, e.P50Ms, e.MaxMs, e.Leavers, e.Received, e.Missing, e.Late, e.UnknownDeadline, e.DuplicatedUsers, g.ExpiredWrongReason, e.FalseOffline, g.Flaps, g.DuplicateOnline)
	exp.Status = status(e.Received > 0 && e.P99Ms < 500 && e.Missing == 0 && e.Late == 0 && e.UnknownDeadline == 0 &&
		e.DuplicatedUsers == 0 && g.ExpiredWrongReason == 0 && e.FalseOffline == 0 && g.Flaps == 0 && g.DuplicateOnline == 0)
	if e.Leavers == 0 {
		exp.Status, exp.Note = "n/a", "no user left during the run"
	}

	l := &g.Lost
	lost.Note = note
	lost.Got = fmt.Sprintf("%d connections of %s: %d users only on it, %d offline within %s of the lease's expiry (p50 %.0fms, p99 %.0fms, max %.0fms after it), %d later, %d missing, %d duplicated, %d wrong reason; %d of %d users connected elsewhere got an offline",
		g.KilledConns, g.KilledGateway, l.Leavers, l.Received-l.Late, g.LostBound, l.P50Ms, l.P99Ms, l.MaxMs, l.Late, l.Missing, l.DuplicatedUsers, g.LostWrongReason, g.Elsewhere.FalseOffline, g.ElsewhereUsers)
	if !g.LeaseExpiryKnown {
		lost.Got += "; the lease's expiry was not read"
	}
	lost.Status = status(g.LeaseExpiryKnown && l.Leavers > 0 && l.Received == l.Leavers && l.Late == 0 && l.Missing == 0 &&
		l.DuplicatedUsers == 0 && g.LostWrongReason == 0 && g.Elsewhere.FalseOffline == 0)
	return []Target{exp, lost}
}

// printGateways writes the gateways scenario: one column per group of
// users.
func printGateways(w io.Writer, r *Report) {
	for i := range r.Gateways {
		g := &r.Gateways[i]
		rows := [][]string{{"metric", "leavers (expired)", g.KilledGateway + " only (gateway_lost)", "also connected elsewhere"}}
		f := func(name string, get func(o *OfflineRow) string, cols ...int) {
			row := []string{name, "", "", ""}
			for _, c := range cols {
				row[c] = get([]*OfflineRow{nil, &g.Expired, &g.Lost, &g.Elsewhere}[c])
			}
			rows = append(rows, row)
		}
		d := func(get func(o *OfflineRow) int64) func(o *OfflineRow) string {
			return func(o *OfflineRow) string { return fmt.Sprintf("%d", get(o)) }
		}
		ms := func(format string, get func(o *OfflineRow) float64) func(o *OfflineRow) string {
			return func(o *OfflineRow) string {
				if o.Received == 0 {
					return "-"
				}
				return fmt.Sprintf(format, get(o))
			}
		}
		f("users", d(func(o *OfflineRow) int64 { return o.Leavers }), 1, 2)
		rows[len(rows)-1][3] = fmt.Sprintf("%d", g.ElsewhereUsers)
		f("latency measured from", func(o *OfflineRow) string {
			if o == &g.Expired {
				return "deadline"
			}
			return "lease expiry"
		}, 1, 2)
		f("p50 ms", ms("%.1f", func(o *OfflineRow) float64 { return o.P50Ms }), 1, 2)
		f("p90 ms", ms("%.1f", func(o *OfflineRow) float64 { return o.P90Ms }), 1, 2)
		f("p99 ms", ms("%.1f", func(o *OfflineRow) float64 { return o.P99Ms }), 1, 2)
		f("max ms", ms("%.1f", func(o *OfflineRow) float64 { return o.MaxMs }), 1, 2)
		f("min ms", ms("%+.1f", func(o *OfflineRow) float64 { return o.MinMs }), 1, 2)
		f("received (in the percentiles)", d(func(o *OfflineRow) int64 { return o.Received }), 1, 2)
		f("late (after "+g.Grace+" / after "+g.LostBound+")", d(func(o *OfflineRow) int64 { return o.Late }), 1, 2)
		f("missing (no event at all by the end)", d(func(o *OfflineRow) int64 { return o.Missing }), 1, 2)
		f("unknown deadline or expiry", d(func(o *OfflineRow) int64 { return o.UnknownDeadline }), 1, 2)
		f("duplicated users", d(func(o *OfflineRow) int64 { return o.DuplicatedUsers }), 1, 2)
		f("duplicate events", d(func(o *OfflineRow) int64 { return o.DuplicateEvents }), 1, 2)
		rows = append(rows, []string{"wrong reason", fmt.Sprintf("%d", g.ExpiredWrongReason), fmt.Sprintf("%d", g.LostWrongReason), ""})
		f("false offline (still connected)", d(func(o *OfflineRow) int64 { return o.FalseOffline }), 1, 3)
		g2 := [][]string{
			{"connections (per user)", fmt.Sprintf("%d (%.2f)", g.Connections, g.ConnsPerUser)},
			{"connections on " + g.KilledGateway, fmt.Sprintf("%d", g.KilledConns)},
			{"killed after s (into the steady state)", fmt.Sprintf("%.1f", g.KilledAfterS)},
			{"online events in steady state", fmt.Sprintf("%d", g.Flaps)},
			{"users with duplicate online at load", fmt.Sprintf("%d", g.DuplicateOnline)},
			{"failed heartbeat requests / rejected entries / failed lease renewals", fmt.Sprintf("%d / %d / %d", g.FailedRequests, g.RejectedEntries, g.LeaseFailures)},
			{"slowest heartbeat round s", fmt.Sprintf("%.1f", g.MaxRoundSeconds)},
			{"users given outage grace, per replica", fmtInts(g.Graced)},
			{"gateway connections lost, per replica", fmtInts(g.ConnsLost)},
			{"load: connections/s (new)", fmt.Sprintf("%.0f", g.LoadConnsPerSec)},
			{"redis data bytes per user (after the load)", cell("%.0f", g.MemPerUser)},
			{"redis used_memory bytes per user", cell("%.0f", g.UsedPerUser)},
			{"cpu in steady state", cpuCell(g.Usage)},
		}
		for _, kv := range g2 {
			rows = append(rows, []string{kv[0], kv[1], "", ""})
		}
		table(w, "lrrr", fmt.Sprintf("Gateways: %d users through %d gateways with leases (lease %s), %d replicas, +%d background keys, ttl %s, heartbeat every %s, %.1f%%/min leaving for %s (every connection stops); %s killed halfway: lease and heartbeats stop",
			g.Users, g.Gateways, g.Lease, g.Replicas, g.BackgroundKeys, g.TTL, g.HBInterval, g.LeavePctPerMin, g.Duration, g.KilledGateway), rows)
	}
}
