package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The storm scenario's verdict and table.

// stormLost is what a storm lost or could not account for: messages
// dropped (or not known: a replica's counters unread), slow consumers on
// either side, users not stored or without an online event by the bound.
// None of them means no user lost.
func stormLost(r *StormRow) []string {
	var out []string
	sum := func(xs []int64) (s int64, unknown int) {
		for _, x := range xs {
			if x < 0 {
				unknown++
				continue
			}
			s += x
		}
		return s, unknown
	}
	d, unk := sum(r.Dropped)
	switch {
	case len(r.Dropped) == 0:
		out = append(out, "drops not read (no replica's /metrics)")
	case unk > 0:
		out = append(out, fmt.Sprintf("drops not read on %d of %d replicas", unk, len(r.Dropped)))
	}
	if d > 0 {
		out = append(out, fmt.Sprintf("%d dropped", d))
	}
	if s, _ := sum(r.SlowConsumer); s > 0 {
		out = append(out, fmt.Sprintf("%d slow-consumer errors", s))
	}
	if f, _ := sum(r.Failed); f > 0 {
		out = append(out, fmt.Sprintf("%d failed", f))
	}
	if r.ServerSlowConsumers > 0 {
		out = append(out, fmt.Sprintf("%d slow consumers cut off by nats-server", r.ServerSlowConsumers))
	}
	if m := int64(r.Users) - r.StoredAtBound; m > 0 {
		out = append(out, fmt.Sprintf("%d not stored by %s", m, r.Bound))
	}
	if m := int64(r.Users) - r.OnlineAtBound; m > 0 {
		out = append(out, fmt.Sprintf("%d without an online event by %s", m, r.Bound))
	}
	if m := int64(r.Users) - r.Stored; m > 0 {
		out = append(out, fmt.Sprintf("%d never stored (%.0fs)", m, r.WaitedSeconds))
	}
	return out
}

// stormTarget judges presenced's storm: none dropped, every user stored
// and announced online within the bound.
func stormTarget(r *Report) Target {
	t := Target{Name: "reconnect storm", Want: "1M single-id first heartbeats, 3 replicas: none dropped (counted), every user stored and online within 90s", Status: "n/a"}
	var p *StormRow
	for i := range r.Storm {
		if s := &r.Storm[i]; s.Impl == "presenced" && (p == nil || s.Users > p.Users) {
			p = s
		}
	}
	if p == nil {
		return t
	}
	lost := stormLost(p)
	t.Got = fmt.Sprintf("%d users: %d stored and %d online by %s; dropped %d", p.Users, p.StoredAtBound, p.OnlineAtBound, p.Bound, sumKnown(p.Dropped))
	if len(lost) > 0 {
		t.Got += "; " + strings.Join(lost, ", ")
	}
	t.Status = status(len(lost) == 0)
	var gaps []string
	if p.Users < 1000000 {
		gaps = append(gaps, fmt.Sprintf("%d users, not 1M", p.Users))
	}
	if p.Replicas != 3 {
		gaps = append(gaps, fmt.Sprintf("%d replicas, not 3", p.Replicas))
	}
	if d, _ := time.ParseDuration(p.Bound); d > 90*time.Second {
		gaps = append(gaps, fmt.Sprintf("bound %s, not 90s", p.Bound))
	}
	if len(gaps) > 0 {
		t.Note = "not at the target conditions: " + strings.Join(gaps, ", ")
	}
	return t
}

func sumKnown(xs []int64) int64 {
	var s int64
	for _, x := range xs {
		s += max(x, 0)
	}
	return s
}

func fmtInts(xs []int64) string {
	if len(xs) == 0 {
		return "-"
	}
	parts := make([]string, len(xs))
	for i, x := range xs {
		if x < 0 {
			parts[i] = "-"
		} else {
			parts[i] = strconv.FormatInt(x, 10)
		}
	}
	return strings.Join(parts, "/")
}

func fmtMiB(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, "/")
}

// printStorm writes the storm table: one column per implementation run.
func printStorm(w io.Writer, r *Report) {
	if len(r.Storm) == 0 {
		return
	}
	head := []string{"metric"}
	for _, s := range r.Storm {
		h := s.Impl
		if s.Impl == "seed" && s.SeedPendingLimit != 0 {
			h += fmt.Sprintf(" (pending limit %d)", s.SeedPendingLimit)
		}
		head = append(head, h)
	}
	rows := [][]string{head}
	f := func(name string, get func(s *StormRow) string) {
		row := []string{name}
		for i := range r.Storm {
			row = append(row, get(&r.Storm[i]))
		}
		rows = append(rows, row)
	}
	secs := func(v float64) string {
		if v < 0 {
			return "never"
		}
		return fmt.Sprintf("%.1f", v)
	}
	ref := r.Storm[0]
	f("publish s", func(s *StormRow) string { return fmt.Sprintf("%.2f", s.PublishSeconds) })
	f("publish msgs/s", func(s *StormRow) string { return num(s.PublishRate) })
	f("all stored after s", func(s *StormRow) string { return secs(s.StoredSeconds) })
	f("all online events after s", func(s *StormRow) string { return secs(s.OnlineSeconds) })
	f("not stored at the bound", func(s *StormRow) string { return strconv.FormatInt(int64(s.Users)-s.StoredAtBound, 10) })
	f("no online event at the bound", func(s *StormRow) string { return strconv.FormatInt(int64(s.Users)-s.OnlineAtBound, 10) })
	f("never stored (EXISTS at the end)", func(s *StormRow) string { return strconv.FormatInt(int64(s.Users)-s.Stored, 10) })
	f("no online event at the end", func(s *StormRow) string { return strconv.FormatInt(int64(s.Users)-s.Online, 10) })
	f("users with duplicate online", func(s *StormRow) string { return strconv.FormatInt(s.DuplicateOnline, 10) })
	f("dropped per replica", func(s *StormRow) string { return fmtInts(s.Dropped) })
	f("slow-consumer errors per replica", func(s *StormRow) string { return fmtInts(s.SlowConsumer) })
	f("nats-server slow consumers", func(s *StormRow) string { return fmtInts([]int64{s.ServerSlowConsumers}) })
	f("ids stored per replica", func(s *StormRow) string { return fmtInts(s.Accepted) })
	f("failed per replica", func(s *StormRow) string { return fmtInts(s.Failed) })
	f("peak rss MiB per replica (VmHWM)", func(s *StormRow) string { return fmtMiB(s.Usage.WorkerPeakMB) })
	f("rss MiB per replica at the end", func(s *StormRow) string { return fmtMiB(s.Usage.WorkerRSSMB) })
	f("cpu", func(s *StormRow) string { return cpuCell(s.Usage) })
	f("waited s", func(s *StormRow) string { return fmt.Sprintf("%.1f (%s)", s.WaitedSeconds, s.EndReason) })
	f("verdict", func(s *StormRow) string {
		if lost := stormLost(s); len(lost) > 0 {
			return "LOST: " + strings.Join(lost, ", ")
		}
		return "no user lost"
	})
	table(w, "l", fmt.Sprintf("Reconnect storm: %d single-id first heartbeats (new users, no reply) from one NATS connection, %d replicas; missing = not stored or no online event %s after the first publish; dropped: presenced's intake drops, the seed's pending-limit drops",
		ref.Users, ref.Replicas, ref.Bound), rows)
}
