package worker

import (
	"context"
	"errors"
	"time"

	"github.com/presenced/presenced/presence"
)

// sweepLimit is the most users one sweep call handles; a full call is
// followed at once by another.
const sweepLimit = 1000

// reconcile sweeps the deadline index every ReconcileInterval until ctx is
// done. Every replica runs it; the claim in the script
// makes each user's offline happen exactly once whichever replica wins.
func (w *Worker) reconcile(ctx context.Context) {
	w.everyInterval(ctx, true, "sweep", w.sweepAll)
}

// everyInterval runs step every ReconcileInterval (at once first, with
// now) while the replica may claim, until ctx is done. A failure goes to
// storeFailed and is logged once until the step succeeds again.
func (w *Worker) everyInterval(ctx context.Context, now bool, what string, step func(context.Context) error) {
	t := time.NewTicker(w.opts.ReconcileInterval)
	defer t.Stop()
	failing := false
	for first := now; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		if !w.canClaim() {
			continue
		}
		err := step(ctx)
		w.storeFailed(err)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			w.log.Warn(what+" failed; retrying every interval", "err", err)
			failing = true
		case err == nil && failing:
			w.log.Info(what + " recovered")
			failing = false
		}
	}
}

// sweepAll sweeps until no due user is left (or an error). On a cluster,
// a step that failed in some partitions (presence.IsPartial) still did its
// work in the others: their results count, and the sweep goes on while
// they have more due; the error is returned at the end.
func (w *Worker) sweepAll(ctx context.Context) error {
	var failed error
	for ctx.Err() == nil {
		res, err := w.store.Sweep(ctx, sweepLimit)
		if err != nil {
			if !presence.IsPartial(err) {
				return err
			}
			failed = err
		}
		if res.Claimed > 0 {
			w.m.Expiries.WithLabelValues("sweep").Add(float64(res.Claimed))
		}
		if res.Graced > 0 {
			w.m.Graced.Add(float64(res.Graced))
			w.log.Warn("outage detected: granting one TTL of grace instead of offline", "users", res.Graced)
		}
		if !res.More {
			if res.Reannounce {
				w.reannounce(ctx)
			}
			break
		}
	}
	if n, err := w.store.Count(ctx); err == nil {
		w.m.Online.Set(float64(n))
	}
	if failed != nil {
		return failed
	}
	return ctx.Err()
}

// reannounce takes the steps of the walk that re-announces the sessions
// that survived a partial data loss, until it ends, or waits for the reset
// to be published, or fails (the next sweep reports the walk again). Every
// replica may take steps; the cursor in Redis hands each shard to one of
// them.
func (w *Worker) reannounce(ctx context.Context) {
	total := 0
	for ctx.Err() == nil {
		res, err := w.store.Reannounce(ctx)
		if err != nil {
			w.log.Warn("re-announcing sessions after a data loss failed; the next sweep resumes", "err", err)
			return
		}
		total += res.Announced
		if !res.More || res.Waiting {
			break
		}
	}
	if total > 0 {
		w.log.Warn("re-announced sessions that survived a data loss", "users", total)
	}
}

// claimExpired claims the users whose presence keys Redis reported expired,
// in batches of the ids that arrived together, until ctx is done.
func (w *Worker) claimExpired(ctx context.Context) {
	src := w.expiry.Expired()
	batch := make([]string, 0, presence.ChunkSize)
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-src:
			batch = append(batch[:0], id)
		}
	drain:
		for len(batch) < presence.ChunkSize {
			select {
			case id := <-src:
				batch = append(batch, id)
			default:
				break drain
			}
		}
		w.claim(ctx, batch)
	}
}

// claim is the fast path's claim; errors are left to the sweep.
func (w *Worker) claim(ctx context.Context, ids []string) {
	if !w.canClaim() {
		return
	}
	n, err := w.store.Claim(ctx, ids)
	switch {
	case errors.Is(err, presence.ErrClaimDeferred):
	case err != nil:
		w.debugf("claim expired users failed; the sweep will", "ids", len(ids), "err", err)
	case n > 0:
		w.m.Expiries.WithLabelValues("keyspace").Add(float64(n))
	}
}
