package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/presence"
)

const (
	relayBatch   = 64 // outbox entries per read; an entry holds the events of one script call
	relayBlock   = 500 * time.Millisecond
	publishLimit = 5 * time.Second
	trimEvery    = time.Second
)

// relay publishes outbox entries to NATS and acknowledges them only after the
// publish is flushed, so an event is never lost between Redis and NATS: an
// entry this replica read but could not publish is retried (ReadPending), and
// one left by a replica that died is republished by another (Reclaim) after
// ClaimAfter. A republish carries the same Nats-Msg-Id.
func (w *Worker) relay(ctx context.Context) {
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
			err := w.outbox.Ack(actx, unacked...)
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
			events, err = w.outbox.ReadPending(ctx, relayBatch)
			if err == nil && len(events) == 0 {
				retryOwn = false
				continue
			}
		case time.Since(lastReclaim) > w.opts.ClaimAfter/2:
			lastReclaim = time.Now()
			events, err = w.outbox.Reclaim(ctx, w.opts.ClaimAfter, relayBatch)
			if err == nil && len(events) > 0 {
				w.m.Republished.Add(float64(len(events)))
				w.log.Warn("republishing events left unacknowledged by another replica", "count", len(events))
			}
		default:
			events, err = w.outbox.ReadNew(ctx, relayBatch, relayBlock)
		}
		if err == nil && len(events) > 0 {
			err = w.publish(ctx, events)
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
				if ierr := w.outbox.Init(ctx); ierr == nil {
					w.log.Warn("outbox group was missing and has been recreated")
					continue
				}
			}
			if !failing {
				w.log.Warn("relay failed; retrying", "err", err)
				failing = true
			}
			retryOwn = true
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		if failing {
			w.log.Info("relay recovered")
			failing = false
		}
		if time.Since(lastTrim) > trimEvery {
			lastTrim = time.Now()
			w.checkLoss(ctx)
			w.trim(ctx)
		}
	}
}

// publish sends events in outbox order, flushes, then acknowledges them.
// The flush and ack do not use ctx's cancellation, so a stopping worker
// still acknowledges what it published.
func (w *Worker) publish(ctx context.Context, events []presence.Event) error {
	if h := w.opts.Hooks; h != nil && h.AfterOutboxRead != nil {
		if err := h.AfterOutboxRead(events); err != nil {
			return err
		}
	}
	ids := make([]string, 0, relayBatch)
	now := time.Now()
	for _, e := range events {
		if len(ids) == 0 || ids[len(ids)-1] != e.ID {
			ids = append(ids, e.ID)
		}
		if err := e.Valid(); err != nil {
			w.log.Error("dropping outbox entry", "err", err)
			continue
		}
		ev := bus.Event{UserID: e.UserID, Status: e.Status, Reason: e.Reason, At: e.At(), Version: e.Version}
		if err := w.bus.Publish(w.opts.Subjects, ev); err != nil {
			return err
		}
		w.published = max(w.published, e.Version)
		if n := len(w.unchecked); n > 0 && w.unchecked[n-1].Entry == e.ID {
			w.unchecked[n-1].Version = max(w.unchecked[n-1].Version, e.Version)
		} else {
			if n >= maxUnchecked {
				// Redis has been unreachable for long: the newest entries
				// published tell as much (Redis loses a suffix of its writes).
				w.unchecked = append(w.unchecked[:0], w.unchecked[n-maxUnchecked/2:]...)
			}
			w.unchecked = append(w.unchecked, presence.Published{Entry: e.ID, Version: e.Version})
		}
		w.eventCounter(e.Status, e.Reason).Inc()
		if !e.Deadline.IsZero() {
			w.m.OfflineLag.Observe(now.Sub(e.Deadline).Seconds())
		}
		switch {
		case e.Status == bus.StatusReset:
			w.log.Warn("presence data set was empty or lost: published a reset so consumers resynchronise", "version", e.Version)
		case e.Status == "online" && e.Reason == presence.ReasonResync:
			w.log.Info("user online again after a data loss", "user_id", e.UserID, "version", e.Version)
		case e.Status == "online":
			w.log.Info("user became online", "user_id", e.UserID, "version", e.Version)
		case e.Reason == "expired":
			w.log.Info("presence expired", "user_id", e.UserID, "version", e.Version)
		default:
			w.log.Info("user went offline", "user_id", e.UserID, "reason", e.Reason, "version", e.Version)
		}
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishLimit)
	defer cancel()
	if err := w.bus.Flush(fctx); err != nil {
		return err
	}
	if err := w.outbox.Ack(fctx, ids...); err != nil {
		return &ackError{ids: ids, err: err}
	}
	return nil
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
func (w *Worker) eventCounter(status, reason string) prometheus.Counter {
	k := [2]string{status, reason}
	c, ok := w.counters[k]
	if !ok {
		c = w.m.Events.WithLabelValues(status, reason)
		w.counters[k] = c
	}
	return c
}

func (w *Worker) trim(ctx context.Context) {
	if _, err := w.outbox.Trim(ctx); err != nil {
		w.debugf("trim outbox", "err", err)
		return
	}
	if n, err := w.outbox.Len(ctx); err == nil {
		w.m.OutboxDepth.Set(float64(n))
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
func (w *Worker) checkLoss(ctx context.Context) {
	if len(w.unchecked) == 0 {
		return
	}
	v, err := w.store.ResetAfterLoss(ctx, w.unchecked, w.published)
	if err != nil {
		w.debugf("check for lost writes", "err", err)
		return
	}
	w.unchecked = append(w.unchecked[:0], w.unchecked[len(w.unchecked)-1])
	if v > 0 {
		w.log.Warn("redis lost writes that were published (restarted from an older snapshot?): queued a reset and the re-announcement of the surviving sessions",
			"published_version", w.published, "reset_version", v)
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
