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

// finish records one stored (or failed) part of r, n entries of which
// rejected were not stored (their key holds another type, or their user has
// too many connections), and answers r when it was the last.
func (w *Worker) finish(r *request, n int, err error, rejected []contract.Rejection) {
	results := w.results(r.op)
	if err == nil && len(rejected) > 0 {
		for _, rj := range rejected {
			w.m.Rejections.WithLabelValues(rj.Reason).Inc()
		}
		results.rejected.Add(float64(len(rejected)))
		w.debugf("rejected entries", "op", r.op, "count", len(rejected), "first", rejected[0].UserID, "err", rejected[0].Error)
	}
	stored := n - len(rejected)
	switch {
	case errors.Is(err, errExpired):
		results.expired.Add(float64(n))
	case err != nil:
		results.failed.Add(float64(n))
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

// conflicted are the rejections of those of ids in conflicts (their
// presence key holds another type).
func conflicted(ids []string, conflicts map[string]struct{}) []contract.Rejection {
	var out []contract.Rejection
	for _, id := range ids {
		if _, ok := conflicts[id]; ok {
			out = append(out, contract.Rejection{UserID: id, Error: presence.ErrKeyConflict.Error(), Reason: reasonKeyConflict})
		}
	}
	return out
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

// storeBatch stores runs of jobs of the same op and kind in order, one
// store call per run.
func (w *Worker) storeBatch(ctx context.Context, batch []job) {
	for start := 0; start < len(batch); {
		end := start + 1
		for end < len(batch) && batch[end].op == batch[start].op && batch[end].kind == batch[start].kind {
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
			w.finish(j.req, j.n(), errAborted, nil)
			w.queued.give(j.cost)
		case j.req.deadline != 0 && now > j.req.deadline:
			w.finish(j.req, j.n(), errExpired, nil)
			w.queued.give(j.cost)
		default:
			live = append(live, j)
		}
	}
	if len(live) == 0 {
		return
	}
	if live[0].kind == kindConn {
		w.storeConns(ctx, live)
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
	switch {
	case run[0].kind == kindKick:
		versions, err = w.store.Kick(ctx, ids)
	case run[0].op == opHeartbeat:
		versions, err = w.store.Heartbeat(ctx, ids)
	default:
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
		w.finish(j.req, len(j.ids), err, conflicted(j.ids, conflicts))
		w.queued.give(j.cost)
	}
}

// storeConns stores a run of connection jobs with one store call (their
// entries in order; a connection named twice is applied twice, in order)
// and answers each job's entries by position.
func (w *Worker) storeConns(ctx context.Context, run []job) {
	conns := run[0].conns
	if len(run) > 1 {
		conns = nil
		for _, j := range run {
			conns = append(conns, j.conns...)
		}
	}
	var res []int64
	var err error
	if run[0].op == opHeartbeat {
		res, err = w.store.Connect(ctx, conns)
	} else {
		res, err = w.store.Release(ctx, conns)
	}
	if err != nil {
		w.log.Warn("store batch failed", "op", run[0].op, "connections", len(conns), "err", err)
		w.storeFailed(err)
	}
	at := 0
	for _, j := range run {
		var rejected []contract.Rejection
		if err == nil {
			for i, c := range j.conns {
				switch res[at+i] {
				case presence.KeyConflict:
					rejected = append(rejected, contract.Rejection{UserID: c.UserID, ConnectionID: c.ConnectionID, Error: presence.ErrKeyConflict.Error(), Reason: reasonKeyConflict})
				case presence.TooManyConnections:
					rejected = append(rejected, contract.Rejection{UserID: c.UserID, ConnectionID: c.ConnectionID, Error: presence.ErrTooManyConnections.Error(), Reason: reasonTooManyConnections})
				case presence.Stale:
					w.m.StaleEntries.Inc()
				}
			}
		}
		at += len(j.conns)
		w.finish(j.req, len(j.conns), err, rejected)
		w.queued.give(j.cost)
	}
}
