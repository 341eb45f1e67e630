package main

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/contract"
)

// idWidth is the number of digits of a generated user id's index: ids are
// tag+"%08d", e.g. "o2-00001234", so every run stores ids of one length.
const idWidth = 8

// userID returns the id of user i of a scenario.
func userID(tag string, i int) string {
	return string(appendUserID(make([]byte, 0, len(tag)+idWidth), tag, i))
}

func appendUserID(b []byte, tag string, i int) []byte {
	b = append(b, tag...)
	var d [20]byte
	s := strconv.AppendInt(d[:0], int64(i), 10)
	for range idWidth - len(s) {
		b = append(b, '0')
	}
	return append(b, s...)
}

// parseIndex returns i for an id made by userID(tag, i), or -1.
func parseIndex(tag string, id []byte) int {
	if len(id) != len(tag)+idWidth || string(id[:len(tag)]) != tag {
		return -1
	}
	n := 0
	for _, c := range id[len(tag):] {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// singlePayload is {"userId":"<id>"}.
func singlePayload(tag string, i int) []byte {
	b := make([]byte, 0, 16+len(tag)+idWidth)
	b = append(b, `{"userId":"`...)
	b = appendUserID(b, tag, i)
	return append(b, `"}`...)
}

// batchPayload is {"userIds":[...]} for the given indexes.
func batchPayload(tag string, idx []int) []byte {
	b := make([]byte, 0, 16+len(idx)*(len(tag)+idWidth+3))
	b = append(b, `{"userIds":[`...)
	for k, i := range idx {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = appendUserID(b, tag, i)
		b = append(b, '"')
	}
	return append(b, "]}"...)
}

// requester sends requests (heartbeats, disconnects) with at most window of
// them awaiting a reply: a reply means the ids were applied in Redis. All
// replies come to one wildcard inbox subscription; a request may carry a
// callback run (on the reply goroutine, so it must not block) when its reply
// arrives.
type requester struct {
	nc    *nats.Conn
	inbox string
	sub   *nats.Subscription
	slots chan struct{}

	seq       atomic.Uint64
	sent      atomic.Int64
	replies   atomic.Int64
	accepted  atomic.Int64
	failed    atomic.Int64 // replies with "error", or no responders
	rejected  atomic.Int64 // entries named in replies' "rejected"
	lastReply atomic.Int64 // unix nanos
	callbacks sync.Map     // seq -> func()
	firstErr  atomic.Value // string
}

func newRequester(nc *nats.Conn, window int) (*requester, error) {
	r := &requester{nc: nc, inbox: nats.NewInbox(), slots: make(chan struct{}, window)}
	sub, err := nc.Subscribe(r.inbox+".*", r.onReply)
	if err != nil {
		return nil, fmt.Errorf("subscribe to replies: %w", err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	r.sub = sub
	if err := nc.Flush(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *requester) onReply(m *nats.Msg) {
	now := time.Now().UnixNano()
	if seq, err := strconv.ParseUint(m.Subject[len(r.inbox)+1:], 10, 64); err == nil {
		if cb, ok := r.callbacks.LoadAndDelete(seq); ok {
			cb.(func())()
		}
	}
	switch {
	case len(m.Data) == 0 && m.Header.Get("Status") == "503":
		r.failed.Add(1)
		r.firstErr.CompareAndSwap(nil, "no responders")
	case bytes.Contains(m.Data, []byte(`"error"`)):
		r.failed.Add(1)
		r.firstErr.CompareAndSwap(nil, string(m.Data))
	default:
		r.accepted.Add(parseAccepted(m.Data))
		if i := bytes.Index(m.Data, []byte(`"rejected":[`)); i >= 0 {
			r.rejected.Add(int64(bytes.Count(m.Data[i:], []byte(`"userId"`))))
			r.firstErr.CompareAndSwap(nil, string(m.Data))
		}
	}
	r.lastReply.Store(now)
	r.replies.Add(1)
	<-r.slots
}

func parseAccepted(data []byte) int64 {
	i := bytes.Index(data, []byte(`"accepted":`))
	if i < 0 {
		return 0
	}
	var n int64
	for _, c := range data[i+len(`"accepted":`):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// send publishes one request once a window slot is free; cb, if not nil,
// runs when its reply arrives.
func (r *requester) send(ctx context.Context, subject string, data []byte, cb func()) error {
	select {
	case r.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	seq := r.seq.Add(1)
	if cb != nil {
		r.callbacks.Store(seq, cb)
	}
	r.sent.Add(1)
	if err := r.nc.PublishRequest(subject, r.inbox+"."+strconv.FormatUint(seq, 10), data); err != nil {
		r.sent.Add(-1)
		r.callbacks.Delete(seq)
		<-r.slots
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// publish sends a message without a reply subject (as a gateway that does
// not wait would).
func (r *requester) publish(subject string, data []byte) error {
	if err := r.nc.Publish(subject, data); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// wait returns once every request sent has its reply, or ctx is done.
func (r *requester) wait(ctx context.Context) error {
	if err := r.nc.FlushWithContext(ctx); err != nil {
		return err
	}
	for r.replies.Load() < r.sent.Load() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d replies: %w", r.replies.Load(), r.sent.Load(), ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// lost is the number of requests without a reply.
func (r *requester) lost() int64 { return r.sent.Load() - r.replies.Load() }

func (r *requester) err() string {
	if s, ok := r.firstErr.Load().(string); ok {
		return s
	}
	return ""
}

func (r *requester) close() { _ = r.sub.Unsubscribe() }

// collector counts the online and offline events of one scenario's users
// (ids userID(tag, 0..n-1)) and when each user's first offline arrived.
// Events for other ids are counted as foreign.
type collector struct {
	tag      string
	n        int
	subs     []*nats.Subscription
	online   []atomic.Uint32
	offline  []atomic.Uint32
	offFirst []atomic.Int64 // unix nanos of the first offline event
	// gwLost and expired count the offline events with reason
	// gateway_lost and expired (only when made with reasons).
	gwLost, expired []atomic.Uint32

	onTotal, offTotal atomic.Int64
	onDistinct        atomic.Int64
	allOnlineAt       atomic.Int64 // unix nanos when onDistinct reached n
	foreign           atomic.Int64
	// markOnline counts online events after mark() (flaps in steady state).
	sinceMark atomic.Int64
	marked    atomic.Bool
}

// newCollector subscribes to the online and offline events of users
// tag0..n-1; with reasons it also counts each user's offline events by
// reason (gateway_lost, expired).
func newCollector(nc *nats.Conn, subjects contract.Subjects, tag string, n int, reasons bool) (*collector, error) {
	c := &collector{tag: tag, n: n, online: make([]atomic.Uint32, n), offline: make([]atomic.Uint32, n), offFirst: make([]atomic.Int64, n)}
	if reasons {
		c.gwLost, c.expired = make([]atomic.Uint32, n), make([]atomic.Uint32, n)
	}
	for _, s := range []struct {
		subject string
		fn      nats.MsgHandler
	}{{subjects.Online(), c.onOnline}, {subjects.Offline(), c.onOffline}} {
		sub, err := nc.Subscribe(s.subject, s.fn)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("subscribe %s: %w", s.subject, err)
		}
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			c.close()
			return nil, err
		}
		c.subs = append(c.subs, sub)
	}
	if err := nc.Flush(); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// eventUserID extracts the userId of an event without decoding it all: the
// bench's ids need no escaping.
func eventUserID(data []byte) []byte {
	const key = `"userId":"`
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return nil
	}
	rest := data[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil
	}
	return rest[:j]
}

func (c *collector) index(m *nats.Msg) int {
	i := parseIndex(c.tag, eventUserID(m.Data))
	if i < 0 || i >= c.n {
		c.foreign.Add(1)
		return -1
	}
	return i
}

func (c *collector) onOnline(m *nats.Msg) {
	i := c.index(m)
	if i < 0 {
		return
	}
	c.onTotal.Add(1)
	if c.marked.Load() {
		c.sinceMark.Add(1)
	}
	if c.online[i].Add(1) == 1 && c.onDistinct.Add(1) == int64(c.n) {
		c.allOnlineAt.Store(time.Now().UnixNano())
	}
}

func (c *collector) onOffline(m *nats.Msg) {
	now := time.Now().UnixNano()
	i := c.index(m)
	if i < 0 {
		return
	}
	c.offTotal.Add(1)
	if c.offline[i].Add(1) == 1 {
		c.offFirst[i].Store(now)
	}
	if c.gwLost != nil {
		switch {
		case bytes.Contains(m.Data, []byte(`"reason":"gateway_lost"`)):
			c.gwLost[i].Add(1)
		case bytes.Contains(m.Data, []byte(`"reason":"expired"`)):
			c.expired[i].Add(1)
		}
	}
}

// mark starts counting online events as flaps.
func (c *collector) mark() { c.marked.Store(true) }

// waitOnline waits until n distinct users got an online event.
func (c *collector) waitOnline(ctx context.Context, n int) error {
	for c.onDistinct.Load() < int64(n) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d online events: %w", c.onDistinct.Load(), n, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// duplicates returns the users with more than one online event and the
// number of extra events.
func (c *collector) onlineDuplicates() (users, extra int64) {
	for i := range c.online {
		if n := c.online[i].Load(); n > 1 {
			users++
			extra += int64(n - 1)
		}
	}
	return users, extra
}

func (c *collector) close() {
	for _, s := range c.subs {
		_ = s.Unsubscribe()
	}
}

// rangePayload is {"userIds":[...]} for users start..end-1.
func rangePayload(tag string, start, end int) []byte {
	idx := make([]int, 0, end-start)
	for i := start; i < end; i++ {
		idx = append(idx, i)
	}
	return batchPayload(tag, idx)
}
