package presence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/go-redis/v9"
)

// ExpiryListener is the fast path from key expiry to offline: it keeps a
// PSUBSCRIBE to __keyevent@<db>__:expired on its own connection and delivers
// the user ids of expired presence keys on Expired() (the consumer runs the
// atomic claim). Keyspace events are fire-and-forget, node-local and late when
// Redis holds many keys, so they only make offline faster: the sweep is the
// source of truth and catches everything this misses.
//
// On every (re)connect it merges "Ex" into the server's
// notify-keyspace-events flags (a restarted Redis forgets them), never
// clobbering flags already set. If CONFIG is forbidden (managed Redis), it
// warns once and keeps listening in case the operator enabled the flags.
// It reconnects with exponential backoff and never gives up.
type ExpiryListener struct {
	rdb     *redis.Client // dedicated: a subscribed connection can do nothing else
	channel string
	prefix  string
	log     *slog.Logger

	ids           chan string // expired ids waiting for the claimer
	connected     atomic.Bool
	reconnects    atomic.Int64
	dropped       atomic.Int64
	configDenied  atomic.Bool
	healthTimeout time.Duration
}

// ExpiryOptions configures an ExpiryListener.
type ExpiryOptions struct {
	// DB is the Redis database number of the presence keys.
	DB int
	// UserPrefix selects the expired keys of interest ("presence:user:").
	UserPrefix string
	// HealthInterval is how long the connection may be silent before it is
	// pinged; zero means 5s. A ping unanswered within it forces a reconnect,
	// which catches half-open connections.
	HealthInterval time.Duration
	Logger         *slog.Logger
}

// NewExpiryListener returns a listener that subscribes through rdb, which it
// uses exclusively (create it with redis.NewClient(base.Options()), the
// seed's duplicate()). It does no I/O until Run.
func NewExpiryListener(rdb *redis.Client, opts ExpiryOptions) *ExpiryListener {
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &ExpiryListener{
		rdb:           rdb,
		channel:       fmt.Sprintf("__keyevent@%d__:expired", opts.DB),
		prefix:        opts.UserPrefix,
		log:           opts.Logger,
		healthTimeout: opts.HealthInterval,
		ids:           make(chan string, 16*ChunkSize),
	}
}

// Expired delivers the user ids of expired presence keys. It is buffered;
// when the consumer falls behind, ids are dropped (and counted): the sweep
// claims those users instead.
func (l *ExpiryListener) Expired() <-chan string { return l.ids }

// Dropped returns how many expired ids were left to the sweep because the
// claimer was behind.
func (l *ExpiryListener) Dropped() int64 { return l.dropped.Load() }

// Connected reports whether the subscription is established now.
func (l *ExpiryListener) Connected() bool { return l.connected.Load() }

// Reconnects returns how many times the subscription was re-established
// after being lost.
func (l *ExpiryListener) Reconnects() int64 { return l.reconnects.Load() }

// Run subscribes and delivers expired ids until ctx is done, reconnecting
// with exponential backoff (capped at 5s) after any failure. It returns
// ctx.Err() when ctx is done. Run may be called once.
func (l *ExpiryListener) Run(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 50 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0 // never give up
	first := true
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		err := l.session(ctx, func() {
			bo.Reset()
			if !first {
				l.reconnects.Add(1)
			}
			first = false
		})
		l.connected.Store(false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := bo.NextBackOff()
		l.log.Warn("expiry subscription lost, reconnecting", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// session runs one subscription until it fails.
func (l *ExpiryListener) session(ctx context.Context, established func()) error {
	if err := l.ensureNotifications(ctx); err != nil {
		return err
	}
	ps := l.rdb.PSubscribe(ctx, l.channel)
	defer ps.Close()
	// go-redis does not abort a blocked read on ctx; closing the PubSub does.
	defer context.AfterFunc(ctx, func() { _ = ps.Close() })()
	// The first reply confirms the subscription.
	if _, err := ps.ReceiveTimeout(ctx, l.healthTimeout); err != nil {
		return fmt.Errorf("psubscribe %s: %w", l.channel, err)
	}
	established()
	l.connected.Store(true)
	l.log.Info("expiry subscription established", "channel", l.channel)
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, l.healthTimeout)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() && !pinged {
				// Silence: ping once; no pong within the next interval means
				// the connection is dead even if TCP has not noticed.
				if perr := ps.Ping(ctx); perr != nil {
					return fmt.Errorf("ping subscription: %w", perr)
				}
				pinged = true
				continue
			}
			return fmt.Errorf("receive expiry events: %w", err)
		}
		pinged = false
		m, ok := msg.(*redis.Message)
		if !ok {
			continue // pong or subscription confirmation
		}
		if id, ok := strings.CutPrefix(m.Payload, l.prefix); ok {
			select {
			case l.ids <- id:
			default:
				// The claimer is behind: the sweep claims this user instead.
				l.dropped.Add(1)
			}
		}
	}
}

// ensureNotifications merges "Ex" into notify-keyspace-events.
func (l *ExpiryListener) ensureNotifications(ctx context.Context) error {
	cur, err := l.rdb.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		if isConfigDenied(err) {
			l.warnConfigDenied(err)
			return nil
		}
		return fmt.Errorf("read notify-keyspace-events: %w", err)
	}
	flags := cur["notify-keyspace-events"]
	merged := MergeNotifyFlags(flags)
	if merged == flags {
		return nil
	}
	if err := l.rdb.ConfigSet(ctx, "notify-keyspace-events", merged).Err(); err != nil {
		if isConfigDenied(err) {
			l.warnConfigDenied(err)
			return nil
		}
		return fmt.Errorf("set notify-keyspace-events: %w", err)
	}
	l.log.Info("enabled expired keyspace events", "was", flags, "now", merged)
	return nil
}

func (l *ExpiryListener) warnConfigDenied(err error) {
	if l.configDenied.CompareAndSwap(false, true) {
		l.log.Warn("cannot configure notify-keyspace-events (CONFIG denied); offline events rely on the sweep unless the operator sets 'Ex'", "err", err)
	}
}

func isConfigDenied(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "NOPERM") || strings.Contains(s, "unknown command") || strings.HasPrefix(s, "ERR unknown") || strings.Contains(s, "renamed")
}

// MergeNotifyFlags returns flags with expired events on keyevent channels
// enabled ("E" and "x"), keeping every flag already set. "A" already implies
// "x".
func MergeNotifyFlags(flags string) string {
	out := flags
	if !strings.ContainsRune(out, 'E') {
		out += "E"
	}
	if !strings.ContainsRune(out, 'x') && !strings.ContainsRune(out, 'A') {
		out += "x"
	}
	return out
}
