package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/presenced/presenced/contract"
)

// Defaults of the Gateway options.
const (
	// DefaultGatewayLease is presenced's default PRESENCE_GATEWAY_LEASE.
	DefaultGatewayLease = 15 * time.Second
	// DefaultGatewayHeartbeat is half of presenced's default TTL (60s).
	DefaultGatewayHeartbeat = 30 * time.Second
)

// ErrGatewayClosed is returned by Gateway.Connect and Gateway.Disconnect
// when the Gateway is not running: before Start, or after Close or Abandon.
var ErrGatewayClosed = errors.New("presence gateway not running")

// ErrRejected is wrapped by the error of Gateway.Connect when presenced
// rejected the connection (an invalid id, or the user has the most live
// connections allowed, PRESENCE_MAX_CONNECTIONS_PER_USER); the error says
// why.
var ErrRejected = errors.New("presence connection rejected")

// minRenew bounds how often a Gateway renews its lease, whatever the
// lease's expiry says.
const minRenew = 10 * time.Millisecond

// Gateway reports the connections of one gateway process (a websocket
// server, say) to presenced. It holds the gateway's lease, so that when the
// process dies its users go offline within the lease (reason
// "gateway_lost") instead of a whole TTL later, and heartbeats every open
// connection in batches, so that a user is online while any of their
// connections, on any gateway, is live.
//
// NewGateway, then Start: it takes the lease under a random instance id
// (one per Gateway, so that presenced tells a restarted process from the
// one it replaces: the previous instance's connections end), then, until
// Close, renews the lease (every third of it), heartbeats the open
// connections (WithHeartbeatInterval, about half of presenced's TTL), and
// sends each Connect and Disconnect at once, batching those that arrive
// together. Close sends a disconnect for every connection still open and
// ends the lease.
//
// Every message carries a sequence per connection that increases with
// each message for the connection, so presenced applies them in order even
// when replicas handle them out of order: a disconnect is final, and a
// heartbeat it overtook does not reopen the connection. The sequence is
// the wall clock in microseconds, or one more than the last when that is
// later, so a restarted process, or another gateway the same connection id
// moves to, continues above the sequences its predecessor sent (presenced
// would ignore messages whose sequence is not above the last it applied).
//
// A Gateway is safe for concurrent use. It runs three goroutines between
// Start and Close (or Abandon), which wait for them. Errors of the
// background work (a renewal or a heartbeat round that failed after its
// retries, entries presenced rejected) are logged to the Client's logger
// (WithLogger); the next renewal or round tries again, and a round after a
// lost lease registers the connections anew.
type Gateway struct {
	c        *Client
	id       string
	instance string
	leaseFor time.Duration
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	state   gatewayState
	conns   map[connKey]connState // the open connections
	seq     int64                 // the last sequence handed out
	pending []gatewayOp           // Connect and Disconnect calls for the flusher

	wake        chan struct{} // a gatewayOp is pending
	round       chan struct{} // heartbeat every connection now
	quit        chan struct{} // closed by Close and Abandon
	cancel      context.CancelFunc
	flushCancel context.CancelFunc
	wg          sync.WaitGroup
}

type gatewayState int

const (
	gatewayNew gatewayState = iota
	gatewayStarting
	gatewayRunning
	gatewayClosed
)

type connKey struct{ user, conn string }

// connState is an open connection: seq is that of the Connect that opened
// it; heartbeat rounds skip it until that Connect's request is done.
type connState struct {
	seq  int64
	sent bool
}

// gatewayOp is a Connect (end false) or Disconnect waiting for the flusher;
// done gets its outcome (buffered: the flusher never blocks on it).
type gatewayOp struct {
	conn Conn
	end  bool
	done chan error
}

// GatewayOption configures a Gateway.
type GatewayOption func(*Gateway)

// WithLease sets the lease presenced grants (its PRESENCE_GATEWAY_LEASE;
// the Gateway cannot ask for it): the lease is renewed every third of it,
// or every third of the time the last renewal's reply says is left, when
// that is shorter. Zero or less means DefaultGatewayLease.
func WithLease(d time.Duration) GatewayOption { return func(g *Gateway) { g.leaseFor = d } }

// WithHeartbeatInterval sets how often every open connection is
// heartbeated: at most half of presenced's TTL (PRESENCE_TTL), so that one
// lost round does not end connections. Zero or less means
// DefaultGatewayHeartbeat.
func WithHeartbeatInterval(d time.Duration) GatewayOption {
	return func(g *Gateway) { g.interval = d }
}

