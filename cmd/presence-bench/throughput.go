package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// hbPhase is one heartbeat throughput phase: users sent rounds times in
// batches of batch ids, at most window requests awaiting a reply.
type hbPhase struct {
	name     string
	tag      string
	users    int
	batch    int
	rounds   int
	window   int
	newUsers bool // wait for every user's online event
	profile  string
}

// hbGroups are the throughput phases, in groups that share users.
func (b *bench) hbGroups() [][]hbPhase {
	cfg := b.cfg
	tag := "t-"
	if cfg.external {
		tag = fmt.Sprintf("t%02d-", rand.IntN(100)) // apart from earlier runs' users
	}
	single := []hbPhase{
		{name: "single-id, new users", tag: "s" + tag, users: cfg.hbUsers, batch: 1, rounds: 1, window: cfg.window, newUsers: true, profile: "single-new"},
		{name: "single-id, refresh", tag: "s" + tag, users: cfg.hbUsers, batch: 1, rounds: cfg.rounds, window: cfg.window, profile: "single-refresh"},
	}
	batched := []hbPhase{
		{name: fmt.Sprintf("batched %d, new users", cfg.batchSize), tag: "b" + tag, users: cfg.batchUsers, batch: cfg.batchSize, rounds: 1, window: cfg.batchWindow, newUsers: true, profile: "batched-new"},
		{name: fmt.Sprintf("batched %d, refresh", cfg.batchSize), tag: "b" + tag, users: cfg.batchUsers, batch: cfg.batchSize, rounds: cfg.rounds, window: cfg.batchWindow, profile: "batched-refresh"},
	}
	return [][]hbPhase{single, batched}
}

// throughput runs each group of phases (new users, then their refreshes)
// through every implementation in turn, from a fresh Redis each time, so a
// change in the machine's other load hits both about alike.
func (b *bench) throughput(ctx context.Context) error {
	cfg := b.cfg
	for _, group := range b.hbGroups() {
		for _, im := range b.c.impls() {
			progress("%s throughput: %d replicas", im.name, cfg.replicas)
			if err := b.c.reset(ctx, im, cfg.replicas, cfg.hbTTL); err != nil {
				return fmt.Errorf("%s: %w", im.name, err)
			}
			for _, p := range group {
				row, err := b.heartbeats(ctx, im, p)
				if err != nil {
					return fmt.Errorf("%s %s: %w", im.name, p.name, err)
				}
				b.rep.Throughput = append(b.rep.Throughput, row)
				progress("  %-28s %10.0f ids/s  (%d ids in %.2fs; workers %.0f%% cpu, redis %.0f%%)", p.name, row.IDsPerSec, row.IDs, row.Seconds, row.Usage.WorkerCPUSum, row.Usage.RedisCPU)
				if err := b.c.checkWorkers(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// heartbeats runs phase p against im and measures it end to end: from the
// first publish until every reply and, for new users, every online event.
func (b *bench) heartbeats(ctx context.Context, im impl, p hbPhase) (ThroughputRow, error) {
	row := ThroughputRow{Impl: im.name, Phase: p.name, Topology: b.c.topology()}
	col, err := newCollector(b.c.ev, im.subjects, p.tag, p.users, false)
	if err != nil {
		return row, err
	}
	defer col.close()
	col.mark()
	req, err := newRequester(b.c.pub, p.window)
	if err != nil {
		return row, err
	}
	defer req.close()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
	defer cancel()

	// The profile covers the phase, up to --pprof-seconds; the phase is
	// not repeated to fill it.
	var profDone <-chan struct{}
	profStop := make(chan struct{})
	defer func() {
		select {
		case <-profStop:
		default:
			close(profStop)
		}
	}()
	if p.profile != "" && b.cfg.pprofDir != "" {
		profDone = b.profile(im, p.profile, profStop)
	}
	subject := im.subjects.Heartbeat()
	m := b.c.meter(ctx)
	t0 := time.Now()
	var ids, msgs int64
	every := int64(b.cfg.replyEvery)
	for round := 0; round < p.rounds; round++ {
		for start := 0; start < p.users; start += p.batch {
			end := min(start+p.batch, p.users)
			var payload []byte
			if p.batch == 1 {
				payload = singlePayload(p.tag, start)
			} else {
				payload = rangePayload(p.tag, start, end)
			}
			msgs++
			// Every reply-every'th message, and the last of a round, asks
			// for a reply; the window bounds those, so at most window *
			// reply-every messages are on their way.
			if msgs%every == 0 || end == p.users {
				err = req.send(ctx, subject, payload, nil)
			} else {
				err = req.publish(subject, payload)
			}
			if err != nil {
				return row, err
			}
			ids += int64(end - start)
		}
	}
	if err := req.wait(ctx); err != nil {
		return row, fmt.Errorf("replies: %w", err)
	}
	end := time.Unix(0, req.lastReply.Load())
	if p.newUsers {
		if err := col.waitOnline(ctx, p.users); err != nil {
			return row, err
		}
		onlineAt := time.Unix(0, col.allOnlineAt.Load())
		progress("  %s: last reply after %.2fs, last online event after %.2fs", p.name, end.Sub(t0).Seconds(), onlineAt.Sub(t0).Seconds())
		end = maxTime(end, onlineAt)
	}
	row.Usage = m.done(ctx)
	close(profStop)
	if profDone != nil {
		<-profDone
	}
	row.IDs, row.Messages = ids, msgs
	row.Seconds = end.Sub(t0).Seconds()
	row.IDsPerSec = float64(ids) / row.Seconds
	row.MsgsPerSec = float64(msgs) / row.Seconds
	row.Failed, row.Lost = req.failed.Load(), req.lost()
	row.FirstError = req.err()
	if p.newUsers {
		row.MissingOnline = int64(p.users) - col.onDistinct.Load()
		row.DuplicateOnline, _ = col.onlineDuplicates()
	} else {
		row.Flaps = col.sinceMark.Load()
	}
	return row, nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
