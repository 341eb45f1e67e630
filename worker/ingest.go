package worker

import (
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/presence"
)

type op uint8

const (
	opHeartbeat op = iota
	opDisconnect
)

func (o op) String() string {
	if o == opDisconnect {
		return "disconnect"
	}
	return "heartbeat"
}

// Replies to messages that were not stored and may be sent again.
const (
	errShuttingDown = "shutting down: not stored, send again"
	errOverloaded   = "overloaded: intake full, not stored, send again"
)

var (
	// errAborted: Stop ran out of time before the request was stored.
	errAborted = errors.New(errShuttingDown)
	// errExpired: the sender's timeout passed before the request was
	// stored, so it was not (the sender may have sent it again already).
	errExpired = errors.New("expired: the sender's timeout (" + contract.TimeoutHeader + ") passed before it was stored; not stored")
)

// reasonKeyConflict labels ids rejected because their presence key holds
// another type (presence.KeyConflict), in presenced_rejections_total.
const reasonKeyConflict = "key_conflict"

// request is one decoded message whose ids are being stored, possibly by
// several executors (each owns a share of the users, see dispatch). The
// last part to finish answers it.
type request struct {
	msg      *nats.Msg
	op       op
	rejected []contract.Rejection
	deadline int64 // when the sender stops waiting (see since); 0: no deadline

	mu       sync.Mutex
	parts    int   // parts not finished yet
	accepted int   // ids stored
	err      error // first failure
}

// job is the part of one request that one executor stores.
type job struct {
	req  *request
	op   op
	ids  []string
	cost int // taken from Worker.queued, given back once stored
}

// budget is a counting semaphore of ids: the dispatcher takes a message's
// ids before queueing it, the executors give them back once stored.
type budget struct {
	mu   sync.Mutex
	size int
	free int
	wake chan struct{} // closed (and replaced) when ids are given back
}

func newBudget(size int) *budget {
	return &budget{size: size, free: size, wake: make(chan struct{})}
}

// take takes n ids (at most the whole budget, so a message larger than it
// waits for an empty queue) and returns how many it took, or 0 if stop was
// closed first.
func (b *budget) take(n int, stop <-chan struct{}) int {
	n = min(n, b.size)
	for {
		b.mu.Lock()
		if b.free >= n {
			b.free -= n
			b.mu.Unlock()
			return n
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-stop:
			return 0
		}
	}
}

func (b *budget) give(n int) {
	b.mu.Lock()
	b.free += n
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}

// pump moves messages from the subscriptions' channel into the intake,
// all that are waiting at once, until closing is closed (the subscriptions
// are drained: nothing more arrives); then it moves what is left and closes
// the intake.
func (w *Worker) pump(closing <-chan struct{}) {
	batch := make([]*nats.Msg, 0, intakeChan)
	var dropped []*nats.Msg
	for {
		select {
		case m := <-w.in.ch:
			batch = append(batch[:0], m)
		case <-closing:
			for {
				batch = batch[:0]
				for len(batch) < cap(batch) {
					select {
					case m := <-w.in.ch:
						batch = append(batch, m)
						continue
					default:
					}
					break
				}
				if len(batch) == 0 {
					w.in.close()
					return
				}
				dropped = w.admit(batch, dropped[:0])
			}
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case m := <-w.in.ch:
				batch = append(batch, m)
			default:
				break more
			}
		}
		dropped = w.admit(batch, dropped[:0])
		clear(batch)
	}
}

// admit queues batch in the intake and answers what it had no room for.
func (w *Worker) admit(batch, dropped []*nats.Msg) []*nats.Msg {
	dropped = w.in.pushAll(batch, dropped)
	if len(dropped) == 0 {
		return dropped
	}
	w.m.IntakeDropped.Add(float64(len(dropped)))
	if ok, suppressed := w.dropLog.allow(); ok {
		w.log.Warn("intake full: messages dropped", "count", len(dropped), "limit_bytes", w.in.limit,
			"dropped_total", w.in.dropped.Load(), "suppressed_since_last", suppressed)
	}
	for _, m := range dropped {
		if m.Reply == "" {
			continue
		}
		// Answered by another goroutine: a publish may block on the
		// connection, and the pump must keep emptying the channel.
		select {
		case w.overloaded <- m:
		default: // that goroutine is behind too: the sender times out instead
		}
	}
	clear(dropped)
	return dropped
}

// answerOverloaded answers the messages the intake had no room for until
// overloaded is closed.
func (w *Worker) answerOverloaded() {
	for m := range w.overloaded {
		w.respond(m, contract.Reply{Rejected: []contract.Rejection{}, Error: errOverloaded, Retry: true})
	}
}

