package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// idleQuery loads n users into im with a long TTL, measures Redis memory
// per user (and presenced's breakdown of it), then, as the scenarios ask,
// the CPU while idle and the query latencies.
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
	col, err := newCollector(b.c.ev, im.subjects, tag, n, false)
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
