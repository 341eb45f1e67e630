// Package seedbaseline is the seed's presence algorithm (the NestJS
// PresenceRepository of /work/shared/seed/redis-storage.md), ported as
// literally as Go allows, so the benchmark can drive the same scenarios
// through it and through presenced in one run and compare.
//
// Per heartbeat id: SET presence:user:{id} 1 EX ttl NX; "OK" publishes
// presence.online, otherwise SET ... EX ttl refreshes. Per disconnect id: DEL;
// 1 publishes presence.offline (reason "disconnect"). Offline on expiry
// comes only from keyspace events: CONFIG SET notify-keyspace-events Ex (the
// seed's call, which replaces whatever flags were set) and PSUBSCRIBE
// __keyevent@<db>__:expired on a duplicated connection; every expired
// presence key publishes presence.offline (reason "expired"). Queries are an
// EXISTS per id (one pipeline for many ids) and a SCAN MATCH loop.
//
// There is no deadline index, no outbox and no coordination between
// replicas: that is the point of the baseline. In particular every replica
// receives every keyspace event, so with n replicas each expiry is published
// n times; and a key Redis has not yet noticed is expired produces no event
// until it does.
//
// It is a benchmark baseline, not a product: it accepts any non-empty id.
package seedbaseline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
)

// Options configures a Worker. Zero values take the documented defaults.
type Options struct {
	// KeyPrefix is the prefix of the presence keys' names; a user's key is
	// KeyPrefix+"user:"+id. Zero means "presence:" (the seed's).
	KeyPrefix string
	// Subjects; zero means prefix "presence".
	Subjects contract.Subjects
	// Queue is the NATS queue group of the heartbeat and disconnect
	// subscriptions; zero means "seed".
	Queue string
	// TTL of a presence key, rounded up to whole seconds (the seed uses EX);
	// zero means 60s.
	TTL time.Duration
	// Concurrency is how many messages are handled at once, each with its
	// own Redis round trips. The seed is a Node.js service whose message
	// handlers are async, so many are in flight at once; zero means 32.
	Concurrency int
	// PendingLimit is how many received messages each subscription holds
	// while the handlers are busy before NATS drops the next ones (and
	// Dropped counts them). Zero means 65536 (with 64 MiB); negative means
	// no limit, as the Node seed, whose client buffered without bound.
	PendingLimit int
	// DB is the Redis database of the presence keys (for the keyevent
	// channel name).
	DB     int
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.KeyPrefix == "" {
		o.KeyPrefix = "presence:"
	}
	if o.Subjects.Prefix == "" {
		o.Subjects.Prefix = "presence"
	}
	if o.Queue == "" {
		o.Queue = "seed"
	}
	if o.TTL <= 0 {
		o.TTL = 60 * time.Second
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 32
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Worker is the seed's presence service: the heartbeat and disconnect
// subscribers and the expired-key subscriber. Start it once, stop it once.
type Worker struct {
	rdb  *redis.Client
	sub  *redis.Client
	nc   *nats.Conn
	opts Options
	ttl  time.Duration
	log  *slog.Logger

	msgs    chan *nats.Msg
	subs    []*nats.Subscription
	ps      *redis.PubSub
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped atomic.Bool
	ready   atomic.Bool

	// Counters, for the benchmark's sanity checks.
	Online   atomic.Int64 // online events published
	Offline  atomic.Int64 // offline events published (expired and disconnect)
	Failures atomic.Int64 // Redis or NATS errors
}

// New returns a Worker using rdb for commands, sub (a client of its own,
// the seed's redis.duplicate()) for the keyspace subscription and nc for
// NATS. It does no I/O until Start and closes none of them.
func New(rdb, sub *redis.Client, nc *nats.Conn, opts Options) *Worker {
	opts = opts.withDefaults()
	ttl := opts.TTL.Round(time.Second)
	if ttl < opts.TTL {
		ttl += time.Second
	}
	return &Worker{
		rdb: rdb, sub: sub, nc: nc, opts: opts, ttl: ttl, log: opts.Logger,
		msgs: make(chan *nats.Msg, 4*opts.Concurrency),
	}
}

// Key is a user's presence key.
func (w *Worker) Key(id string) string { return w.opts.KeyPrefix + "user:" + id }

// Dropped returns how many messages NATS dropped because a subscription
// held PendingLimit messages, summed over the heartbeat and disconnect
// subscriptions while they are open (0 before Start and after Stop). Call
// it only after Start returned.
func (w *Worker) Dropped() int64 {
	var n int64
	for _, s := range w.subs {
		if d, err := s.Dropped(); err == nil {
			n += int64(d)
		}
	}
	return n
}

// Ready reports whether Start completed and Stop has not begun.
func (w *Worker) Ready() bool { return w.ready.Load() }

// Start enables keyspace events, subscribes to expired keys and to the
// heartbeat and disconnect subjects, and starts the handlers.
func (w *Worker) Start(ctx context.Context) error {
	// The seed: redis.config('SET', 'notify-keyspace-events', 'Ex').
	if err := w.rdb.ConfigSet(ctx, "notify-keyspace-events", "Ex").Err(); err != nil {
		return fmt.Errorf("enable keyspace events: %w", err)
	}
	w.ps = w.sub.PSubscribe(ctx, fmt.Sprintf("__keyevent@%d__:expired", w.opts.DB))
	if _, err := w.ps.Receive(ctx); err != nil { // the subscription confirmation
		_ = w.ps.Close()
		return fmt.Errorf("subscribe to expired keys: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	expired := w.ps.Channel(redis.WithChannelSize(1 << 16))
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.expired(runCtx, expired)
	}()
	for range w.opts.Concurrency {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for {
				select {
				case m, ok := <-w.msgs:
					if !ok {
						return
					}
					w.handle(runCtx, m)
				case <-runCtx.Done():
					return
				}
			}
		}()
	}
	enqueue := func(m *nats.Msg) {
		select {
		case w.msgs <- m:
		case <-runCtx.Done():
		}
	}
	for _, subject := range []string{w.opts.Subjects.Heartbeat(), w.opts.Subjects.Disconnect()} {
		s, err := w.nc.QueueSubscribe(subject, w.opts.Queue, enqueue)
		if err != nil {
			_ = w.Stop(ctx)
			return fmt.Errorf("subscribe %s: %w", subject, err)
		}
		msgs, bytes := w.opts.PendingLimit, 64<<20
		switch {
		case msgs == 0:
			msgs = 65536
		case msgs < 0:
			msgs, bytes = -1, -1
		}
		if err := s.SetPendingLimits(msgs, bytes); err != nil {
			_ = w.Stop(ctx)
			return fmt.Errorf("set pending limits on %s: %w", subject, err)
		}
		w.subs = append(w.subs, s)
	}
	if err := w.nc.FlushWithContext(ctx); err != nil {
		_ = w.Stop(ctx)
		return fmt.Errorf("flush subscriptions: %w", err)
	}
	w.ready.Store(true)
	return nil
}

// Stop drains the subscriptions, finishes the messages received, and stops
// the expired-key subscriber. Bounded by ctx.
func (w *Worker) Stop(ctx context.Context) error {
	if !w.stopped.CompareAndSwap(false, true) {
		return nil
	}
	w.ready.Store(false)
	var errs []error
	for _, s := range w.subs {
		if err := s.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, err)
		}
	}
	drained := true
	for _, s := range w.subs {
		for s.IsValid() && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		if s.IsValid() {
			drained = false
		}
	}
	if drained {
		close(w.msgs) // no callback can send any more: the handlers finish what is queued
	} else if w.cancel != nil {
		w.cancel() // a callback may still send: abandon the queue instead
	}
	if w.ps != nil {
		_ = w.ps.Close() // ends the channel the expired loop reads
	}
	done := make(chan struct{})
	go func() {
		w.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("stop seed worker: %w", ctx.Err()))
	}
	if w.cancel != nil {
		w.cancel()
	}
	return errors.Join(errs...)
}