// dispatch decodes the intake's messages in order and hands each user's ids
// to the executor that owns that user (hash of the id), so one user's
// heartbeats and disconnects are stored in the order they arrived while
// different users are stored in parallel. It returns when the intake is
// closed and empty, closing the executors' queues. After abort is closed it
// answers what is left "shutting down" instead.
func (w *Worker) dispatch(abort <-chan struct{}) {
	defer func() {
		for _, q := range w.execQ {
			close(q)
		}
	}()
	for {
		m, at, ok := w.in.pop()
		if !ok {
			return
		}
		w.handle(m, at, abort)
	}
}

// handle decodes one message received at at (see since), answers or counts
// what is invalid, and queues the valid ids. Queueing blocks while the
// executors are busy: the intake holds what arrives meanwhile, up to its
// byte limit.
func (w *Worker) handle(msg *nats.Msg, at int64, abort <-chan struct{}) {
	o := opHeartbeat
	if msg.Subject == w.disconnectSubject {
		o = opDisconnect
	}
	results := w.results(o)
	select {
	case <-abort:
		w.respond(msg, contract.Reply{Rejected: []contract.Rejection{}, Error: errShuttingDown, Retry: true})
		return
	default:
	}
	req, err := contract.DecodeRequest(msg.Data, w.opts.MaxBatch)
	// The ids are copies: the payload is not held while they wait.
	msg.Data = nil
	if err != nil {
		reason := "malformed"
		if errors.Is(err, contract.ErrTooMany) {
			reason = "too_many"
		}
		w.m.Rejections.WithLabelValues(reason).Inc()
		results.rejected.Inc()
		w.debugf("rejected message", "subject", msg.Subject, "reason", reason, "err", err)
		w.respond(msg, contract.Reply{Rejected: []contract.Rejection{}, Error: err.Error()})
		return
	}
	for _, r := range req.Rejected {
		w.m.Rejections.WithLabelValues(r.Reason).Inc()
	}
	if n := len(req.Rejected); n > 0 {
		results.rejected.Add(float64(n))
		w.debugf("rejected ids", "subject", msg.Subject, "count", n, "first", req.Rejected[0].UserID, "err", req.Rejected[0].Error)
	}
	deadline := requestDeadline(msg, at)
	if deadline != 0 && since() > deadline {
		results.expired.Add(float64(len(req.IDs)))
		w.respond(msg, contract.Reply{Rejected: []contract.Rejection{}, Error: errExpired.Error(), Retry: true})
		return
	}
	r := &request{msg: msg, op: o, rejected: req.Rejected, deadline: deadline}
	if r.rejected == nil {
		r.rejected = []contract.Rejection{}
	}
	if len(req.IDs) == 0 {
		w.respond(msg, contract.Reply{Rejected: r.rejected})
		return
	}
	// The queue is bounded in ids by the budget, then in messages by the
	// executors' channels; the budget's wait yields to an abort. Rejections
	// are charged too: the request holds them until it is answered.
	cost := w.queued.take(len(req.IDs)+len(req.Rejected), abort)
	if cost == 0 {
		results.failed.Add(float64(len(req.IDs)))
		w.respond(msg, contract.Reply{Rejected: r.rejected, Error: errShuttingDown, Retry: true})
		return
	}
	n := len(w.execQ)
	if n == 1 || len(req.IDs) == 1 {
		r.parts = 1
		w.execQ[w.owner(req.IDs[0])] <- job{req: r, op: o, ids: req.IDs, cost: cost}
		return
	}
	// Split by owner into one backing array: count, then place.
	owners := w.owners[:0]
	counts := make([]int, n+1)
	for _, id := range req.IDs {
		k := w.owner(id)
		owners = append(owners, uint16(k))
		counts[k+1]++
	}
	w.owners = owners
	used := 0
	for k := 1; k <= n; k++ {
		if counts[k] > 0 {
			used++
		}
		counts[k] += counts[k-1]
	}
	split := make([]string, len(req.IDs))
	next := make([]int, n)
	copy(next, counts[:n])
	for i, id := range req.IDs {
		k := owners[i]
		split[next[k]] = id
		next[k]++
	}
	r.parts = used
	// The cost goes back with the parts (any split is fine: the budget only
	// needs the total back), the remainder with the last one queued.
	for k := range n {
		p := split[counts[k]:counts[k+1]]
		if len(p) == 0 {
			continue
		}
		c := min(len(p), cost)
		used--
		if used == 0 {
			c = cost
		}
		cost -= c
		w.execQ[k] <- job{req: r, op: o, ids: p, cost: c}
	}
}

// owner is the executor that stores id: the same one for every message, so
// one user's operations stay in order.
func (w *Worker) owner(id string) int {
	if len(w.execQ) == 1 {
		return 0
	}
	return int(maphash.String(w.seed, id) % uint64(len(w.execQ)))
}

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
	live := run[:0:0]
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
