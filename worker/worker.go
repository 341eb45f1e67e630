// Package worker is presenced's domain flow: heartbeats and disconnects from
// the bus are validated, coalesced into batches and stored; due and expired
// users are claimed; the outbox is relayed to the bus as presence events.
//
// Worker depends on the small interfaces below, not on Redis or NATS types,
// so the flow is readable on its own; presence.Store, presence.Outbox and
// bus.Bus implement them.
package worker

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
)

// Store is what the worker needs from the presence store.
type Store interface {
	Heartbeat(ctx context.Context, ids []string) ([]int64, error)
	Disconnect(ctx context.Context, ids []string) ([]int64, error)
	Connect(ctx context.Context, conns []contract.Conn) ([]int64, error)
	Release(ctx context.Context, conns []contract.Conn) ([]int64, error)
	Kick(ctx context.Context, ids []string) ([]int64, error)
	RenewLease(ctx context.Context, gateway, instance string) (presence.Lease, error)
	EndLease(ctx context.Context, gateway, instance string) (presence.Lease, error)
	Lapse(ctx context.Context, limit int) (presence.LapseResult, error)
	Sweep(ctx context.Context, limit int) (presence.SweepResult, error)
	Claim(ctx context.Context, ids []string) (int, error)
	Count(ctx context.Context) (int64, error)
	// Writable reports whether Redis answers and accepts writes (the
	// worker rejoins the queue group once it does).
	Writable(ctx context.Context) error
	Reannounce(ctx context.Context) (presence.ReannounceResult, error)
}

// LossChecker checks an outbox's published entries for writes Redis lost
// (presence.Store.ResetAfterLoss): the store that holds the outbox.
type LossChecker interface {
	ResetAfterLoss(ctx context.Context, entries []presence.Published, version int64) (int64, error)
}

// Partition is one outbox the worker relays, with the store that holds
// it: the one outbox of one server, or one partition's of a Redis Cluster.
type Partition struct {
	Outbox Outbox
	Loss   LossChecker
}

// Outbox is what the relay needs from the outbox stream.
type Outbox interface {
	Init(ctx context.Context) error
	ReadNew(ctx context.Context, count int, block time.Duration) ([]presence.Event, error)
	ReadPending(ctx context.Context, count int) ([]presence.Event, error)
	Reclaim(ctx context.Context, minIdle time.Duration, count int) ([]presence.Event, error)
	Own(ctx context.Context, ids []string) ([]string, error)
	Ack(ctx context.Context, ids ...string) error
	Trim(ctx context.Context) (int64, error)
	RemoveIdleConsumers(ctx context.Context, idle time.Duration) (int64, error)
	Len(ctx context.Context) (int64, error)
	Leave(ctx context.Context) error
}

// Bus is what the worker needs from NATS.
type Bus interface {
	// ChanQueueSubscribe delivers subject's messages into ch, in the order
	// the server sent them, sharing them with the rest of the queue group.
	ChanQueueSubscribe(subject, queue string, ch chan *nats.Msg) (*nats.Subscription, error)
	PublishBatch(ctx context.Context, subjects contract.Subjects, groups [][]contract.Event, sendBy time.Time) []error
	Flush(ctx context.Context) error
	Connected() bool
}

// ExpirySource delivers the user ids of expired presence keys
// (presence.ExpiryListener); Run blocks until ctx is done.
type ExpirySource interface {
	Run(ctx context.Context) error
	Connected() bool
	Expired() <-chan string
}

var (
	_ Store        = (*presence.Store)(nil)
	_ Store        = (*presence.Cluster)(nil)
	_ LossChecker  = (*presence.Store)(nil)
	_ Outbox       = (*presence.Outbox)(nil)
	_ Bus          = (*bus.Bus)(nil)
	_ ExpirySource = (*presence.ExpiryListener)(nil)
	_ ExpirySource = (*presence.ClusterExpiry)(nil)
)

