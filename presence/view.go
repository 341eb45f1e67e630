package presence

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
)

// View is an in-memory copy of who has an open session, kept by following
// the outbox stream, so that an online query of many ids is answered by
// lookups in memory instead of a Redis MGET (10k ids: about 0.3 ms against
// 14-18 ms of MGET when Redis holds a few million keys).
//
// It is built by reading the outbox's position, then every sessions shard
// (Store.List), then applying every outbox entry after that position in
// stream order. Entries are written by the same script calls that change
// the sessions, in the order Redis ran them, so applying them in order from
// any position read before the snapshot ends in the sessions' current state.
// A view that falls behind the outbox's retention (Options.OutboxRetention),
// sees the data set replaced (its epoch changes), or loses Redis, reads the
// sessions again; meanwhile, and whenever it cannot catch up quickly, queries
// go to Redis.
//
// An answer reflects every transition committed before the query started:
// the query reads the version clock and waits until the view has applied
// that version. "Online" here means an open session: a user whose key has
// lapsed stays online until its offline event (the sweep's claim, at most
// about half a second later), as downstream consumers of the events see it.
//
// Status, List and Count read Redis, through the store, so a View serves
// every query of the query service; it exposes none of the store's writes.
type View struct {
	store viewStore
	rdb   redis.UniversalClient // the outbox, the version clock, the epoch and the floor
	keys  Keys
	// CatchUp bounds how long a query waits for the view to apply the
	// transitions committed before it; zero means CatchUpTimeout. Set it
	// before the view is used.
	CatchUp time.Duration

	log   *slog.Logger
	ready chan struct{} // closed once the first snapshot is applied (tests)

	// Users are held by two independent seeded 64-bit hashes of their id
	// (127 bits used): no allocation per user, nothing for the garbage
	// collector to scan, 16 bytes a key. Two ids share a key with
	// probability about n^2 / 2^128 (n users online): never, in practice.
	seed0, seed1 maphash.Seed

	mu      sync.RWMutex
	online  idSet
	applied int64         // version of the last event applied
	synced  bool          // false while (re)building
	changed chan struct{} // closed and replaced whenever applied moves
	epoch   epoch         // the data set the view holds (zero: none yet)
	readyOK sync.Once

	fromView, fromRedis, builds atomic.Int64
}

// viewStore is what the view asks the store: the listing it builds from,
// and the queries it does not answer from memory.
type viewStore interface {
	List(ctx context.Context, cursor string, limit int) (Page, error)
	GetOnlineUsers(ctx context.Context, ids []string) ([]string, error)
	Status(ctx context.Context, id string) (Status, error)
	Count(ctx context.Context) (int64, error)
	Gateway(ctx context.Context, gateway string) (GatewayStatus, error)
}

var _ viewStore = (*Store)(nil)

// ViewStats are the view's counters.
type ViewStats struct {
	FromView  int64 // online queries answered by the view
	FromRedis int64 // online queries answered by Redis (view not built, or behind)
	Builds    int64 // times the view read every session
}

// Stats returns the view's counters.
func (v *View) Stats() ViewStats {
	return ViewStats{FromView: v.fromView.Load(), FromRedis: v.fromRedis.Load(), Builds: v.builds.Load()}
}

// key returns id's key; never the zero key (a free slot of the set).
func (v *View) key(id string) idKey {
	return idKey{maphash.String(v.seed0, id), maphash.String(v.seed1, id) | 1}
}

// CatchUpTimeout is the default View.CatchUp: after waiting that long for
// the view, a query asks Redis instead.
const CatchUpTimeout = 250 * time.Millisecond

// NewView returns a view of s; Run keeps it. s should have an
// OutboxRetention of a few seconds at least (every replica's trim keeps
// entries that long).
func NewView(s *Store, log *slog.Logger) *View {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &View{store: s, rdb: s.rdb, keys: s.keys, log: log, online: newIDSet(0), changed: make(chan struct{}), ready: make(chan struct{}),
		seed0: maphash.MakeSeed(), seed1: maphash.MakeSeed()}
}

// Ready is closed once the view has read the sessions for the first time.
func (v *View) Ready() <-chan struct{} { return v.ready }

// Len is the number of users the view holds online.
func (v *View) Len() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.online.len()
}

// errResync asks Run to read the sessions again.
var errResync = errors.New("view must be rebuilt")

// Run builds the view and follows the outbox until ctx is done, rebuilding
// it (with backoff while Redis fails) whenever it cannot follow.
func (v *View) Run(ctx context.Context) {
	// Rebuilds back off (0.1 s doubling to 30 s) unless the view followed
	// for a while since the last one: a view that cannot keep up (Redis or
	// this process starved for CPU) must not add a full read of the
	// sessions every few seconds to the load that made it fall behind.
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = 100*time.Millisecond, 30*time.Second, 0
	for ctx.Err() == nil {
		last, err := v.rebuild(ctx)
		if err == nil {
			started := time.Now()
			err = v.follow(ctx, last)
			if time.Since(started) > time.Minute {
				b.Reset()
			}
		}
		v.setSynced(false)
		if ctx.Err() != nil {
			return
		}
		d := b.NextBackOff()
		if errors.Is(err, errResync) {
			v.log.Warn("query view fell behind or the data set changed; online queries go to redis until it is rebuilt", "err", err, "rebuild_in", d)
		} else {
			v.log.Warn("query view failed; online queries go to redis until it is rebuilt", "err", err, "rebuild_in", d)
		}
		sleepCtx(ctx, d)
	}
}

