package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"unicode/utf8"
)

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

// printReport writes the report as text tables, section by section; a
// section with nothing measured is left out.
func printReport(w io.Writer, r *Report) {
	printHeader(w, r)
	printCeiling(w, r)
	printThroughput(w, r)
	printOffline(w, r)
	printIdle(w, r)
	printQueries(w, r)
	printStorm(w, r)
	printGateways(w, r)
	printRedisMasters(w, r)
	printRedisCommands(w, r)
	printTargets(w, r)
	printProfiles(w, r)
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

// printHeader writes when and where the run happened and its settings.
func printHeader(w io.Writer, r *Report) {
	m := r.Machine
	fmt.Fprintf(w, "presence-bench  %s .. %s\n", r.Started, r.Finished)
	fmt.Fprintf(w, "machine: %d cpus, %s, %d MiB, %s; load1 %.2f at start, %.2f at end\n", m.NProc, m.CPUModel, m.MemTotalMB, m.Kernel, m.Load1Start, m.Load1End)
	fmt.Fprintf(w, "versions: %s, redis %s, nats-server %s; NATS max_payload %d\n", m.Go, m.Redis, m.NATS, r.MaxPayload)
	if s := r.Settings; s != nil {
		fmt.Fprintf(w, "settings: scale %v, replicas %v, users %v, background keys %v, user id length %v, seed concurrency %v\n",
			s["scale"], s["replicas"], s["users"], s["background_keys"], s["user_id_length"], s["seed_concurrency"])
		if t, ok := s["redis_topology"]; ok {
			fmt.Fprintf(w, "redis: %v\n", t)
		}
	}
	fmt.Fprintln(w, "CPU figures are % of one core (this machine has", m.NProc, "cores), as workers(sum of replicas)/redis/nats/bench, then the machine's idle % (all cores) in the phase.")
}

// printCeiling writes the redis-benchmark runs, if the ceiling ran.
func printCeiling(w io.Writer, r *Report) {
	c := r.Ceiling
	if c == nil {
		return
	}
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

// printThroughput writes one row per heartbeat phase, presenced beside the
// seed.
func printThroughput(w io.Writer, r *Report) {
	if len(r.Throughput) == 0 {
		return
	}
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
	title := "Heartbeat throughput, end to end: published until applied in Redis (reply) and, for new users, every online event received; ratio = presenced/seed"
	if t := r.Throughput[0].Topology; t != "" {
		title += "; on " + t
	}
	table(w, "lrrrrrrll", title, rows)
}

// printOffline writes one table per number of users of the offline
// scenario, presenced beside the seed.
func printOffline(w io.Writer, r *Report) {
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
		on := ""
		if ref.Topology != "" {
			on = " on " + ref.Topology
		}
		title := fmt.Sprintf("Offline latency at %d online users%s (+%d background keys, %d replicas, ttl %s, heartbeat every %s, %.1f%%/min leaving for %s): event received minus deadline",
			n, on, ref.BackgroundKeys, ref.Replicas, ref.TTL, ref.HBInterval, ref.LeavePctPerMin, ref.Duration)
		rows := [][]string{{"metric", "presenced", "seed", "ratio"}}
		f := func(name string, get func(o *OfflineRow) float64, format string, withRatio bool) {
			rows = append(rows, compareRow(p, s, name, get, format, withRatio))
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
}

// printIdle writes the idle scenario: CPU and Redis memory per user.
func printIdle(w io.Writer, r *Report) {
	if len(r.Idle) == 0 {
		return
	}
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
		rows = append(rows, compareRow(p, s, name, get, format, withRatio))
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

// printQueries writes one row per query, presenced beside the seed.
func printQueries(w io.Writer, r *Report) {
	if len(r.Query) == 0 {
		return
	}
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

// masterPhases are the phases that measured each master of a Redis
// Cluster, in the report's order, with their labels.
func masterPhases(r *Report) (labels []string, usages []usage) {
	add := func(label string, u usage) {
		if len(u.RedisMasters) > 0 {
			labels, usages = append(labels, label), append(usages, u)
		}
	}
	for _, t := range r.Throughput {
		add(t.Impl+" "+t.Phase, t.Usage)
	}
	for _, o := range r.Offline {
		add(fmt.Sprintf("%s offline %d steady", o.Impl, o.Users), o.Usage)
	}
	return labels, usages
}

// printRedisMasters writes each master's share of each phase on a Redis
// Cluster, and the spread.
func printRedisMasters(w io.Writer, r *Report) {
	labels, usages := masterPhases(r)
	if len(labels) == 0 {
		return
	}
	rows := [][]string{{"phase", "master", "partitions", "cpu s", "cpu %", "commands", "keys at end"}}
	for i, u := range usages {
		for k, m := range u.RedisMasters {
			label := ""
			if k == 0 {
				label = labels[i]
			}
			rows = append(rows, []string{label, m.Addr, fmt.Sprint(m.Partitions), cell("%.3f", m.CPUSeconds), cell("%.1f", m.CPUPct),
				cell("%.0f", float64(m.Commands)), cell("%.0f", float64(m.Keys))})
		}
		cpu, cmds, keys := masterSpreads(u.RedisMasters)
		rows = append(rows, []string{"", "spread (max/min - 1)", "", pctCell(cpu), "", pctCell(cmds), pctCell(keys)})
	}
	table(w, "llrrrrr", "Redis Cluster masters: each master's INFO cpu (used_cpu_user + used_cpu_sys) and total_commands_processed over the phase, DBSIZE at its end; every master shares this machine's cores, so the spread is the figure, not the sum", rows)
}

// pctCell formats a spread as a percentage.
func pctCell(f float64) string {
	switch {
	case f < 0:
		return "-"
	case math.IsInf(f, 1):
		return "inf"
	}
	return fmt.Sprintf("%.1f%%", 100*f)
}

// printRedisCommands writes the top Redis commands of each phase.
func printRedisCommands(w io.Writer, r *Report) {
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
	for _, g := range r.Gateways {
		addCmds(fmt.Sprintf("presenced gateways %d steady", g.Users), g.Usage)
	}
	if len(cmdRows) > 0 {
		table(w, "ll", "Redis time by command (INFO commandstats per second of the phase; a script's commands count inside EVALSHA and again on their own)",
			append([][]string{{"phase", "top commands"}}, cmdRows...))
	}
}

// printTargets writes each target with its verdict.
func printTargets(w io.Writer, r *Report) {
	if len(r.Targets) == 0 {
		return
	}
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

// printProfiles writes the top of each CPU profile taken.
func printProfiles(w io.Writer, r *Report) {
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
}

// cell formats v, or "-" when it was not measured (negative), unless the
// format is signed ("%+...").
func cell(format string, v float64) string {
	if v < 0 && !strings.HasPrefix(format, "%+") {
		return "-"
	}
	return fmt.Sprintf(format, v)
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

func mib(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.0f KiB", float64(n)/1024)
}

// compareRow is one metric of presenced's row p and the seed's row s, side
// by side: "-" for a side that did not run, and their ratio when asked.
func compareRow[R any](p, s *R, name string, get func(*R) float64, format string, withRatio bool) []string {
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
	return row
}