// NewGateway returns a Gateway for gatewayID (a stable name of the gateway,
// the same across its restarts: its host name, say; it follows the user-id
// rules) on c, with a new random instance id. It does no I/O.
func NewGateway(c *Client, gatewayID string, opts ...GatewayOption) *Gateway {
	g := &Gateway{
		c:        c,
		id:       gatewayID,
		instance: newInstanceID(),
		conns:    map[connKey]connState{},
		wake:     make(chan struct{}, 1),
		round:    make(chan struct{}, 1),
		quit:     make(chan struct{}),
	}
	for _, o := range opts {
		o(g)
	}
	if g.leaseFor <= 0 {
		g.leaseFor = DefaultGatewayLease
	}
	if g.interval <= 0 {
		g.interval = DefaultGatewayHeartbeat
	}
	g.log = c.log.With("component", "presence-gateway", "gateway_id", gatewayID, "instance_id", g.instance)
	return g
}

// newInstanceID returns 16 random bytes in hex.
func newInstanceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return hex.EncodeToString(b[:])
}

// ID returns the gateway's id.
func (g *Gateway) ID() string { return g.id }

// InstanceID returns the random id this Gateway holds the lease under.
func (g *Gateway) InstanceID() string { return g.instance }

// Connections returns how many connections are open.
func (g *Gateway) Connections() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}