func (v *View) setSynced(ok bool) {
	v.mu.Lock()
	v.synced = ok
	v.mu.Unlock()
}

// rebuild reads the outbox position, then the version clock, then every
// open session, and returns the position to follow from. In that order, a
// script that runs between the reads has its entry after the position (so
// it is applied) or its version under the clock read; either way the view
// reaches the clock.
func (v *View) rebuild(ctx context.Context) (string, error) {
	start := time.Now()
	var epochCmd, clock *redis.StringCmd
	var tail *redis.XMessageSliceCmd
	_, _ = v.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		tail = p.XRevRangeN(ctx, v.keys.Outbox(), "+", "-", 1)
		clock = p.Get(ctx, v.keys.Clock())
		epochCmd = p.Get(ctx, v.keys.Epoch())
		return nil
	})
	for _, err := range []error{tail.Err(), clock.Err(), epochCmd.Err()} {
		if err != nil && !errors.Is(err, redis.Nil) {
			return "", fmt.Errorf("read the outbox position: %w", err)
		}
	}
	last := "0-0"
	if msgs := tail.Val(); len(msgs) == 1 {
		last = msgs[0].ID
	}
	applied, _ := strconv.ParseInt(clock.Val(), 10, 64)
	var ep epoch
	if epochCmd.Val() != "" {
		var err error
		if ep, err = parseEpoch(epochCmd.Val()); err != nil {
			return "", fmt.Errorf("read the data set: %w", err)
		}
	}
	online := newIDSet(v.Len())
	for cursor := ""; ; {
		p, err := v.store.List(ctx, cursor, 10000)
		if err != nil {
			return "", err
		}
		for _, id := range p.UserIDs {
			online.add(v.key(id))
		}
		if cursor = p.Cursor; cursor == "" {
			break
		}
	}
	v.mu.Lock()
	v.online, v.applied, v.epoch, v.synced = online, applied, ep, true
	v.broadcast()
	v.mu.Unlock()
	v.builds.Add(1)
	v.readyOK.Do(func() { close(v.ready) })
	v.log.Info("query view built", "online", online.len(), "took", time.Since(start).Round(time.Millisecond))
	return last, nil
}

// broadcast wakes the queries waiting for applied to move; v.mu is held.
func (v *View) broadcast() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// follow applies outbox entries after last, in order, until an error.
func (v *View) follow(ctx context.Context, last string) error {
	floorKey, epochKey, clockKey := v.keys.OutboxFloor(), v.keys.Epoch(), v.keys.Clock()
	for {
		res, err := v.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{v.keys.Outbox(), last}, Count: 64, Block: time.Second}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read the outbox: %w", err)
		}
		// An entry after last that was trimmed before this read was never
		// seen: the floor (the latest trim's MINID) tells. The floor only
		// passes last when the view lags by the retention, so a trim just
		// after this read does not look like a gap.
		vals, err := v.rdb.MGet(ctx, floorKey, epochKey, clockKey).Result()
		if err != nil {
			return fmt.Errorf("read the outbox floor: %w", err)
		}
		if floor, _ := vals[0].(string); floor != "" && streamIDLess(last, floor) {
			return fmt.Errorf("%w: read up to %s, outbox trimmed up to %s", errResync, last, floor)
		}
		var ep epoch
		if s, _ := vals[1].(string); s != "" {
			if ep, err = parseEpoch(s); err != nil {
				return fmt.Errorf("read the data set: %w", err)
			}
		}
		cs, _ := vals[2].(string)
		clock, _ := strconv.ParseInt(cs, 10, 64)
		v.mu.RLock()
		known, applied := v.epoch, v.applied
		v.mu.RUnlock()
		if known != (epoch{}) && ep != known {
			return fmt.Errorf("%w: data set %q replaced by %q", errResync, known, ep)
		}
		if clock < applied {
			// Every version applied was at most the clock when it was
			// read, and the clock only moves up: Redis lost writes the view
			// holds (restarted from an older snapshot).
			return fmt.Errorf("%w: version clock %d below the version applied, %d: redis lost writes", errResync, clock, applied)
		}
		if known == (epoch{}) && ep != (epoch{}) {
			// The data set was created after the build: its reset entry is
			// in what follows.
			v.mu.Lock()
			v.epoch = ep
			v.mu.Unlock()
		}
		if len(res) != 1 || len(res[0].Messages) == 0 {
			continue
		}
		msgs := res[0].Messages
		v.apply(msgs, ep)
		last = msgs[len(msgs)-1].ID
	}
}

