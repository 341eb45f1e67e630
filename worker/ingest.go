package worker

import (
	"errors"
	"hash/maphash"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/contract"
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

// reasonTooManyConnections labels connections refused because their user
// has the most live connections allowed (presence.TooManyConnections).
const reasonTooManyConnections = "too_many_connections"

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

// kind is what a job's entries are: plain ids (implicit connections),
// connection entries, or users whose every connection ends.
type kind uint8

const (
	kindPlain kind = iota
	kindConn
	kindKick
)

// job is the part of one request that one executor stores.
type job struct {
	req   *request
	op    op
	kind  kind
	ids   []string        // kindPlain, kindKick
	conns []contract.Conn // kindConn
	cost  int             // taken from Worker.queued, given back once stored
}

// n is the number of entries the job stores.
func (j job) n() int { return len(j.ids) + len(j.conns) }

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
	switch msg.Subject {
	case w.disconnectSubject:
		o = opDisconnect
	case w.leaseSubjects[0], w.leaseSubjects[1]:
		select {
		case w.leaseQ <- msg:
		default:
			w.respondLease(msg, contract.GatewayLeaseReply{Error: errOverloaded, Retry: true})
		}
		return
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
	if req.All && o == opHeartbeat {
		w.m.Rejections.WithLabelValues("malformed").Inc()
		results.rejected.Inc()
		w.respond(msg, contract.Reply{Rejected: []contract.Rejection{}, Error: contract.ErrMalformed.Error() + `: "allConnections" is for disconnects`})
		return
	}
	for _, r := range req.Rejected {
		w.m.Rejections.WithLabelValues(r.Reason).Inc()
	}
	if n := len(req.Rejected); n > 0 {
		results.rejected.Add(float64(n))
		w.debugf("rejected ids", "subject", msg.Subject, "count", n, "first", req.Rejected[0].UserID, "err", req.Rejected[0].Error)
	}
	entries := len(req.IDs) + len(req.Conns)
	deadline := requestDeadline(msg, at)
	if deadline != 0 && since() > deadline {
		results.expired.Add(float64(entries))
		w.respond(msg, contract.Reply{Rejected: []contract.Rejection{}, Error: errExpired.Error(), Retry: true})
		return
	}
	r := &request{msg: msg, op: o, rejected: req.Rejected, deadline: deadline}
	if r.rejected == nil {
		r.rejected = []contract.Rejection{}
	}
	if entries == 0 {
		w.respond(msg, contract.Reply{Rejected: r.rejected})
		return
	}
	// The queue is bounded in ids by the budget, then in messages by the
	// executors' channels; the budget's wait yields to an abort. Rejections
	// are charged too: the request holds them until it is answered.
	cost := w.queued.take(entries+len(req.Rejected), abort)
	if cost == 0 {
		results.failed.Add(float64(entries))
		w.respond(msg, contract.Reply{Rejected: r.rejected, Error: errShuttingDown, Retry: true})
		return
	}
	k := kindPlain
	switch {
	case req.All:
		k = kindKick
	case len(req.Conns) > 0:
		k = kindConn
	}
	if len(w.execQ) == 1 || entries == 1 {
		user := ""
		if k == kindConn {
			user = req.Conns[0].UserID
		} else {
			user = req.IDs[0]
		}
		r.parts = 1
		w.execQ[w.owner(user)] <- job{req: r, op: o, kind: k, ids: req.IDs, conns: req.Conns, cost: cost}
		return
	}
	// Split by owner; each executor with a share gets one job.
	var jobs []job
	var execs []int
	if k == kindConn {
		for e, p := range split(w, req.Conns, func(c contract.Conn) string { return c.UserID }) {
			if len(p) > 0 {
				jobs, execs = append(jobs, job{req: r, op: o, kind: k, conns: p}), append(execs, e)
			}
		}
	} else {
		for e, p := range split(w, req.IDs, func(id string) string { return id }) {
			if len(p) > 0 {
				jobs, execs = append(jobs, job{req: r, op: o, kind: k, ids: p}), append(execs, e)
			}
		}
	}
	r.parts = len(jobs)
	// The cost goes back with the parts (any split is fine: the budget only
	// needs the total back), the remainder with the last one queued.
	for i, j := range jobs {
		j.cost = min(j.n(), cost)
		if i == len(jobs)-1 {
			j.cost = cost
		}
		cost -= j.cost
		w.execQ[execs[i]] <- j
	}
}

// split groups items by the executor that owns each one's user (key), in
// one backing array: parts[k] is executor k's share, in arrival order.
func split[T any](w *Worker, items []T, key func(T) string) [][]T {
	n := len(w.execQ)
	parts := make([][]T, n)
	owners := w.owners[:0]
	counts := make([]int, n+1)
	for _, it := range items {
		k := w.owner(key(it))
		owners = append(owners, uint16(k))
		counts[k+1]++
	}
	w.owners = owners
	for k := 1; k <= n; k++ {
		counts[k] += counts[k-1]
	}
	out := make([]T, len(items))
	next := make([]int, n)
	copy(next, counts[:n])
	for i, it := range items {
		k := owners[i]
		out[next[k]] = it
		next[k]++
	}
	for k := range n {
		parts[k] = out[counts[k]:counts[k+1]]
	}
	return parts
}

// owner is the executor that stores id: the same one for every message, so
// one user's operations stay in order.
func (w *Worker) owner(id string) int {
	if len(w.execQ) == 1 {
		return 0
	}
	return int(maphash.String(w.seed, id) % uint64(len(w.execQ)))
}
