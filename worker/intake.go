package worker

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// intake is the worker's one ordered entry for heartbeats and disconnects.
//
// Both subscriptions deliver into one channel, from the NATS connection's
// read loop, so the worker sees messages in the order the server sent them:
// for one publisher, the order it published them, across both subjects (a
// disconnect followed by a heartbeat for the same user is applied in that
// order). A pump moves each message at once from the channel into a FIFO
// bounded in bytes, so a burst (a gateway fleet reconnecting after a
// deploy) waits in memory the operator sized instead of being dropped by a
// message count; only beyond that bound is a message dropped, counted, and
// answered "overloaded" when it has a reply subject.
type intake struct {
	ch    chan *nats.Msg // the subscriptions deliver here
	limit int64          // most bytes held in q (see msgCost)

	mu     sync.Mutex
	q      []*nats.Msg
	at     []int64 // at[i]: when q[i] was received (monotonic ns, see since)
	head   int     // q[head:] are waiting
	bytes  int64   // cost of q[head:]
	high   int64   // most bytes held at once
	closed bool    // nothing more will be pushed
	ready  chan struct{}

	dropped atomic.Int64
}

// intakeChan is the capacity of the channel between the read loop and the
// pump. The pump never blocks (it neither decodes nor answers), so the
// channel holds only what arrives while the pump waits to be scheduled; it
// is sized for a burst under a loaded machine (a message that finds it full
// is dropped by nats.go and counted as a slow consumer).
const intakeChan = 65536

// msgOverhead is what a received message costs in memory beside its
// subject, reply and data: the *nats.Msg, its allocations' rounding and
// the intake's slots. TestMsgCostCoversHeap holds the bound honest: a
// single-id heartbeat takes 171 bytes of heap (218-254 with a reply
// subject) and is charged 290 (328).
const msgOverhead = 256

func msgCost(m *nats.Msg) int64 {
	return int64(len(m.Subject)+len(m.Reply)+len(m.Data)) + msgOverhead
}

func newIntake(limit int64) *intake {
	return &intake{ch: make(chan *nats.Msg, intakeChan), limit: limit, ready: make(chan struct{}, 1)}
}

// pushAll queues the messages in ms, in order, dropping those that would
// take the intake past its limit (a message larger than the whole limit is
// still taken when the intake is empty, so it cannot wedge), and returns
// the dropped ones appended to dropped. One lock for the whole run keeps
// the pump ahead of the connection's read loop.
func (in *intake) pushAll(ms []*nats.Msg, dropped []*nats.Msg) []*nats.Msg {
	now := since()
	in.mu.Lock()
	for _, m := range ms {
		c := msgCost(m)
		if in.bytes > 0 && in.bytes+c > in.limit {
			dropped = append(dropped, m)
			continue
		}
		in.q = append(in.q, m)
		in.at = append(in.at, now)
		in.bytes += c
	}
	in.high = max(in.high, in.bytes)
	in.mu.Unlock()
	in.dropped.Add(int64(len(dropped)))
	in.signal()
	return dropped
}

func (in *intake) signal() {
	select {
	case in.ready <- struct{}{}:
	default:
	}
}

// close marks that nothing more will be pushed; pop returns false once the
// queue is empty.
func (in *intake) close() {
	in.mu.Lock()
	in.closed = true
	in.mu.Unlock()
	in.signal()
}

// pop returns the oldest message and when it was received (see since),
// waiting for one; ok is false once the intake is closed and empty. One
// goroutine pops.
func (in *intake) pop() (m *nats.Msg, at int64, ok bool) {
	for {
		in.mu.Lock()
		if in.head < len(in.q) {
			m, at = in.q[in.head], in.at[in.head]
			in.q[in.head] = nil
			in.head++
			in.bytes -= msgCost(m)
			switch {
			case in.head == len(in.q):
				in.q, in.at, in.head = in.q[:0], in.at[:0], 0
			case in.head >= 4096 && in.head*2 >= len(in.q):
				// Give the consumed front back instead of growing forever.
				n := copy(in.q, in.q[in.head:])
				copy(in.at, in.at[in.head:])
				clear(in.q[n:])
				in.q, in.at, in.head = in.q[:n], in.at[:n], 0
			}
			in.mu.Unlock()
			return m, at, true
		}
		closed := in.closed
		in.mu.Unlock()
		if closed {
			return nil, 0, false
		}
		<-in.ready
	}
}

// epoch anchors since: time.Since on it reads the monotonic clock.
var epoch = time.Now()

// since returns nanoseconds on the monotonic clock, cheap to store and
// compare.
func since() int64 { return int64(time.Since(epoch)) }

// held returns the bytes waiting now and the most ever held at once.
func (in *intake) held() (now, high int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.bytes, in.high
}
