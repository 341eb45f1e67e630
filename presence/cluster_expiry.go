package presence

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterExpiry is the expiry fast path on a Redis Cluster. Keyspace
// events are node-local, so it keeps an ExpiryListener (a PSUBSCRIBE of its
// own, with the keyspace flags merged in on every connect) on every master,
// and follows the topology: every HealthInterval it asks the cluster for
// its masters (CLUSTER SLOTS) and subscribes on a new one (a replica
// promoted by a failover, a master added), and unsubscribes from a node
// that no longer is one. All listeners deliver into one channel. As on one
// server, the sweep of every partition is the source of truth; events a
// listener misses (during a failover, before it subscribes to a new
// master) only make those offlines later.
type ClusterExpiry struct {
	rdb  *redis.ClusterClient
	node func(addr string) *redis.Client
	opts ExpiryOptions
	log  *slog.Logger
	ids  chan string

	mu   sync.Mutex
	subs map[string]*nodeSub // by master address
	// counters of the listeners stopped, so the totals never go back
	stoppedReconnects, stoppedDropped atomic.Int64
}

type nodeSub struct {
	l      *ExpiryListener
	rdb    *redis.Client
	cancel context.CancelFunc
	done   chan struct{}
}

// NewClusterExpiry returns the fast path of the cluster rdb; node returns
// a new client of the server at addr (the cluster's credentials and TLS),
// which the ClusterExpiry uses for one listener and closes. opts.KeyID
// selects the keys (ClusterKeyID); opts.MasterAddr is not used. It does no
// I/O until Run.
func NewClusterExpiry(rdb *redis.ClusterClient, node func(addr string) *redis.Client, opts ExpiryOptions) *ClusterExpiry {
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	opts.MasterAddr = nil
	return &ClusterExpiry{rdb: rdb, node: node, opts: opts, log: opts.Logger, ids: make(chan string, 16*ChunkSize), subs: map[string]*nodeSub{}}
}

// ClusterKeyID returns the KeyID of a Cluster's deadline keys under
// prefix: "<prefix>{<tag>}:user:<id>" gives id.
func ClusterKeyID(prefix string) func(string) (string, bool) {
	return func(key string) (string, bool) {
		rest, ok := strings.CutPrefix(key, prefix+"{")
		if !ok {
			return "", false
		}
		i := strings.Index(rest, "}:user:")
		if i <= 0 {
			return "", false
		}
		id := rest[i+len("}:user:"):]
		return id, id != ""
	}
}

// Expired delivers the user ids of expired deadline keys of every master.
func (c *ClusterExpiry) Expired() <-chan string { return c.ids }

// Connected reports whether a subscription is established on every master
// known.
func (c *ClusterExpiry) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.subs) == 0 {
		return false
	}
	for _, s := range c.subs {
		if !s.l.Connected() {
			return false
		}
	}
	return true
}

// Masters returns the addresses of the masters subscribed to.
func (c *ClusterExpiry) Masters() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.subs))
	for a := range c.subs {
		out = append(out, a)
	}
	return out
}

// Reconnects returns how many times a subscription was re-established.
func (c *ClusterExpiry) Reconnects() int64 {
	return c.total(&c.stoppedReconnects, (*ExpiryListener).Reconnects)
}

// Dropped returns how many expired ids were left to the sweep.
func (c *ClusterExpiry) Dropped() int64 {
	return c.total(&c.stoppedDropped, (*ExpiryListener).Dropped)
}

// total is a counter of the listeners stopped plus f of those running.
func (c *ClusterExpiry) total(stopped *atomic.Int64, f func(*ExpiryListener) int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := stopped.Load()
	for _, s := range c.subs {
		n += f(s.l)
	}
	return n
}

// Run follows the masters until ctx is done, then stops every listener and
// returns ctx.Err().
func (c *ClusterExpiry) Run(ctx context.Context) error {
	t := time.NewTicker(c.opts.HealthInterval)
	defer t.Stop()
	defer c.stopAll()
	for {
		c.follow(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// follow subscribes on the masters the cluster names now and unsubscribes
// from the nodes it no longer names. When the cluster does not answer,
// the subscriptions stay as they are.
func (c *ClusterExpiry) follow(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, c.opts.HealthInterval)
	slots, err := c.rdb.ClusterSlots(qctx).Result()
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			c.log.Debug("cannot list the cluster's masters; expiry subscriptions unchanged", "err", err)
		}
		return
	}
	masters := map[string]bool{}
	for _, s := range slots {
		if len(s.Nodes) > 0 && s.Nodes[0].Addr != "" {
			masters[s.Nodes[0].Addr] = true
		}
	}
	c.mu.Lock()
	var gone []*nodeSub
	for addr, s := range c.subs {
		if !masters[addr] {
			c.log.Info("expiry subscription leaves a node that is no longer a master", "server", addr)
			s.cancel()
			c.retire(addr, s)
			gone = append(gone, s)
		}
	}
	for addr := range masters {
		if _, ok := c.subs[addr]; ok {
			continue
		}
		rdb := c.node(addr)
		l := NewExpiryListener(rdb, c.opts)
		l.ids = c.ids
		sctx, scancel := context.WithCancel(ctx)
		s := &nodeSub{l: l, rdb: rdb, cancel: scancel, done: make(chan struct{})}
		go func() {
			defer close(s.done)
			_ = l.Run(sctx)
		}()
		c.subs[addr] = s
	}
	c.mu.Unlock()
	// Waited for outside the lock: a listener on a node that hangs may take
	// its read timeout to notice the cancellation.
	for _, s := range gone {
		c.finish(s)
	}
}

// retire removes a cancelled listener from subs, keeping its counts (under
// c.mu, so the totals never go back).
func (c *ClusterExpiry) retire(addr string, s *nodeSub) {
	c.stoppedReconnects.Add(s.l.Reconnects())
	c.stoppedDropped.Add(s.l.Dropped())
	delete(c.subs, addr)
}

// finish waits for a cancelled listener to end and closes its client.
func (c *ClusterExpiry) finish(s *nodeSub) {
	<-s.done
	_ = s.rdb.Close()
}

func (c *ClusterExpiry) stopAll() {
	c.mu.Lock()
	subs := make([]*nodeSub, 0, len(c.subs))
	for addr, s := range c.subs {
		s.cancel()
		c.retire(addr, s)
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		c.finish(s)
	}
}