// Options configures a Worker. Zero values take the documented defaults.
type Options struct {
	Subjects contract.Subjects // zero means prefix "presence"
	Queue    string            // queue group; zero means "presenced"
	// MaxBatch is the most ids one message may carry; zero means 10000.
	MaxBatch int
	// InFlight is the number of store batches in flight; zero means 8.
	InFlight int
	// BatchIDs is the most ids coalesced into one store call; zero means 4000.
	BatchIDs int
	// QueueIDs bounds the ids decoded and waiting for an executor; zero
	// means 2*BatchIDs. Beyond it, messages wait in NATS's pending buffer.
	// The queue also holds at most 64*InFlight messages: many small
	// messages queue so that an executor finds enough to fill a store call
	// (single-id heartbeats: ~90 ids a call instead of ~30 with a queue of
	// 32 messages, and ~30% more of them per second on the bench machine).
	QueueIDs int
	// IntakeBytes bounds the messages received and not yet decoded, in
	// bytes of memory (payload, subject, reply and ~256 bytes per message);
	// beyond it messages are dropped, counted and answered "overloaded".
	// Zero means 256 MiB.
	IntakeBytes int64
	// ReconcileInterval is the sweep period; zero means 200ms.
	ReconcileInterval time.Duration
	// ClaimAfter is how long an outbox entry may stay unacknowledged on
	// another replica before this one republishes it; zero means 15s.
	ClaimAfter time.Duration
	// ConsumerIdleAfter: an outbox consumer with nothing pending that has
	// been idle this long (one a replica left when it crashed) is removed
	// from the group; zero means 4*ClaimAfter, at least a minute.
	ConsumerIdleAfter time.Duration
	Logger            *slog.Logger
	Metrics           *metrics.Metrics // zero means a private registry
}