// request is both shapes the bench sends: {"userId":".."} (the seed's) and
// {"userIds":[..]}, whose ids are handled one by one exactly as if each had
// come in its own message.
type request struct {
	UserID  string   `json:"userId"`
	UserIDs []string `json:"userIds"`
}

func (w *Worker) handle(ctx context.Context, m *nats.Msg) {
	var req request
	if err := json.Unmarshal(m.Data, &req); err != nil {
		w.reply(m, 0, "malformed message")
		return
	}
	ids := req.UserIDs
	if req.UserID != "" {
		ids = append(ids, req.UserID)
	}
	disconnect := strings.HasSuffix(m.Subject, ".disconnect")
	n := 0
	var failed error
	for _, id := range ids {
		if id == "" {
			continue
		}
		var err error
		if disconnect {
			err = w.markOffline(ctx, id)
		} else {
			err = w.ping(ctx, id)
		}
		if err != nil {
			w.Failures.Add(1)
			failed = err
			continue
		}
		n++
	}
	msg := ""
	if failed != nil {
		msg = "store unavailable: " + failed.Error()
	}
	w.reply(m, n, msg)
}

// ping is the seed's heartbeat: setOnline (SET NX EX), and when the key was
// already there, refreshOnline (SET EX).
func (w *Worker) ping(ctx context.Context, id string) error {
	key := w.Key(id)
	ok, err := w.rdb.SetNX(ctx, key, "1", w.ttl).Result()
	if err != nil {
		return fmt.Errorf("set online %q: %w", id, err)
	}
	if ok {
		w.publish(contract.StatusOnline, id, contract.ReasonHeartbeat)
		return nil
	}
	if err := w.rdb.Set(ctx, key, "1", w.ttl).Err(); err != nil {
		return fmt.Errorf("refresh online %q: %w", id, err)
	}
	return nil
}

