// Package bus is presenced's NATS side: the connection, the subscriptions
// the worker consumes, event publishing and the query service. What goes
// over the wire (subjects, events, requests, replies) is package contract.
//
// Bus owns its *nats.Conn: it connects in Start and drains in Stop (the fx
// Module wires both to the lifecycle).
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// InboxPrefix prefixes the subjects replies to presenced's own requests
// come back on: JetStream API calls and PubAcks, with Options.Stream. A
// NATS account that restricts the worker allows it to subscribe to
// InboxPrefix+".>" (not every client's _INBOX.>).
const InboxPrefix = "_INBOX_presenced"

// Options configures a Bus.
type Options struct {
	// URL is a NATS URL or a comma-separated list of them.
	URL string
	// Name is the connection name shown by the server (monitoring, logs).
	Name string
	// ConnectTimeout bounds the first connect; Start fails after it.
	ConnectTimeout time.Duration
	// Extra are more nats options (credentials, TLS), applied last.
	Extra []nats.Option
	// PendingMsgs and PendingBytes bound each subscription's buffer of
	// messages not yet handled; beyond them NATS drops messages and the
	// drop is counted (slow consumer). Zero means 65536 and 64 MiB.
	PendingMsgs  int
	PendingBytes int
	// PingInterval is how often the client pings the server; 3 unanswered
	// pings mark a half-open connection dead. Zero means 5s.
	PingInterval time.Duration
	// Stream, when its Name is set, makes Start create or verify that
	// JetStream stream and PublishBatch wait for a PubAck per event.
	Stream StreamOptions
	// PubAckTimeout bounds the wait for one PubAck; zero means 5s.
	PubAckTimeout time.Duration
	Logger        *slog.Logger
}

// Bus is the NATS connection and what goes over it. Safe for concurrent use.
type Bus struct {
	opts     Options
	log      *slog.Logger
	nc       *nats.Conn
	js       jetstream.JetStream // nil without Options.Stream
	slow     atomic.Int64
	reconn   atomic.Int64
	disconns atomic.Int64
}

// New returns a Bus; it does no I/O until Start.
func New(opts Options) *Bus {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PendingMsgs == 0 {
		opts.PendingMsgs = 65536
	}
	if opts.PendingBytes == 0 {
		opts.PendingBytes = 64 << 20
	}
	if opts.Name == "" {
		opts.Name = "presenced"
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 5 * time.Second
	}
	if opts.PubAckTimeout <= 0 {
		opts.PubAckTimeout = 5 * time.Second
	}
	return &Bus{opts: opts, log: opts.Logger}
}

// Start connects, failing when no server answers within ConnectTimeout.
// After that the connection reconnects forever.
func (b *Bus) Start(ctx context.Context) error {
	o := []nats.Option{
		nats.Name(b.opts.Name),
		nats.Timeout(b.opts.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		// No reconnect buffer: a publish while disconnected fails at once, so
		// the outbox keeps the event instead of a buffer that may be lost.
		nats.ReconnectBufSize(-1),
		nats.PingInterval(b.opts.PingInterval),
		nats.CustomInboxPrefix(InboxPrefix),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // a deliberate close
			}
			b.disconns.Add(1)
			b.log.Warn("nats disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.reconn.Add(1)
			b.log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				if b.slow.Add(1)%1000 == 1 { // log the first of every 1000, not each
					subj := ""
					if sub != nil {
						subj = sub.Subject
					}
					b.log.Warn("slow consumer: messages dropped", "subject", subj, "total", b.slow.Load())
				}
				return
			}
			b.log.Error("nats async error", "err", err)
		}),
	}
	o = append(o, b.opts.Extra...)
	type result struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(b.opts.URL, o...)
		ch <- result{nc, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return fmt.Errorf("connect to nats: %w", r.err)
		}
		b.nc = r.nc
	case <-ctx.Done():
		go func() { // the connect attempt ends within ConnectTimeout
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return fmt.Errorf("connect to nats: %w", ctx.Err())
	}
	b.log.Info("nats connected", "server", b.nc.ConnectedUrlRedacted())
	if b.opts.Stream.Name != "" {
		if err := b.startStream(ctx); err != nil {
			b.nc.Close()
			b.nc = nil
			return err
		}
	}
	return nil
}

// Stop drains the connection: subscriptions stop taking messages, handlers
// finish, pending publishes are flushed, then it closes. Bounded by ctx.
func (b *Bus) Stop(ctx context.Context) error {
	if b.nc == nil {
		return nil
	}
	closed := make(chan struct{})
	b.nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := b.nc.Drain(); err != nil {
		b.nc.Close()
		return nil
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		b.nc.Close()
		return fmt.Errorf("drain nats: %w", ctx.Err())
	}
}

// Conn returns the connection (nil before Start).
func (b *Bus) Conn() *nats.Conn { return b.nc }

// Connected reports whether the connection is up now.
func (b *Bus) Connected() bool { return b.nc != nil && b.nc.IsConnected() }

// SlowConsumerDrops returns how many times NATS dropped messages because a
// subscription's pending limits were reached.
func (b *Bus) SlowConsumerDrops() int64 { return b.slow.Load() }

// Reconnects returns how many times the connection was re-established.
func (b *Bus) Reconnects() int64 { return b.reconn.Load() }

// QueueSubscribe subscribes handler to subject in queue group queue, with
// the configured pending limits. Handlers of one subscription run one at a
// time, in order.
func (b *Bus) QueueSubscribe(subject, queue string, handler nats.MsgHandler) (*nats.Subscription, error) {
	sub, err := b.nc.QueueSubscribe(subject, queue, handler)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	if err := sub.SetPendingLimits(b.opts.PendingMsgs, b.opts.PendingBytes); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("set pending limits on %s: %w", subject, err)
	}
	return sub, nil
}

// ChanQueueSubscribe delivers subject's messages, shared with the rest of
// queue group queue, into ch from the connection's read loop: messages of
// several subscriptions on one channel keep the order the server sent them
// in. Pending limits do not apply: a message that finds ch full is dropped
// and counted as a slow consumer, so the reader must empty ch promptly.
func (b *Bus) ChanQueueSubscribe(subject, queue string, ch chan *nats.Msg) (*nats.Subscription, error) {
	sub, err := b.nc.ChanQueueSubscribe(subject, queue, ch)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	return sub, nil
}

// Flush waits until the server has received everything published so far.
func (b *Bus) Flush(ctx context.Context) error {
	if err := b.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("flush nats: %w", err)
	}
	return nil
}
