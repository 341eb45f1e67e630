package worker

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/presence"
)

// A replica takes heartbeats and disconnects only while it can store them.
// When Redis fails it (a refused or broken connection, a timeout, a replica
// that is loading or read-only), the replica leaves the queue group, so
// that NATS gives the rest of the traffic to replicas that can store it
// (a gateway resends what this one answered with an error), and rejoins as
// soon as Redis answers a ping again. Were it to stay, it would take its
// share of every user's heartbeats and fail them while the healthy
// replicas swept those users offline.

// subscribe joins the queue group on the heartbeat, disconnect and gateway
// lease subjects, delivering into the
// intake; it does nothing while the worker is stopping.
func (w *Worker) subscribe() error {
	w.subsMu.Lock()
	defer w.subsMu.Unlock()
	if w.stopped.Load() || w.subs != nil {
		return nil
	}
	subs := make([]*nats.Subscription, 0, 4)
	for _, subject := range []string{w.opts.Subjects.Heartbeat(), w.opts.Subjects.Disconnect(), w.leaseSubjects[0], w.leaseSubjects[1]} {
		sub, err := w.bus.ChanQueueSubscribe(subject, w.opts.Queue, w.in.ch)
		if err != nil {
			for _, s := range subs {
				_ = s.Unsubscribe()
			}
			return err
		}
		subs = append(subs, sub)
	}
	w.subs = subs
	return nil
}

// leave drains both subscriptions (messages on their way still arrive and
// are answered) without waiting for the drain to finish; Stop waits for it.
func (w *Worker) leave() {
	w.subsMu.Lock()
	defer w.subsMu.Unlock()
	live := w.draining[:0]
	for _, sub := range w.draining {
		if sub.IsValid() {
			live = append(live, sub)
		}
	}
	w.draining = live
	for _, sub := range w.subs {
		if err := sub.Drain(); err != nil {
			_ = sub.Unsubscribe()
			continue
		}
		w.draining = append(w.draining, sub)
	}
	w.subs = nil
}

// storeFailed takes the replica out of the queue group when err says Redis
// is unavailable (not for errors about one request).
func (w *Worker) storeFailed(err error) {
	if !presence.IsUnavailable(err) || w.stopped.Load() {
		return
	}
	if w.storeDown.CompareAndSwap(false, true) {
		select {
		case w.downCh <- struct{}{}:
		default:
		}
	}
}

// rejoin leaves the queue group each time the store is found unavailable
// and rejoins once Redis accepts writes again (Store.Writable: it answers
// and is a master), checking with backoff from 50ms doubling to 1s, until
// ctx is done. The backoff carries over to the next outage unless the
// replica stayed in the group for stableAfter: a Redis that answers the
// check but fails the writes (a demoted master still loading, say) makes
// the replica leave and rejoin ever more slowly, not in a tight loop.
func (w *Worker) rejoin(ctx context.Context) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 50 * time.Millisecond
	b.MaxInterval = time.Second
	b.MaxElapsedTime = 0
	b.Reset()
	var joined time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.downCh:
		}
		w.leave()
		w.m.QueueGroupLeaves.Inc()
		w.log.Warn("redis unavailable: left the queue group until it accepts writes")
		if time.Since(joined) > stableAfter {
			b.Reset()
		}
		err := backoff.Retry(func() error {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := w.store.Writable(pctx); err != nil {
				return err
			}
			// Cleared before subscribing, so a failure after this point
			// takes the replica out again.
			w.storeDown.Store(false)
			if err := w.subscribe(); err != nil {
				w.storeDown.Store(true)
				return err
			}
			return nil
		}, backoff.WithContext(noReset{b}, ctx))
		if err != nil {
			return // ctx done
		}
		joined = time.Now()
		w.log.Info("redis accepts writes again: rejoined the queue group")
	}
}

// stableAfter is how long a replica must stay in the queue group for its
// next outage to start the rejoin backoff from the beginning.
const stableAfter = 30 * time.Second

// noReset keeps backoff.Retry from resetting b: rejoin decides when to.
type noReset struct{ *backoff.ExponentialBackOff }

func (noReset) Reset() {}
