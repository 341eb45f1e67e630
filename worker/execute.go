package worker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/presence"
)

// resultCounters are the counters of one op's ids by result, resolved
// once: a label lookup per message costs more than the count.
type resultCounters struct {
	accepted, rejected, failed, expired prometheus.Counter
}

func newResultCounters(v *prometheus.CounterVec) resultCounters {
	return resultCounters{
		accepted: v.WithLabelValues("accepted"), rejected: v.WithLabelValues("rejected"),
		failed: v.WithLabelValues("failed"), expired: v.WithLabelValues("expired"),
	}
}

// results counts the ids of o by result.
func (w *Worker) results(o op) *resultCounters { return &w.counts[o] }

// finish records one stored (or failed) part of r, whose ids are ids, and
// answers r when it was the last. conflicts holds the ids of the store call
// that were not stored because their key holds another type.
func (w *Worker) finish(r *request, ids []string, err error, conflicts map[string]struct{}) {
	results := w.results(r.op)
	var rejected []contract.Rejection
	if err == nil && len(conflicts) > 0 {
		for _, id := range ids {
			if _, ok := conflicts[id]; ok {
				rejected = append(rejected, contract.Rejection{UserID: id, Error: presence.ErrKeyConflict.Error(), Reason: reasonKeyConflict})
			}
		}
		if n := len(rejected); n > 0 {
			w.m.Rejections.WithLabelValues(reasonKeyConflict).Add(float64(n))
			results.rejected.Add(float64(n))
			w.debugf("rejected ids: their presence key holds another type", "op", r.op, "count", n, "first", rejected[0].UserID)
		}
	}
	stored := len(ids) - len(rejected)
	switch {
	case errors.Is(err, errExpired):
		results.expired.Add(float64(len(ids)))
	case err != nil:
		results.failed.Add(float64(len(ids)))
	default:
		results.accepted.Add(float64(stored))
	}
	r.mu.Lock()
	r.parts--
	if err != nil && r.err == nil {
		r.err = err
	}
	if err == nil {
		r.accepted += stored
		r.rejected = append(r.rejected, rejected...)
	}
	last := r.parts == 0
	r.mu.Unlock()
	if !last {
		return
	}
	if r.err != nil {
		w.respond(r.msg, failedReply(r.accepted, r.rejected, r.err))
		return
	}
	w.respond(r.msg, contract.Reply{Accepted: r.accepted, Rejected: r.rejected})
}

// failedReply is the answer to a request a part of which failed with err.
func failedReply(accepted int, rejected []contract.Rejection, err error) contract.Reply {
	r := contract.Reply{Accepted: accepted, Rejected: rejected, Retry: true}
	switch {
	case errors.Is(err, errAborted), errors.Is(err, context.Canceled):
		r.Error = errShuttingDown
	case errors.Is(err, errExpired):
		r.Error = errExpired.Error()
	case presence.IsRetryable(err):
		r.Error = "store unavailable: " + err.Error()
	default:
		r.Error, r.Retry = "store failed: "+err.Error(), false
	}
	return r
}

