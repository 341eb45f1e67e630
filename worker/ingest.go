package worker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/internal/uniq"
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

// job is one decoded message waiting to be stored.
type job struct {
	op  op
	ids []string
	// done is called once, after the store call: err when the call failed
	// as a whole; else conflicts holds the ids (of any job of the call) that
	// were not stored because their key is not presenced's (nil if none).
	done func(err error, conflicts map[string]struct{})
	cost int // taken from Worker.queued, given back once stored
}

// budget is a counting semaphore of ids: the handlers take a message's ids
// before queueing it, the executors give them back once stored.
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

// handler decodes a message, answers or counts what is invalid, and queues
// the valid ids. Queueing blocks while the executors are busy: that pushes
// back into the subscription's pending buffer, whose limits bound memory.
func (w *Worker) handler(o op) nats.MsgHandler {
	results := w.m.Heartbeats
	if o == opDisconnect {
		results = w.m.Disconnects
	}
	return func(msg *nats.Msg) {
		w.active.Add(1)
		defer w.active.Add(-1)
		select {
		case <-w.stopping:
			w.respond(msg, bus.Reply{Rejected: []bus.Rejection{}, Error: errShuttingDown})
			return
		default:
		}
		req, err := bus.DecodeRequest(msg.Data, w.opts.MaxBatch)
		if err != nil {
			reason := "malformed"
			if errors.Is(err, bus.ErrTooMany) {
				reason = "too_many"
			}
			w.m.Rejections.WithLabelValues(reason).Inc()
			results.WithLabelValues("rejected").Inc()
			w.debugf("rejected message", "subject", msg.Subject, "reason", reason, "err", err)
			w.respond(msg, bus.Reply{Rejected: []bus.Rejection{}, Error: err.Error()})
			return
		}
		for _, r := range req.Rejected {
			w.m.Rejections.WithLabelValues(r.Reason).Inc()
		}
		if n := len(req.Rejected); n > 0 {
			results.WithLabelValues("rejected").Add(float64(n))
			w.debugf("rejected ids", "subject", msg.Subject, "count", n, "first", req.Rejected[0].UserID, "err", req.Rejected[0].Error)
		}
		rejected := req.Rejected
		if rejected == nil {
			rejected = []bus.Rejection{}
		}
		if len(req.IDs) == 0 {
			w.respond(msg, bus.Reply{Rejected: rejected})
			return
		}
		j := job{op: o, ids: req.IDs, done: func(err error, conflicts map[string]struct{}) {
			if err != nil {
				results.WithLabelValues("failed").Add(float64(len(req.IDs)))
				w.respond(msg, bus.Reply{Rejected: rejected, Error: "store unavailable: " + err.Error()})
				return
			}
			accepted := len(req.IDs)
			if len(conflicts) > 0 {
				for _, id := range req.IDs {
					if _, ok := conflicts[id]; ok {
						rejected = append(rejected, bus.Rejection{UserID: id, Error: presence.ErrKeyConflict.Error(), Reason: reasonKeyConflict})
						accepted--
					}
				}
				if n := len(req.IDs) - accepted; n > 0 {
					w.m.Rejections.WithLabelValues(reasonKeyConflict).Add(float64(n))
					results.WithLabelValues("rejected").Add(float64(n))
					w.debugf("rejected ids: their presence key holds another type", "op", o, "count", n, "first", rejected[len(rejected)-n].UserID)
				}
			}
			results.WithLabelValues("accepted").Add(float64(accepted))
			w.respond(msg, bus.Reply{Accepted: accepted, Rejected: rejected})
		}}
		// The queue is bounded in ids by the budget, then in messages by
		// the channel; either wait yields to a stop.
		if j.cost = w.queued.take(len(j.ids), w.stopping); j.cost > 0 {
			select {
			case w.jobs <- j:
				return
			case <-w.stopping:
				w.queued.give(j.cost)
			}
		}
		results.WithLabelValues("failed").Add(float64(len(req.IDs)))
		w.respond(msg, bus.Reply{Rejected: rejected, Error: errShuttingDown})
	}
}

const errShuttingDown = "shutting down: not stored, send again"

// reasonKeyConflict labels ids rejected because their presence key holds
// another type (presence.KeyConflict), in presenced_rejections_total.
const reasonKeyConflict = "key_conflict"

func (w *Worker) respond(msg *nats.Msg, r bus.Reply) {
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

// execute takes a job, coalesces the jobs already waiting behind it (up to
// BatchIDs ids) and stores them with as few script calls as possible,
// keeping heartbeats and disconnects in arrival order. After execStop is
// closed it finishes the jobs still queued and returns.
func (w *Worker) execute(ctx context.Context) {
	var batch []job
	for {
		var j job
		select {
		case j = <-w.jobs:
		case <-w.execStop:
			select {
			case j = <-w.jobs:
			default:
				return
			}
		}
		batch = append(batch[:0], j)
		n := len(j.ids)
	more:
		for n < w.opts.BatchIDs {
			select {
			case j2 := <-w.jobs:
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
		ids = uniq.Append(ids[:0], ids)
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
		j.done(err, conflicts)
		w.queued.give(j.cost)
	}
}
