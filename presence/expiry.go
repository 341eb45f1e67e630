package presence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
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
//
// With Sentinel (ExpiryOptions.MasterAddr set, rdb a failover client) it
// also follows the master: go-redis's failover client drops its command
// connections to a master the sentinels replaced, but not a subscribed
// connection, and the old master, when it is still up, keeps it until the
// sentinels reconfigure it as a replica (they close its subscribers then),
// which takes until they next poll it (about 10 s), or until a partition
// that isolated it heals. Meanwhile the keys expire on the new master and
// the subscription hears nothing. So every HealthInterval the listener asks
// MasterAddr for the master the sentinels name and compares it with the
// server of its subscribed connection; when they differ it closes the
// subscription, which reconnects through the failover client to the master
// the sentinels name (and merges the flags there).
type ExpiryListener struct {
	rdb        *redis.Client // dedicated: a subscribed connection can do nothing else
	channel    string
	prefix     string
	keyID      func(string) (string, bool)
	log        *slog.Logger
	masterAddr func(context.Context) (string, error)
	subAddr    atomic.Pointer[string] // the server of the subscribed connection, with masterAddr

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
	// KeyID, when set, replaces UserPrefix: it returns the user id of an
	// expired key of interest (ok false for any other key). The
	// partitions of a Cluster name their deadline keys with a hash tag.
	KeyID func(key string) (id string, ok bool)
	// HealthInterval is how long the connection may be silent before it is
	// pinged; zero means 5s. A ping unanswered within it forces a reconnect,
	// which catches half-open connections.
	HealthInterval time.Duration
	// MasterAddr, with Sentinel, returns the address (host:port) of the
	// master the sentinels name now. Every HealthInterval the listener
	// compares it with the server its subscription is on and resubscribes
	// when they differ. Nil (one server) disables the check.
	MasterAddr func(context.Context) (string, error)
	Logger     *slog.Logger
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
	l := &ExpiryListener{
		rdb:           rdb,
		channel:       fmt.Sprintf("__keyevent@%d__:expired", opts.DB),
		prefix:        opts.UserPrefix,
		keyID:         opts.KeyID,
		log:           opts.Logger,
		masterAddr:    opts.MasterAddr,
		healthTimeout: opts.HealthInterval,
		ids:           make(chan string, 16*ChunkSize),
	}
	if l.masterAddr != nil {
		rdb.AddHook(subDialHook{l})
	}
	return l
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
	// The subscription's dials (and redials) carry this mark, so that the
	// hook records which server the subscription is on.
	ctx, cancel := context.WithCancel(context.WithValue(ctx, subDialKey{}, true))
	defer cancel()
	l.subAddr.Store(nil)
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
	l.log.Info("expiry subscription established", "channel", l.channel, "server", l.server())
	var moved atomic.Pointer[error]
	if l.masterAddr != nil {
		go l.followMaster(ctx, func(err error) {
			moved.Store(&err)
			_ = ps.Close()
		})
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, l.healthTimeout)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if m := moved.Load(); m != nil {
				return *m
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
		if id, ok := l.userID(m.Payload); ok {
			select {
			case l.ids <- id:
			default:
				// The claimer is behind: the sweep claims this user instead.
				l.dropped.Add(1)
			}
		}
	}
}

// userID returns the user id of an expired key, ok false for a key that
// is not a presence key.
func (l *ExpiryListener) userID(key string) (string, bool) {
	if l.keyID != nil {
		return l.keyID(key)
	}
	return strings.CutPrefix(key, l.prefix)
}

// followMaster checks every healthTimeout, until ctx is done, that the
// subscription is on the master the sentinels name, and calls moved (once)
// when it is not. A check that fails (no sentinel answers, a name that does
// not resolve) changes nothing: the subscription stays where it is.
func (l *ExpiryListener) followMaster(ctx context.Context, moved func(error)) {
	t := time.NewTicker(l.healthTimeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		on := l.server()
		if on == "" {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, l.healthTimeout)
		master, err := l.masterAddr(cctx)
		same := true
		if err == nil {
			same, err = sameServer(cctx, on, master)
		}
		cancel()
		switch {
		case err != nil:
			if ctx.Err() == nil {
				l.log.Debug("cannot check the expiry subscription's server against the master", "err", err)
			}
		case !same:
			moved(fmt.Errorf("expiry subscription on %s, but the sentinels name %s the master", on, master))
			return
		}
	}
}

// server returns the address of the server the subscription is on, "" when
// unknown (without MasterAddr, or before the dial).
func (l *ExpiryListener) server() string {
	if p := l.subAddr.Load(); p != nil {
		return *p
	}
	if l.masterAddr == nil {
		return l.rdb.Options().Addr
	}
	return ""
}

// sameServer reports whether conn, the remote address of a connection
// (ip:port), is the server at addr (host:port, host an IP or a name, which
// is resolved).
func sameServer(ctx context.Context, conn, addr string) (bool, error) {
	ch, cp, err := net.SplitHostPort(conn)
	if err != nil {
		return false, err
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return false, err
	}
	if cp != p {
		return false, nil
	}
	ip, err := netip.ParseAddr(ch)
	if err != nil {
		return false, err
	}
	ips := []string{h}
	if _, err := netip.ParseAddr(h); err != nil {
		if ips, err = net.DefaultResolver.LookupHost(ctx, h); err != nil {
			return false, err
		}
	}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Unmap() == ip.Unmap() {
			return true, nil
		}
	}
	return false, nil
}

// subDialKey marks the context of the subscription's dials.
type subDialKey struct{}

// subDialHook records the remote address of the subscription's connection.
type subDialHook struct{ l *ExpiryListener }

func (h subDialHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		cn, err := next(ctx, network, addr)
		if err == nil && ctx.Value(subDialKey{}) != nil {
			a := cn.RemoteAddr().String()
			h.l.subAddr.Store(&a)
		}
		return cn, err
	}
}

func (subDialHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (subDialHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
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