// Start takes the gateway's lease, failing if presenced does not grant it
// within ctx (after retries, as for Heartbeat), then starts the background
// work, which runs until Close or Abandon, not until ctx ends. A lease
// held by another instance of the gateway (the process this one replaces)
// is taken over: the connections registered under it end. A Gateway is
// started once.
func (g *Gateway) Start(ctx context.Context) error {
	g.mu.Lock()
	if g.state != gatewayNew {
		g.mu.Unlock()
		return errors.New("presence gateway: Start called twice")
	}
	g.state = gatewayStarting
	g.mu.Unlock()
	r, err := g.c.lease(ctx, g.c.subjects().GatewayHeartbeat(), g.leaseRequest())
	if err != nil {
		g.mu.Lock()
		g.state = gatewayNew
		g.mu.Unlock()
		return err
	}
	if r.Replaced {
		g.log.Info("took the lease from the gateway's previous instance: its connections end")
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	flushCtx, flushCancel := context.WithCancel(context.Background())
	g.mu.Lock()
	g.state, g.cancel, g.flushCancel = gatewayRunning, cancel, flushCancel
	g.mu.Unlock()
	g.wg.Go(func() { g.renewLoop(loopCtx, r) })
	g.wg.Go(func() { g.heartbeatLoop(loopCtx) })
	g.wg.Go(func() { g.flushLoop(flushCtx) })
	return nil
}

// Connect opens a connection of userID (connID is unique among the user's
// connections, and should be new for each connection: a websocket's id,
// say) and sends its first heartbeat now, in one request with the other
// Connect and Disconnect calls made meanwhile; it returns once presenced
// answered. The user comes online unless another of their connections is
// live. If presenced rejected the connection (or it is invalid: the ids
// follow the user-id rules), the error wraps ErrRejected and the
// connection is not kept. If the request failed otherwise (no
// answer after the retries, ctx ended), the connection is kept and the next
// heartbeat round sends it again. Connecting an open connection again
// sends a heartbeat for it.
func (g *Gateway) Connect(ctx context.Context, userID, connID string) error {
	k := connKey{userID, connID}
	if err := contract.ValidateConn(Conn{UserID: userID, ConnectionID: connID}); err != nil {
		return fmt.Errorf("%w: user %q connection %q: %w", ErrRejected, userID, connID, err)
	}
	return g.enqueue(ctx, k, false, func(seq int64) { g.conns[k] = connState{seq: seq} })
}

// Disconnect closes a connection and sends its disconnect now (batched as
// for Connect); it returns once presenced answered. The user goes offline
// (reason "disconnect") unless another of their connections is live.
// Disconnecting a connection that is not open does nothing.
func (g *Gateway) Disconnect(ctx context.Context, userID, connID string) error {
	k := connKey{userID, connID}
	g.mu.Lock()
	_, open := g.conns[k]
	g.mu.Unlock()
	if !open {
		return nil
	}
	return g.enqueue(ctx, k, true, func(int64) { delete(g.conns, k) })
}

// enqueue queues a Connect or Disconnect of k for the flusher, applying
// track to the open connections with the message's seq, and waits for its
// outcome.
func (g *Gateway) enqueue(ctx context.Context, k connKey, end bool, track func(seq int64)) error {
	g.mu.Lock()
	if g.state != gatewayRunning {
		g.mu.Unlock()
		return ErrGatewayClosed
	}
	op := gatewayOp{conn: g.conn(k, time.Now().UnixMicro()), end: end, done: make(chan error, 1)}
	track(op.conn.Seq)
	g.pending = append(g.pending, op)
	g.mu.Unlock()
	signal(g.wake)
	select {
	case err := <-op.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// conn returns k's entry with the next seq. g.mu is held.
func (g *Gateway) conn(k connKey, nowMicros int64) Conn {
	g.seq = max(g.seq+1, nowMicros)
	return Conn{UserID: k.user, ConnectionID: k.conn, GatewayID: g.id, Seq: g.seq}
}

// signal wakes the goroutine that receives on ch, unless it is woken
// already.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Close shuts the Gateway down cleanly: the background work stops (a
// heartbeat round under way is cut short), the Connect and Disconnect calls
// already made are sent, then a disconnect for every connection still open
// (their users go offline, reason "disconnect", unless connected
// elsewhere), and the lease ends. ctx bounds all of it; what could not be
// sent is ended by presenced when the lease lapses. Connect and Disconnect
// return ErrGatewayClosed from now on. Closing a Gateway that is not
// running does nothing.
func (g *Gateway) Close(ctx context.Context) error {
	g.mu.Lock()
	if g.state != gatewayRunning {
		g.mu.Unlock()
		return nil
	}
	g.state = gatewayClosed
	open := make([]Conn, 0, len(g.conns))
	now := time.Now().UnixMicro()
	for k := range g.conns {
		open = append(open, g.conn(k, now))
	}
	clear(g.conns)
	g.mu.Unlock()

	g.cancel()
	stop := context.AfterFunc(ctx, g.flushCancel)
	close(g.quit)
	g.wg.Wait()
	stop()
	g.flushCancel()

	var errs []error
	if len(open) > 0 {
		if _, err := g.c.DisconnectConns(ctx, open...); err != nil {
			errs = append(errs, fmt.Errorf("disconnect %d connections: %w", len(open), err))
		}
	}
	if _, err := g.c.lease(ctx, g.c.subjects().GatewayDisconnect(), g.leaseRequest()); err != nil {
		errs = append(errs, fmt.Errorf("end lease: %w", err))
	}
	return errors.Join(errs...)
}

// Abandon stops the Gateway without telling presenced anything, as if the
// process had crashed: no disconnects, no end of the lease. presenced ends
// the gateway's connections when the lease lapses (their users go offline
// with reason "gateway_lost" unless connected elsewhere), or when a new
// Gateway with the same id starts. Connect and Disconnect calls waiting
// for their request fail. It is meant for tests and simulations; a process
// that is really shutting down calls Close.
func (g *Gateway) Abandon() {
	g.mu.Lock()
	if g.state != gatewayRunning {
		g.mu.Unlock()
		return
	}
	g.state = gatewayClosed
	clear(g.conns)
	g.mu.Unlock()
	g.cancel()
	g.flushCancel()
	close(g.quit)
	g.wg.Wait()
}

func (g *Gateway) leaseRequest() contract.GatewayLeaseRequest {
	return contract.GatewayLeaseRequest{GatewayID: g.id, InstanceID: g.instance}
}

// renewLoop renews the lease until ctx ends; r is the reply that took it.
// When a renewal comes after the lease lapsed (presenced ended its
// connections, and the renewal took a new lease) or took it from another
// instance, it asks for a heartbeat round at once, which registers the
// connections anew.
func (g *Gateway) renewLoop(ctx context.Context, r contract.GatewayLeaseReply) {
	lapse := g.lapseAt(r)
	next := g.renewAfter(r)
	for {
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		lost := time.Now().After(lapse)
		r, err := g.c.lease(ctx, g.c.subjects().GatewayHeartbeat(), g.leaseRequest())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			g.log.Warn("gateway lease renewal failed", "err", err)
			next = min(g.leaseFor/3, time.Second)
			continue
		}
		switch {
		case r.Replaced:
			g.log.Warn("took the gateway's lease back from another instance (two processes with one gateway id?); registering the connections again")
			signal(g.round)
		case lost:
			g.log.Warn("the gateway's lease lapsed before this renewal; presenced ended its connections: registering them again")
			signal(g.round)
		}
		lapse, next = g.lapseAt(r), g.renewAfter(r)
	}
}

// lapseAt estimates when the lease lapses without renewal, by the reply's
// expiry (or the lease option when it has none).
func (g *Gateway) lapseAt(r contract.GatewayLeaseReply) time.Time {
	if d := untilLapse(r); d > 0 {
		return time.Now().Add(d)
	}
	return time.Now().Add(g.leaseFor)
}

// renewAfter is how long to wait before the next renewal: a third of the
// lease, or of what the reply says is left when that is shorter (presenced
// grants a shorter lease than the option says).
func (g *Gateway) renewAfter(r contract.GatewayLeaseReply) time.Duration {
	d := g.leaseFor / 3
	if left := untilLapse(r); left > 0 && left < g.leaseFor {
		d = left / 3
	}
	return max(d, minRenew)
}

// heartbeatLoop heartbeats every open connection each interval, or when
// asked through g.round, until ctx ends.
func (g *Gateway) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.round:
		}
		g.heartbeatAll(ctx)
	}
}