func (o Options) withDefaults() Options {
	if o.Subjects.Prefix == "" {
		o.Subjects.Prefix = "presence"
	}
	if o.Queue == "" {
		o.Queue = "presenced"
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 10000
	}
	if o.InFlight <= 0 {
		o.InFlight = 8
	}
	if o.BatchIDs <= 0 {
		o.BatchIDs = 4 * presence.ChunkSize
	}
	if o.QueueIDs <= 0 {
		o.QueueIDs = 2 * o.BatchIDs
	}
	if o.IntakeBytes <= 0 {
		o.IntakeBytes = 256 << 20
	}
	if o.ReconcileInterval <= 0 {
		o.ReconcileInterval = 200 * time.Millisecond
	}
	if o.ClaimAfter <= 0 {
		o.ClaimAfter = 15 * time.Second
	}
	if o.ConsumerIdleAfter <= 0 {
		o.ConsumerIdleAfter = max(4*o.ClaimAfter, time.Minute)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	return o
}

// Worker runs the presence flow. Start it once, stop it once.
type Worker struct {
	store  Store
	relays []*relayer // one per outbox
	bus    Bus
	expiry ExpirySource
	opts   Options
	log    *slog.Logger
	m      *metrics.Metrics

	in                *intake
	overloaded        chan *nats.Msg // dropped by the intake, to be answered "overloaded"
	disconnectSubject string
	leaseSubjects     [2]string      // gateway heartbeat, gateway disconnect
	leaseQ            chan *nats.Msg // lease messages, answered by leases
	execQ             []chan job     // one queue per executor; a user's ids always go to the same one
	seed              maphash.Seed
	owners            []uint16      // the dispatcher's scratch: owner of each id of a message
	queued            *budget       // ids queued for and held by the executors
	closing           chan struct{} // closed when the subscriptions are drained
	abort             chan struct{} // closed when Stop runs out of time: answer the rest "shutting down"
	intakeDone        sync.WaitGroup
	execs             sync.WaitGroup // batch executors

	subsMu    sync.Mutex
	subs      []*nats.Subscription // nil while out of the queue group
	draining  []*nats.Subscription // left by leave, drain not yet finished
	storeDown atomic.Bool          // Redis failing: out of the queue group until it answers
	downCh    chan struct{}        // wakes the rejoin loop

	cancel  context.CancelFunc
	loops   sync.WaitGroup // reconciler, relay, expiry, rejoin
	stopped atomic.Bool
	debug   sampler
	dropLog sampler
	counts  [2]resultCounters // by op
}

// New returns a Worker on one store and its outbox. expiry may be nil:
// then the sweep alone finds expired users.
func New(store interface {
	Store
	LossChecker
}, outbox Outbox, b Bus, expiry ExpirySource, opts Options) *Worker {
	return NewPartitioned(store, []Partition{{Outbox: outbox, Loss: store}}, b, expiry, opts)
}

// NewPartitioned returns a Worker on a store whose data is split into
// partitions, each with its own outbox (presence.Cluster): the worker
// stores through store and runs one relay per partition. expiry may be
// nil.
func NewPartitioned(store Store, parts []Partition, b Bus, expiry ExpirySource, opts Options) *Worker {
	opts = opts.withDefaults()
	w := &Worker{
		store: store, bus: b, expiry: expiry, opts: opts,
		log: opts.Logger, m: opts.Metrics,
		in:                newIntake(opts.IntakeBytes),
		overloaded:        make(chan *nats.Msg, 1024),
		disconnectSubject: opts.Subjects.Disconnect(),
		leaseSubjects:     [2]string{opts.Subjects.GatewayHeartbeat(), opts.Subjects.GatewayDisconnect()},
		leaseQ:            make(chan *nats.Msg, 256),
		seed:              maphash.MakeSeed(),
		queued:            newBudget(opts.QueueIDs),
		closing:           make(chan struct{}),
		abort:             make(chan struct{}),
		downCh:            make(chan struct{}, 1),
	}
	for i, p := range parts {
		log := w.log
		if len(parts) > 1 {
			log = log.With("partition", i)
		}
		w.relays = append(w.relays, &relayer{w: w, outbox: p.Outbox, loss: p.Loss, log: log, counters: map[[2]string]prometheus.Counter{}})
	}
	for range opts.InFlight {
		w.execQ = append(w.execQ, make(chan job, 64))
	}
	w.counts[opHeartbeat] = newResultCounters(w.m.Heartbeats)
	w.counts[opDisconnect] = newResultCounters(w.m.Disconnects)
	return w
}

// Start prepares the outbox, subscribes to heartbeats and disconnects in the
// queue group and starts the executors, the reconciler, the relay and the
// expiry listener on their own context. It fails fast on the first error.
func (w *Worker) Start(ctx context.Context) error {
	for _, r := range w.relays {
		if err := r.outbox.Init(ctx); err != nil {
			return err
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	for _, q := range w.execQ {
		w.execs.Add(1)
		go func() {
			defer w.execs.Done()
			w.execute(runCtx, q)
		}()
	}
	w.intakeDone.Add(3)
	go func() {
		defer w.intakeDone.Done()
		defer close(w.overloaded)
		w.pump(w.closing)
	}()
	go func() {
		defer w.intakeDone.Done()
		w.answerOverloaded()
	}()
	go func() {
		defer w.intakeDone.Done()
		w.dispatch(w.abort)
	}()
	if err := w.subscribe(); err != nil {
		_ = w.Stop(ctx)
		return err
	}
	// The server has the subscriptions before Start returns (and before
	// "worker started" is logged), so a heartbeat sent right after is taken.
	fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
	defer fcancel()
	if err := w.bus.Flush(fctx); err != nil {
		_ = w.Stop(ctx)
		return err
	}
	w.goLoop(func() { w.rejoin(runCtx) })
	w.goLoop(func() { w.reconcile(runCtx) })
	w.goLoop(func() { w.lapses(runCtx) })
	w.goLoop(func() { w.leases(runCtx) })
	for _, r := range w.relays {
		w.goLoop(func() { r.relay(runCtx) })
	}
	if w.expiry != nil {
		w.goLoop(func() { _ = w.expiry.Run(runCtx) })
		w.goLoop(func() { w.claimExpired(runCtx) })
	}
	w.log.Info("worker started", "heartbeat", w.opts.Subjects.Heartbeat(), "disconnect", w.opts.Subjects.Disconnect(), "queue", w.opts.Queue)
	return nil
}

func (w *Worker) goLoop(f func()) {
	w.loops.Add(1)
	go func() {
		defer w.loops.Done()
		f()
	}()
}

// Stop drains the subscriptions (messages already received are handled),
// finishes the batches in flight, stops the loops after the relay's current
// publish, and leaves the outbox group. Bounded by ctx: what is not stored
// by then is answered "shutting down".
func (w *Worker) Stop(ctx context.Context) error {
	if !w.stopped.CompareAndSwap(false, true) {
		return nil
	}
	var errs []error
	w.subsMu.Lock()
	subs, draining := w.subs, w.draining
	w.subs, w.draining = nil, nil
	w.subsMu.Unlock()
	for _, sub := range subs {
		if err := drain(ctx, sub); err != nil {
			// Out of time: stop taking messages; those still on their way
			// are dropped (their senders time out and retry).
			errs = append(errs, err)
			_ = sub.Unsubscribe()
		}
	}
	// Subscriptions left while Redis was unavailable may still deliver
	// what the server had routed to them.
	for _, sub := range draining {
		if err := waitDrained(ctx, sub); err != nil {
			errs = append(errs, err)
			_ = sub.Unsubscribe()
		}
	}
	// Nothing more arrives: the intake is emptied into the executors, which
	// finish what they hold, then return.
	close(w.closing)
	done := make(chan struct{})
	go func() {
		w.intakeDone.Wait()
		w.execs.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		close(w.abort)
		errs = append(errs, fmt.Errorf("finish batches in flight: %w", ctx.Err()))
	}
	if w.cancel != nil {
		w.cancel()
	}
	if err := wait(ctx, &w.loops); err != nil {
		errs = append(errs, fmt.Errorf("stop loops: %w", err))
	}
	for _, r := range w.relays {
		if err := r.outbox.Leave(ctx); err != nil {
			r.log.Warn("leave outbox group", "err", err)
		}
	}
	w.log.Info("worker stopped")
	return errors.Join(errs...)
}

// waitDrained waits until a subscription whose drain has started is done.
func waitDrained(ctx context.Context, sub *nats.Subscription) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for sub.IsValid() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain %s: %w", sub.Subject, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// drain stops sub taking messages and waits until those it holds are handled.
func drain(ctx context.Context, sub *nats.Subscription) error {
	if err := sub.Drain(); err != nil {
		if errors.Is(err, nats.ErrBadSubscription) || errors.Is(err, nats.ErrConnectionClosed) {
			return nil
		}
		return fmt.Errorf("drain %s: %w", sub.Subject, err)
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for sub.IsValid() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain %s: %w", sub.Subject, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func wait(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// IntakeBytes returns the bytes of received messages waiting to be decoded
// now and the most held at once (bounded by Options.IntakeBytes).
func (w *Worker) IntakeBytes() (now, high int64) { return w.in.held() }

// IntakeDropped returns how many messages the intake dropped because it
// held Options.IntakeBytes already.
func (w *Worker) IntakeDropped() int64 { return w.in.dropped.Load() }

// canClaim: a replica that cannot receive heartbeats (NATS disconnected, or
// out of the queue group while Redis was unavailable) must not declare
// anyone offline: they may be heartbeating into the void. Once it is back,
// its first sweep sees the gap and grants grace (see presence.Store.Sweep).
func (w *Worker) canClaim() bool { return w.bus.Connected() && !w.storeDown.Load() }

// Ready reports whether the worker can do its job now: NATS connected and,
// when configured, the expiry subscription up.
func (w *Worker) Ready() error {
	if !w.bus.Connected() {
		return errors.New("nats disconnected")
	}
	if w.storeDown.Load() {
		return errors.New("redis unavailable: out of the queue group until it answers")
	}
	if w.expiry != nil && !w.expiry.Connected() {
		return errors.New("redis expiry subscription down")
	}
	return nil
}

// sampler allows one log line per second, so a flood of bad input cannot
// flood the log; it reports how many lines it suppressed meanwhile.
type sampler struct {
	next       atomic.Int64
	suppressed atomic.Int64
}

func (s *sampler) allow() (bool, int64) {
	now := time.Now().UnixNano()
	n := s.next.Load()
	if now < n || !s.next.CompareAndSwap(n, now+int64(time.Second)) {
		s.suppressed.Add(1)
		return false, 0
	}
	return true, s.suppressed.Swap(0)
}