// requestDeadline is when the sender of msg, received at at, stops waiting
// for the reply: at + its contract.TimeoutHeader. Zero when it has no reply
// subject or did not say (such a message is stored however late).
func requestDeadline(msg *nats.Msg, at int64) int64 {
	if msg.Reply == "" || msg.Header == nil {
		return 0
	}
	v := msg.Header.Get(contract.TimeoutHeader)
	if v == "" {
		return 0
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 {
		return 0
	}
	return at + ms*int64(time.Millisecond)
}

func (w *Worker) respond(msg *nats.Msg, r contract.Reply) {
	if msg.Reply == "" {
		return
	}
	var data []byte
	if len(r.Rejected) == 0 && r.Error == "" {
		// The common reply, without reflection.
		data = strconv.AppendInt(append(make([]byte, 0, 40), `{"accepted":`...), int64(r.Accepted), 10)
		data = append(data, `,"rejected":[]}`...)
	} else {
		var err error
		if data, err = json.Marshal(r); err != nil {
			w.log.Error("encode reply", "err", err)
			return
		}
	}
	if err := msg.Respond(data); err != nil {
		w.debugf("reply failed", "err", err)
	}
}

// debugf logs at debug level, sampled to one line a second.
func (w *Worker) debugf(msg string, args ...any) {
	if !w.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	if ok, suppressed := w.debug.allow(); ok {
		w.log.Debug(msg, append(args, "suppressed_since_last", suppressed)...)
	}
}

// execute takes jobs from its queue, coalesces the jobs already waiting
// behind one (up to BatchIDs ids) and stores them with as few script calls
// as possible, keeping heartbeats and disconnects in arrival order. It
// returns when its queue is closed and empty.
func (w *Worker) execute(ctx context.Context, q <-chan job) {
	var batch []job
	for j := range q {
		batch = append(batch[:0], j)
		n := len(j.ids)
	more:
		for n < w.opts.BatchIDs {
			select {
			case j2, ok := <-q:
				if !ok {
					break more
				}
				batch = append(batch, j2)
				n += len(j2.ids)
			default:
				break more
			}
		}
		w.storeBatch(ctx, batch)
	}
}

// storeBatch stores runs of same-op jobs in order, one store call per run.
func (w *Worker) storeBatch(ctx context.Context, batch []job) {
	for start := 0; start < len(batch); {
		end := start + 1
		for end < len(batch) && batch[end].op == batch[start].op {
			end++
		}
		w.storeRun(ctx, batch[start:end])
		start = end
	}
}

func (w *Worker) storeRun(ctx context.Context, run []job) {
	// Jobs whose sender has given up are not stored (it may have sent them
	// again meanwhile, and a late copy must not undo what came after it);
	// after an abort nothing is.
	aborted := ctx.Err() != nil
	select {
	case <-w.abort:
		aborted = true
	default:
	}
	now := since()
	live := run[:0] // filtered in place: each job is read before its slot is reused
	for _, j := range run {
		switch {
		case aborted:
			w.finish(j.req, j.ids, errAborted, nil)
			w.queued.give(j.cost)
		case j.req.deadline != 0 && now > j.req.deadline:
			w.finish(j.req, j.ids, errExpired, nil)
			w.queued.give(j.cost)
		default:
			live = append(live, j)
		}
	}
	if len(live) == 0 {
		return
	}
	run = live
	ids := run[0].ids
	if len(run) > 1 {
		// Merge, dropping ids repeated across messages: a script sees each once.
		total := 0
		for _, j := range run {
			total += len(j.ids)
		}
		ids = make([]string, 0, total)
		for _, j := range run {
			ids = append(ids, j.ids...)
		}
		ids = contract.AppendUnique(ids[:0], ids)
	}
	var err error
	var versions []int64
	if run[0].op == opHeartbeat {
		versions, err = w.store.Heartbeat(ctx, ids)
	} else {
		versions, err = w.store.Disconnect(ctx, ids)
	}
	var conflicts map[string]struct{}
	if err != nil {
		w.log.Warn("store batch failed", "op", run[0].op, "ids", len(ids), "err", err)
		w.storeFailed(err)
	} else {
		debug := run[0].op == opHeartbeat && w.log.Enabled(ctx, slog.LevelDebug)
		for i, v := range versions {
			switch {
			case v == presence.KeyConflict:
				if conflicts == nil {
					conflicts = map[string]struct{}{}
				}
				conflicts[ids[i]] = struct{}{}
			case v == 0 && debug:
				w.log.Debug("presence TTL refreshed for user", "user_id", ids[i])
			}
		}
	}
	for _, j := range run {
		w.finish(j.req, j.ids, err, conflicts)
		w.queued.give(j.cost)
	}
}
