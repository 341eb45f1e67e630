package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/presence"
)

const (
	relayBatch   = 64 // outbox entries per read; an entry holds the events of one script call
	relayBlock   = 500 * time.Millisecond
	publishLimit = 5 * time.Second
	trimEvery    = time.Second
)

// relayer is the relay of one outbox (one partition of a Redis Cluster,
// or the one outbox of one server): its goroutine reads, publishes and
// acknowledges the outbox's entries and checks them for lost writes.
type relayer struct {
	w      *Worker
	outbox Outbox
	loss   LossChecker
	log    *slog.Logger
	// published is the highest event version this relay has published, and
	// unchecked the outbox entries it published since the last checkLoss,
	// after the newest one before (only the relay's goroutine uses them).
	published int64
	unchecked []presence.Published
	counters  map[[2]string]prometheus.Counter // see eventCounter
	depth     atomic.Int64                     // the outbox's length at the last trim
}

// relay publishes outbox entries to NATS and acknowledges them only after the
// server confirmed the publish (a flush, or with a stream a PubAck per
// event), so an event is never lost between Redis and NATS: an
// entry this replica read but could not publish is retried (ReadPending), and
// one left by a replica that died is republished by another (Reclaim) after
// ClaimAfter. A republish carries the same Nats-Msg-Id.
func (r *relayer) relay(ctx context.Context) {
	w := r.w
	var (
		retryOwn    = true // pending entries of this consumer first
		lastReclaim time.Time
		lastTrim    time.Time
		failing     bool
		unacked     []string // published, acknowledgement failed
	)
	for ctx.Err() == nil {
		if len(unacked) > 0 {
			// Acknowledge before anything else, so entries already published
			// are not published again when Redis returns.
			actx, cancel := context.WithTimeout(ctx, publishLimit)
			err := r.outbox.Ack(actx, unacked...)
			cancel()
			if err != nil {
				sleep(ctx, 200*time.Millisecond)
				continue
			}
			unacked = nil
		}
		if !w.bus.Connected() {
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		var (
			events []presence.Event
			err    error
		)
		switch {
		case retryOwn:
			events, err = r.outbox.ReadPending(ctx, relayBatch)
			if err == nil && len(events) == 0 {
				retryOwn = false
				continue
			}
		case time.Since(lastReclaim) > w.opts.ClaimAfter/2:
			lastReclaim = time.Now()
			events, err = r.outbox.Reclaim(ctx, w.opts.ClaimAfter, relayBatch)
			if err == nil && len(events) > 0 {
				w.m.Republished.Add(float64(len(events)))
				r.log.Warn("republishing events left unacknowledged by another replica", "count", len(events))
			}
		default:
			events, err = r.outbox.ReadNew(ctx, relayBatch, relayBlock)
		}
		if err == nil && len(events) > 0 {
			err = r.publish(ctx, events)
		}
		var ae *ackError
		if errors.As(err, &ae) {
			unacked = ae.ids
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if presence.IsNoGroup(err) {
				// Redis lost the stream (restart without persistence, FLUSHALL).
				if ierr := r.outbox.Init(ctx); ierr == nil {
					r.log.Warn("outbox group was missing and has been recreated")
					continue
				}
			}
			if !failing {
				r.log.Warn("relay failed; retrying", "err", err)
				failing = true
			}
			retryOwn = true
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		if failing {
			r.log.Info("relay recovered")
			failing = false
		}
		if time.Since(lastTrim) > trimEvery {
			lastTrim = time.Now()
			r.checkLoss(ctx)
			r.trim(ctx)
		}
	}
}

// publish confirms that this replica still owns the entries the events
// came from, publishes the events of those it owns in outbox order, and
// acknowledges each entry once the server confirmed all of its events (a
// flush on core NATS, a PubAck per event with a stream). An entry with an
// event not confirmed stays pending, to be published again. The confirmation
// (Outbox.Own) resets the entries' idle time, so no other replica reclaims
// them for ClaimAfter; nothing is sent later than half of that after it
// (monotonic clock): the rest is confirmed again first. So a replica paused
// between reading and publishing does not publish entries another replica
// reclaimed and published meanwhile. The confirmation, the publish and the
// ack do not use ctx's cancellation (each batch is bounded by publishLimit),
// so a stopping worker still publishes and acknowledges what it read.
func (r *relayer) publish(ctx context.Context, events []presence.Event) error {
	w := r.w
	if err := afterOutboxRead(events); err != nil { // a fault point in -tags faultinject builds only
		return err
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishLimit)
	defer cancel()
	ids := entryIDs(events)
	confirmed := time.Now()
	owned, err := r.outbox.Own(fctx, ids)
	if err != nil {
		return err
	}
	if len(owned) < len(ids) {
		r.log.Warn("skipping outbox entries this replica no longer owns (acknowledged or reclaimed by another replica while it was paused)",
			"entries", len(ids)-len(owned))
		events = keepEntries(events, owned)
	}
	if len(events) == 0 {
		return nil
	}
	sendBy := confirmed.Add(w.opts.ClaimAfter / 2)
	// One group per entry, so an entry is published whole or not at all
	// (on core NATS a half-sent entry would be sent twice). Decode failures
	// are dropped (their entries acknowledged).
	var (
		groups  [][]contract.Event
		entries [][]presence.Event // the events of groups[g], for the logs and metrics
		gids    []string           // the entry of groups[g]
	)
	for _, e := range events {
		if err := e.Valid(); err != nil {
			r.log.Error("dropping outbox entry", "err", err)
			continue
		}
		if len(gids) == 0 || gids[len(gids)-1] != e.ID {
			groups, entries, gids = append(groups, nil), append(entries, nil), append(gids, e.ID)
		}
		g := len(groups) - 1
		groups[g] = append(groups[g], contract.Event{UserID: e.UserID, Status: e.Status, Reason: e.Reason, At: e.At(), Version: e.Version,
			Partition: e.Partition, Partitions: e.Partitions})
		entries[g] = append(entries[g], e)
	}
	errs := w.bus.PublishBatch(fctx, w.opts.Subjects, groups, sendBy)
	now := time.Now()
	var (
		failed   = map[string]bool{} // entries not confirmed
		firstErr error
	)
	for g, err := range errs {
		if err != nil {
			failed[gids[g]] = true
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, e := range entries[g] {
			r.recordPublished(e, now)
		}
	}
	done := ids[:0:0]
	for _, id := range owned {
		if !failed[id] {
			done = append(done, id)
		}
	}
	if err := r.outbox.Ack(fctx, done...); err != nil {
		return &ackError{ids: done, err: err}
	}
	if firstErr != nil {
		return fmt.Errorf("%d of %d outbox entries not confirmed (they stay pending): %w", len(failed), len(groups), firstErr)
	}
	return nil
}

// recordPublished counts and logs one event the server confirmed, and
// remembers its outbox entry for the data-loss check (see checkLoss).
func (r *relayer) recordPublished(e presence.Event, now time.Time) {
	w := r.w
	r.published = max(r.published, e.Version)
	if n := len(r.unchecked); n > 0 && r.unchecked[n-1].Entry == e.ID {
		r.unchecked[n-1].Version = max(r.unchecked[n-1].Version, e.Version)
	} else {
		if n >= maxUnchecked {
			// Redis has been unreachable for long: the newest entries
			// published tell as much (Redis loses a suffix of its writes).
			r.unchecked = append(r.unchecked[:0], r.unchecked[n-maxUnchecked/2:]...)
		}
		r.unchecked = append(r.unchecked, presence.Published{Entry: e.ID, Version: e.Version})
	}
	r.eventCounter(e.Status, e.Reason).Inc()
	if !e.Deadline.IsZero() {
		w.m.OfflineLag.Observe(now.Sub(e.Deadline).Seconds())
	}
	switch {
	case e.Status == contract.StatusReset:
		r.log.Warn("presence data set was empty or lost: published a reset so consumers resynchronise", "version", e.Version)
	case e.Status == contract.StatusOnline && e.Reason == contract.ReasonResync:
		r.log.Info("user online again after a data loss", "user_id", e.UserID, "version", e.Version)
	case e.Status == contract.StatusOnline:
		r.log.Info("user became online", "user_id", e.UserID, "version", e.Version)
	case e.Reason == contract.ReasonExpired:
		r.log.Info("presence expired", "user_id", e.UserID, "version", e.Version)
	default:
		r.log.Info("user went offline", "user_id", e.UserID, "reason", e.Reason, "version", e.Version)
	}
}

// entryIDs returns the outbox entry ids of events, each once, in order.
func entryIDs(events []presence.Event) []string {
	ids := make([]string, 0, relayBatch)
	for _, e := range events {
		if len(ids) == 0 || ids[len(ids)-1] != e.ID {
			ids = append(ids, e.ID)
		}
	}
	return ids
}

// keepEntries returns the events of the entries in ids.
func keepEntries(events []presence.Event, ids []string) []presence.Event {
	keep := make(map[string]bool, len(ids))
	for _, id := range ids {
		keep[id] = true
	}
	out := events[:0:0]
	for _, e := range events {
		if keep[e.ID] {
			out = append(out, e)
		}
	}
	return out
}

// ackError: the events were published but their acknowledgement failed; the
// relay retries the acknowledgement instead of publishing them again.
type ackError struct {
	ids []string
	err error
}

func (e *ackError) Error() string {
	return fmt.Sprintf("published %d events but could not acknowledge them: %v", len(e.ids), e.err)
}

func (e *ackError) Unwrap() error { return e.err }

// eventCounter returns the published-events counter for status and reason,
// looked up once per pair (the relay publishes every event; only the relay
// goroutine calls it).
func (r *relayer) eventCounter(status contract.Status, reason contract.Reason) prometheus.Counter {
	w := r.w
	k := [2]string{string(status), string(reason)}
	c, ok := r.counters[k]
	if !ok {
		c = w.m.Events.WithLabelValues(k[0], k[1])
		r.counters[k] = c
	}
	return c
}

func (r *relayer) trim(ctx context.Context) {
	w := r.w
	if _, err := r.outbox.Trim(ctx); err != nil {
		w.debugf("trim outbox", "err", err)
		return
	}
	if n, err := r.outbox.RemoveIdleConsumers(ctx, w.opts.ConsumerIdleAfter); err != nil {
		w.debugf("remove idle outbox consumers", "err", err)
	} else if n > 0 {
		w.m.ConsumersRemoved.Add(float64(n))
		r.log.Info("removed idle outbox consumers with nothing pending (left by stopped replicas)", "count", n)
	}
	if n, err := r.outbox.Len(ctx); err == nil {
		r.depth.Store(n)
		var sum int64
		for _, o := range w.relays {
			sum += o.depth.Load()
		}
		w.m.OutboxDepth.Set(float64(sum))
	}
}

// maxUnchecked bounds the outbox entries remembered between two checkLoss
// calls.
const maxUnchecked = 4096

// checkLoss asks Redis whether it still holds the outbox entries this
// replica published since the last check. One gone without having been
// trimmed was lost with every write after it: Redis restarted from an older
// snapshot or failed over to a lagging replica, keeping the data set, so
// events were published for transitions Redis no longer holds.
// ResetAfterLoss then announces it once (a reset above every version
// published, and the walk that re-announces the surviving sessions);
// replicas that notice the same loss find it announced. The newest entry
// stays for the next check: a loss may come before anything else is
// published.
func (r *relayer) checkLoss(ctx context.Context) {
	w := r.w
	if len(r.unchecked) == 0 {
		return
	}
	v, err := r.loss.ResetAfterLoss(ctx, r.unchecked, r.published)
	if err != nil {
		w.debugf("check for lost writes", "err", err)
		return
	}
	r.unchecked = append(r.unchecked[:0], r.unchecked[len(r.unchecked)-1])
	if v > 0 {
		r.log.Warn("redis lost writes that were published (restarted from an older snapshot?): queued a reset and the re-announcement of the surviving sessions",
			"published_version", r.published, "reset_version", v)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