// apply applies the events of msgs in order under the lock. It reads the
// entries' lines in place (decodeEntry, decodeLine) rather than building
// Events: a burst of new sessions brings hundreds of thousands of events a
// second, and the view must keep up on a busy replica. A line it cannot
// read is skipped (the relay reports those).
func (v *View) apply(msgs []redis.XMessage, ep epoch) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, m := range msgs {
		entry, ok := decodeEntry(m.Values)
		if !ok {
			continue
		}
		last := entry.first - 1
		for {
			line, more := entry.next()
			if !more {
				break
			}
			last++
			l, ok := decodeLine(line)
			if !ok {
				continue
			}
			switch l.status {
			case contract.StatusOnline:
				v.online.add(v.key(l.user))
			case contract.StatusOffline:
				v.online.remove(v.key(l.user))
			case contract.StatusReset:
				v.online = newIDSet(0)
				v.epoch = ep
			}
		}
		if last > v.applied {
			v.applied = last
		}
	}
	v.broadcast()
}

// Status returns id's presence from Redis (Store.Status): the view holds
// no deadlines or versions.
func (v *View) Status(ctx context.Context, id string) (Status, error) {
	return v.store.Status(ctx, id)
}

// Gateway returns a gateway's lease from Redis (Store.Gateway).
func (v *View) Gateway(ctx context.Context, gateway string) (GatewayStatus, error) {
	return v.store.Gateway(ctx, gateway)
}

// List returns one page of the users online from Redis (Store.List), so
// that its cursors stay valid across replicas.
func (v *View) List(ctx context.Context, cursor string, limit int) (Page, error) {
	return v.store.List(ctx, cursor, limit)
}

// Count returns the number of open sessions from Redis (Store.Count).
func (v *View) Count(ctx context.Context) (int64, error) {
	return v.store.Count(ctx)
}

// GetOnlineUsers returns those of ids with an open session, each once, in
// the order of first appearance, from the view once it has applied every
// transition committed before the call; from Redis (Store.GetOnlineUsers)
// while the view is being built or cannot catch up within CatchUp.
func (v *View) GetOnlineUsers(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	v.mu.RLock()
	synced := v.synced
	v.mu.RUnlock()
	if !synced {
		return v.askRedis(ctx, ids)
	}
	clock, err := v.rdb.Get(ctx, v.keys.Clock()).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("get online users among %d: %w", len(ids), err)
	}
	wait := v.CatchUp
	if wait <= 0 {
		wait = CatchUpTimeout
	}
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		v.mu.RLock()
		if !v.synced {
			v.mu.RUnlock()
			return v.askRedis(ctx, ids)
		}
		if v.applied >= clock {
			online := v.lookup(ids)
			v.mu.RUnlock()
			v.fromView.Add(1)
			return online, nil
		}
		changed := v.changed
		v.mu.RUnlock()
		select {
		case <-changed:
		case <-timeout.C:
			return v.askRedis(ctx, ids)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// lookup returns those of ids in the view, each once, in the order of first
// appearance. The caller holds v.mu.
func (v *View) lookup(ids []string) []string {
	// Every id is hashed first and the table probed in a loop of its own:
	// the probes do not depend on each other, so the CPU keeps several of
	// their cache misses in flight (a 1M-user table is 32 MiB; interleaved
	// with the hashing, 10k lookups took 3-4x as long). Repeats are removed
	// from the users found online only, by the hash the lookup computed.
	sc, _ := lookupScratch.Get().(*scratch)
	if sc == nil {
		sc = new(scratch)
	}
	defer lookupScratch.Put(sc)
	keys := slices.Grow(sc.keys[:0], len(ids))[:len(ids)]
	for i, id := range ids {
		keys[i] = v.key(id)
	}
	online := make([]string, 0, len(ids))
	hashes := slices.Grow(sc.hashes[:0], len(ids))
	for i, k := range keys {
		if v.online.has(k) {
			online = append(online, ids[i])
			hashes = append(hashes, k.a)
		}
	}
	sc.keys, sc.hashes = keys, hashes
	return contract.AppendUniqueHashed(online[:0], online, hashes)
}

// scratch is lookup's pointer-free working memory, reused across queries
// (lookupScratch) so that a 10k-id query does not leave 240 KB of garbage.
type scratch struct {
	keys   []idKey
	hashes []uint64
}

var lookupScratch sync.Pool

func (v *View) askRedis(ctx context.Context, ids []string) ([]string, error) {
	v.fromRedis.Add(1)
	return v.store.GetOnlineUsers(ctx, ids)
}

// streamIDLess reports whether stream id a sorts before b ("ms-seq").
func streamIDLess(a, b string) bool {
	am, as := splitStreamID(a)
	bm, bs := splitStreamID(b)
	if am != bm {
		return am < bm
	}
	return as < bs
}

func splitStreamID(id string) (ms, seq uint64) {
	m, s, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseUint(m, 10, 64)
	seq, _ = strconv.ParseUint(s, 10, 64)
	return ms, seq
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