// markOffline is the seed's disconnect: DEL, and an offline event when the
// key was there.
func (w *Worker) markOffline(ctx context.Context, id string) error {
	n, err := w.rdb.Del(ctx, w.Key(id)).Result()
	if err != nil {
		return fmt.Errorf("delete online %q: %w", id, err)
	}
	if n == 1 {
		w.publish(contract.StatusOffline, id, contract.ReasonDisconnect)
	}
	return nil
}

// expired publishes an offline event for each expired presence key, until
// the subscription is closed or ctx is done.
func (w *Worker) expired(ctx context.Context, ch <-chan *redis.Message) {
	prefix := w.opts.KeyPrefix + "user:"
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			if id, ok := strings.CutPrefix(m.Payload, prefix); ok {
				w.publish(contract.StatusOffline, id, contract.ReasonExpired)
			}
		}
	}
}

// publish sends an event in presenced's wire format, so the bench decodes
// both alike; version and at are this process's clock (the seed had neither).
func (w *Worker) publish(status contract.Status, id string, reason contract.Reason) {
	now := time.Now()
	ev := contract.Event{UserID: id, Status: status, Reason: reason, At: now, Version: now.UnixMicro()}
	data, err := ev.MarshalJSON()
	if err == nil {
		err = w.nc.Publish(w.opts.Subjects.Event(status), data)
	}
	if err != nil {
		w.Failures.Add(1)
		w.log.Warn("publish event", "status", status, "err", err)
		return
	}
	if status == contract.StatusOnline {
		w.Online.Add(1)
	} else {
		w.Offline.Add(1)
	}
}

func (w *Worker) reply(m *nats.Msg, accepted int, errMsg string) {
	if m.Reply == "" {
		return
	}
	b := make([]byte, 0, 64)
	b = append(b, `{"accepted":`...)
	b = strconv.AppendInt(b, int64(accepted), 10)
	b = append(b, `,"rejected":[]`...)
	if errMsg != "" {
		b = append(b, `,"error":`...)
		b = strconv.AppendQuote(b, errMsg)
	}
	b = append(b, '}')
	_ = m.Respond(b)
}