func (g *Gateway) heartbeatAll(ctx context.Context) {
	g.mu.Lock()
	conns := make([]Conn, 0, len(g.conns))
	now := time.Now().UnixMicro()
	for k, st := range g.conns {
		if st.sent {
			conns = append(conns, g.conn(k, now))
		}
	}
	g.mu.Unlock()
	if len(conns) == 0 {
		return
	}
	r, err := g.c.HeartbeatConns(ctx, conns...)
	if err != nil && ctx.Err() == nil {
		// The next round tries again; a connection ends only a whole TTL
		// after its last heartbeat.
		g.log.Warn("heartbeat round failed", "connections", len(conns), "accepted", r.Accepted, "err", err)
	}
	if len(r.Rejected) > 0 {
		first := r.Rejected[0]
		g.log.Warn("presenced rejected connections", "rejected", len(r.Rejected), "user_id", first.UserID, "connection_id", first.ConnectionID, "error", first.Error)
	}
}

// flushLoop sends the pending Connect and Disconnect calls as they come,
// those that come together in one request each; after Close, those queued
// before it, then returns. When ctx ends (Abandon, or Close's context), the
// calls still pending fail.
func (g *Gateway) flushLoop(ctx context.Context) {
	defer func() {
		g.mu.Lock()
		ops := g.pending
		g.pending = nil
		g.mu.Unlock()
		for _, op := range ops {
			op.done <- ErrGatewayClosed
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.quit:
			g.flush(ctx)
			return
		case <-g.wake:
			g.flush(ctx)
		}
	}
}

// flush sends what is pending: the connects in one heartbeat, the
// disconnects in one disconnect (each split as the Client splits them),
// and tells each call its outcome.
func (g *Gateway) flush(ctx context.Context) {
	g.mu.Lock()
	ops := g.pending
	g.pending = nil
	g.mu.Unlock()
	if len(ops) == 0 {
		return
	}
	var opens, ends []Conn
	for _, op := range ops {
		if op.end {
			ends = append(ends, op.conn)
		} else {
			opens = append(opens, op.conn)
		}
	}
	type result struct {
		err      error
		rejected map[connKey]string
	}
	send := func(conns []Conn, fn func(context.Context, ...Conn) (Reply, error)) result {
		if len(conns) == 0 {
			return result{}
		}
		r, err := fn(ctx, conns...)
		o := result{err: err, rejected: map[connKey]string{}}
		for _, rej := range r.Rejected {
			o.rejected[connKey{rej.UserID, rej.ConnectionID}] = rej.Error
		}
		return o
	}
	out := [2]result{send(opens, g.c.HeartbeatConns), send(ends, g.c.DisconnectConns)}

	g.mu.Lock()
	defer g.mu.Unlock()
	for _, op := range ops {
		o := out[0]
		if op.end {
			o = out[1]
		}
		k := connKey{op.conn.UserID, op.conn.ConnectionID}
		err := o.err
		if msg, ok := o.rejected[k]; ok {
			err = fmt.Errorf("%w: user %q connection %q: %s", ErrRejected, k.user, k.conn, msg)
		}
		if !op.end {
			// A connection opened by this call (not opened again or closed
			// since) is left out of the rounds until now, and dropped if
			// rejected.
			if st, ok := g.conns[k]; ok && st.seq == op.conn.Seq {
				if errors.Is(err, ErrRejected) {
					delete(g.conns, k)
				} else {
					g.conns[k] = connState{seq: st.seq, sent: true}
				}
			}
		}
		op.done <- err
	}
}
