package testenv

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Collector records every message published on a subject, for assertions on
// what is on the wire. It is safe for concurrent use.
type Collector struct {
	subject string

	mu      sync.Mutex
	msgs    []*nats.Msg
	changed chan struct{} // closed and replaced on every message
}

// Collect subscribes to subject (wildcards allowed) on nc and records every
// message, with its subject, data and headers. Pass a connection of the
// collector's own (n.Conn(t)) so that it does not share ordering or
// slow-consumer limits with the code under test. The subscription has no
// pending limits and is flushed before Collect returns, so anything published
// afterwards is recorded. It is unsubscribed when the test ends.
func Collect(t testing.TB, nc *nats.Conn, subject string) *Collector {
	t.Helper()
	c := &Collector{subject: subject, changed: make(chan struct{})}
	sub, err := nc.Subscribe(subject, c.add)
	if err != nil {
		t.Fatalf("collect %q: subscribe: %v", subject, err)
		return nil
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatalf("collect %q: set pending limits: %v", subject, err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("collect %q: flush: %v", subject, err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() }) // fails only if nc is already closed
	return c
}

func (c *Collector) add(m *nats.Msg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
	close(c.changed)
	c.changed = make(chan struct{})
}

// Msgs returns the messages recorded so far, in arrival order. The slice is
// a copy; the messages are shared and must not be modified.
func (c *Collector) Msgs() []*nats.Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*nats.Msg(nil), c.msgs...)
}

// Len returns the number of messages recorded so far.
func (c *Collector) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// WaitFor waits until at least n messages have been recorded and returns all
// of them (as Msgs). It fails the test, listing what did arrive, if fewer
// than n have after timeout.
func (c *Collector) WaitFor(t testing.TB, n int, timeout time.Duration) []*nats.Msg {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		if len(c.msgs) >= n {
			msgs := append([]*nats.Msg(nil), c.msgs...)
			c.mu.Unlock()
			return msgs
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			msgs := c.Msgs()
			t.Fatalf("collector %q: %d messages after %s, want %d:\n%s", c.subject, len(msgs), timeout, n, summarize(msgs))
			return nil
		}
	}
}

// summarize lists messages one a line, data cut to 200 bytes, for failures.
func summarize(msgs []*nats.Msg) string {
	if len(msgs) == 0 {
		return "  (none)"
	}
	var b strings.Builder
	for i, m := range msgs {
		data := string(m.Data)
		if len(data) > 200 {
			data = data[:200] + "..."
		}
		fmt.Fprintf(&b, "  %d: %s %q\n", i, m.Subject, data)
	}
	return b.String()
}
