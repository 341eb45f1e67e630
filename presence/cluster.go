package presence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
)

// Cluster is the presence store on a Redis Cluster. A Lua script may only
// touch the keys of one hash slot there, and every presenced script writes
// a user's session, the deadline index, the outbox, the version clock and
// the count together. So the data is split into partitions: partition p
// is a whole data set of its own (the layout of lua/lib.lua) under the
// prefix "presence:{<tag p>}:", all of its keys in the hash slot of its
// tag, and user u lives in partition contract.PartitionOf(u, partitions).
// Each partition has its own epoch, clock, outbox, sweep and leases, and
// loses writes on its own (its resets carry the partition, see
// contract.Event.Partitions). The tags are chosen so that partition p's
// slot lies in the p-th equal share of the 16384 slots, so partitions
// spread over the masters as evenly as the slot ranges do.
//
// Inside a partition the user's deadline key is "presence:{<tag>}:user:<id>";
// the seed's key, "presence:user:<id>" = "1" with the TTL (the mirror), lives
// in another slot and cannot be written by the same script. Cluster writes
// it after the script, on every heartbeat that leaves the user online (SET
// with the TTL, refused for a key of another type), and removes it when the
// relay reads the user's offline event and the user has no session again.
// So EXISTS on the mirror lags the session: it turns true just after the
// heartbeat that opened it is stored, and false when the offline is read
// for publishing (a few milliseconds normally; while no relay runs, at the
// latest when its TTL runs out, which a heartbeat set together with the
// session's). A heartbeat stored between the relay's check and its delete
// leaves the mirror missing until that user's next heartbeat. Sessions,
// versions and events are exact, as on one server: the mirror is a copy.
//
// Cluster is safe for concurrent use; it does not own the client.
type Cluster struct {
	rdb    *redis.ClusterClient
	opts   Options
	parts  []*Store
	mirror Keys   // the seed's keys, Prefix+"user:"+id
	ttl    string // opts.TTL in ms, for the mirror's SET

	log            *slog.Logger
	mirrorFailures atomic.Int64
	lastMirrorLog  atomic.Int64 // unix ms of the last mirror failure logged
}

// DefaultPartitions is the partition count when none is given: a multiple
// of 3 (the smallest cluster with failover has three masters) and of 2 and
// 4, large enough that 5 or 6 masters hold within 20% of each other's
// share too.
const DefaultPartitions = 48

// MaxPartitions bounds the partition count: every replica sweeps and
// relays every partition.
const MaxPartitions = 1024

// NewCluster returns the store on the cluster rdb, split into partitions
// (zero means DefaultPartitions). opts.Shards is the total sessions shard
// count, divided among the partitions. log (nil for none) gets mirror
// failures, at most one line a second. It does no I/O.
func NewCluster(rdb *redis.ClusterClient, opts Options, partitions int, log *slog.Logger) *Cluster {
	opts = opts.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if partitions <= 0 {
		partitions = DefaultPartitions
	}
	partitions = min(partitions, MaxPartitions)
	c := &Cluster{rdb: rdb, opts: opts, log: log, mirror: NewKeys(opts.Prefix), ttl: strconv.FormatInt(opts.TTL.Milliseconds(), 10)}
	for i, tag := range PartitionTags(partitions) {
		po := opts
		po.Prefix = PartitionPrefix(opts.Prefix, tag)
		po.Shards = max(1, (opts.Shards+partitions-1)/partitions)
		s := NewStore(rdb, po)
		s.fence = po.Prefix + "fence"
		s.part, s.parts = i, partitions
		c.parts = append(c.parts, s)
	}
	return c
}

// PartitionPrefix is the key prefix of the partition tagged tag.
func PartitionPrefix(prefix, tag string) string { return prefix + "{" + tag + "}:" }

// Partitions returns the partitions' stores, partition p at index p.
func (c *Cluster) Partitions() []*Store { return c.parts }

// PartitionOf returns the partition holding id.
func (c *Cluster) PartitionOf(id string) int { return contract.PartitionOf(id, len(c.parts)) }

// MirrorKey is the seed's presence key of id, "presence:user:<id>".
func (c *Cluster) MirrorKey(id string) string { return c.mirror.User(id) }

// MirrorFailures counts mirror writes and deletes that failed (the
// session itself was stored).
func (c *Cluster) MirrorFailures() int64 { return c.mirrorFailures.Load() }

// PartitionsKey records the partition count of the data set: replicas
// configured with another count would put users in other partitions, so
// Writable refuses them.
func (c *Cluster) PartitionsKey() string { return c.opts.Prefix + "partitions" }

// Outboxes returns the partitions' outbox readers for consumer (a name
// unique to this replica), partition p at index p. Reading a batch removes
// the mirrors of the users whose offline it holds and who have no session
// again.
func (c *Cluster) Outboxes(consumer string) []*Outbox {
	out := make([]*Outbox, len(c.parts))
	for i, s := range c.parts {
		o := s.Outbox(consumer)
		o.onRead = func(ctx context.Context, events []Event) { c.clearMirrors(ctx, s, events) }
		out[i] = o
	}
	return out
}

// Writable checks that every master answers as a master, that the data
// set's partition count is this store's (recording it when none is), and
// loads the scripts on every master.
func (c *Cluster) Writable(ctx context.Context) error {
	err := c.rdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		role, err := m.Do(ctx, "ROLE").Slice()
		if err != nil {
			return fmt.Errorf("redis %s role: %w", m.Options().Addr, err)
		}
		if len(role) == 0 || role[0] != "master" {
			return fmt.Errorf("redis %s is a %v, not a master: it takes no writes", m.Options().Addr, role[0:min(1, len(role))])
		}
		return nil
	})
	if err != nil {
		return err
	}
	n := strconv.Itoa(len(c.parts))
	if err := c.rdb.SetNX(ctx, c.PartitionsKey(), n, 0).Err(); err != nil {
		return fmt.Errorf("record the partition count: %w", err)
	}
	got, err := c.rdb.Get(ctx, c.PartitionsKey()).Result()
	if err != nil {
		return fmt.Errorf("read the partition count: %w", err)
	}
	if got != n {
		return fmt.Errorf("%w: the presence data in this cluster has %s partitions (%s), this replica is configured with %s: set REDIS_CLUSTER_PARTITIONS=%s",
			ErrPartitionCount, got, c.PartitionsKey(), n, got)
	}
	return c.parts[0].Ping(ctx) // loads every script on every master
}

// ErrPartitionCount is returned by Writable when the cluster's data set was
// made with another partition count.
var ErrPartitionCount = errors.New("partition count mismatch")

// PartitionsError is the error of a call some of whose partitions failed
// (the others were applied). Of is the cluster's partition count: while
// some partitions work (a master failing over, a slot migrating), Redis
// is not unavailable to this replica, and leaving the queue group would
// not hand the work to a replica that fares better; IsUnavailable is
// false and IsRetryable true. When every partition fails (the sweep
// touches all of them), it is unavailable.
type PartitionsError struct {
	Failed, Of int
	Err        error // the first partition's error
}

func (e *PartitionsError) Error() string {
	return fmt.Sprintf("%d of %d partitions failed: %v", e.Failed, e.Of, e.Err)
}

func (e *PartitionsError) Unwrap() error { return e.Err }

// partial reports whether err is a PartitionsError with partitions that did
// not fail.
func partial(err error) bool {
	var pe *PartitionsError
	return errors.As(err, &pe) && pe.Failed < pe.Of
}

// route runs one script call per ChunkSize of each partition's items, all
// in one pipeline (one round trip per master, concurrently), and returns
// the per-item results in items' order. calls makes a partition's calls
// for its items (the Store's own builder, so the layout is written once).
func route[T any](ctx context.Context, c *Cluster, script *redis.Script, items []T, user func(T) string,
	calls func(s *Store, items []T) func(lo, hi int) ([]string, []any)) ([]int64, error) {
	if len(items) == 0 {
		return nil, nil
	}
	n := len(c.parts)
	byPart := make([][]int, n) // item indexes per partition
	for i, it := range items {
		p := contract.PartitionOf(user(it), n)
		byPart[p] = append(byPart[p], i)
	}
	type span struct{ part, calls int }
	var (
		all   []scriptCall
		spans []span
	)
	for p, idx := range byPart {
		if len(idx) == 0 {
			continue
		}
		mine := make([]T, len(idx))
		for k, i := range idx {
			mine[k] = items[i]
		}
		s := c.parts[p]
		pc := chunkCalls(len(mine), s.fenced(calls(s, mine)))
		all = append(all, pc...)
		spans = append(spans, span{p, len(pc)})
	}
	cmds, err := pipelineCalls(ctx, c.rdb, script, all)
	if err != nil && len(cmds) < len(all) {
		return nil, scriptError(err)
	}
	out := make([]int64, len(items))
	var (
		failed   int
		firstErr error
	)
	at := 0
	for _, sp := range spans {
		res, err := appendResults(nil, cmds[at:at+sp.calls])
		at += sp.calls
		if err == nil && len(res) != len(byPart[sp.part]) {
			err = fmt.Errorf("partition %d: %d results for %d entries", sp.part, len(res), len(byPart[sp.part]))
		}
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("partition %d: %w", sp.part, err)
			}
			continue
		}
		for k, i := range byPart[sp.part] {
			out[i] = res[k]
		}
	}
	if failed > 0 {
		return nil, &PartitionsError{Failed: failed, Of: n, Err: firstErr}
	}
	return out, nil
}

func self(id string) string           { return id }
func connUser(c contract.Conn) string { return c.UserID }

// Heartbeat is Store.Heartbeat on each id's partition; the mirrors of the
// ids left online are written after.
func (c *Cluster) Heartbeat(ctx context.Context, ids []string) ([]int64, error) {
	res, err := route(ctx, c, scriptHeartbeat, ids, self, (*Store).heartbeatCalls)
	if err != nil {
		return nil, fmt.Errorf("heartbeat %d users: %w", len(ids), err)
	}
	writeMirrors(ctx, c, ids, self, res)
	return res, nil
}

// Disconnect is Store.Disconnect on each id's partition.
func (c *Cluster) Disconnect(ctx context.Context, ids []string) ([]int64, error) {
	res, err := route(ctx, c, scriptDisconnect, ids, self, (*Store).disconnectCalls)
	if err != nil {
		return nil, fmt.Errorf("disconnect %d users: %w", len(ids), err)
	}
	return res, nil
}

// Connect is Store.Connect on each entry's partition; the mirrors of the
// users left online are written after.
func (c *Cluster) Connect(ctx context.Context, conns []contract.Conn) ([]int64, error) {
	res, err := route(ctx, c, scriptConnect, conns, connUser, (*Store).connectCalls)
	if err != nil {
		return nil, fmt.Errorf("heartbeat %d connections: %w", len(conns), err)
	}
	writeMirrors(ctx, c, conns, connUser, res)
	return res, nil
}

// Release is Store.Release on each entry's partition.
func (c *Cluster) Release(ctx context.Context, conns []contract.Conn) ([]int64, error) {
	res, err := route(ctx, c, scriptRelease, conns, connUser, (*Store).releaseCalls)
	if err != nil {
		return nil, fmt.Errorf("disconnect %d connections: %w", len(conns), err)
	}
	return res, nil
}

// Kick is Store.Kick on each id's partition.
func (c *Cluster) Kick(ctx context.Context, ids []string) ([]int64, error) {
	res, err := route(ctx, c, scriptRelease, ids, self, (*Store).kickCalls)
	if err != nil {
		return nil, fmt.Errorf("end every connection of %d users: %w", len(ids), err)
	}
	return res, nil
}

// writeMirrors sets the mirror of each item whose result left its user
// online (a version or 0), with the TTL, in one pipeline. SET ... GET
// fails on a key of another type without writing it, so another program's
// key under the prefix is left alone. Failures are counted, not returned:
// the session is stored, and the next heartbeat writes the mirror again.
func writeMirrors[T any](ctx context.Context, c *Cluster, items []T, user func(T) string, res []int64) {
	p := c.rdb.Pipeline()
	n := 0
	for i, it := range items {
		if res[i] < 0 {
			continue
		}
		p.Do(ctx, "SET", c.mirror.User(user(it)), "1", "PX", c.ttl, "GET")
		n++
	}
	if n == 0 {
		return
	}
	c.mirrorResults(p.Exec(ctx))
}

// mirrorResults counts and logs the failed commands of a mirror pipeline
// (a missing key and another program's key of another type are not
// failures).
func (c *Cluster) mirrorResults(cmds []redis.Cmder, _ error) {
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) && !strings.HasPrefix(err.Error(), "WRONGTYPE") {
			c.mirrorFailed(1, err)
		}
	}
}

// mirrorFailed counts n mirror keys not written or removed.
func (c *Cluster) mirrorFailed(n int, err error) {
	c.mirrorFailures.Add(int64(n))
	now := time.Now().UnixMilli()
	if last := c.lastMirrorLog.Load(); now-last >= 1000 && c.lastMirrorLog.CompareAndSwap(last, now) {
		c.log.Warn("could not update the seed's presence keys (the sessions are stored; the keys catch up at the next heartbeat or their TTL)", "keys", n, "err", err)
	}
}

// clearMirrors removes the mirrors of the users whose offline events a
// batch read from partition s holds, unless the user has a session in s
// again (its deadline key exists): GETDEL, which leaves a key of another
// type alone.
func (c *Cluster) clearMirrors(ctx context.Context, s *Store, events []Event) {
	var ids []string
	for _, e := range events {
		if e.Status == contract.StatusOffline && e.UserID != "" {
			ids = append(ids, e.UserID)
		}
	}
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	p := c.rdb.Pipeline()
	live := make([]*redis.IntCmd, len(ids))
	for i, id := range ids {
		live[i] = p.Exists(ctx, s.keys.User(id))
	}
	if _, err := p.Exec(ctx); err != nil {
		c.mirrorFailed(len(ids), err)
		return
	}
	p = c.rdb.Pipeline()
	n := 0
	for i, id := range ids {
		if live[i].Val() == 0 {
			p.GetDel(ctx, c.mirror.User(id))
			n++
		}
	}
	if n == 0 {
		return
	}
	c.mirrorResults(p.Exec(ctx))
}

// eachPartition calls f for every partition concurrently and joins the
// errors into a PartitionsError.
func (c *Cluster) eachPartition(ctx context.Context, f func(ctx context.Context, p int, s *Store) error) error {
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed int
		first  error
	)
	for p, s := range c.parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx, p, s); err != nil {
				mu.Lock()
				failed++
				if first == nil {
					first = fmt.Errorf("partition %d: %w", p, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failed > 0 {
		return &PartitionsError{Failed: failed, Of: len(c.parts), Err: first}
	}
	return nil
}

// RenewLease renews gateway's lease in every partition (each holds the
// connections of its users under it). The lease returned is partition 0's,
// with the earliest expiry and any lease replaced.
func (c *Cluster) RenewLease(ctx context.Context, gateway, instance string) (Lease, error) {
	return c.leaseAll(ctx, func(ctx context.Context, s *Store) (Lease, error) { return s.RenewLease(ctx, gateway, instance) })
}

// EndLease ends gateway's lease in every partition.
func (c *Cluster) EndLease(ctx context.Context, gateway, instance string) (Lease, error) {
	return c.leaseAll(ctx, func(ctx context.Context, s *Store) (Lease, error) { return s.EndLease(ctx, gateway, instance) })
}

func (c *Cluster) leaseAll(ctx context.Context, f func(context.Context, *Store) (Lease, error)) (Lease, error) {
	leases := make([]Lease, len(c.parts))
	err := c.eachPartition(ctx, func(ctx context.Context, p int, s *Store) error {
		l, err := f(ctx, s)
		leases[p] = l
		return err
	})
	if err != nil {
		return Lease{}, err
	}
	out := leases[0]
	for _, l := range leases[1:] {
		if out.Replaced == 0 {
			out.Replaced = l.Replaced
		}
		if !l.ExpiresAt.IsZero() && (out.ExpiresAt.IsZero() || l.ExpiresAt.Before(out.ExpiresAt)) {
			out.ExpiresAt = l.ExpiresAt
		}
	}
	return out, nil
}

// Lapse takes one Lapse step in every partition.
func (c *Cluster) Lapse(ctx context.Context, limit int) (LapseResult, error) {
	var (
		mu  sync.Mutex
		sum LapseResult
	)
	err := c.eachPartition(ctx, func(ctx context.Context, _ int, s *Store) error {
		r, err := s.Lapse(ctx, limit)
		mu.Lock()
		sum.Ended += r.Ended
		sum.Left += r.Left
		sum.More = sum.More || r.More
		mu.Unlock()
		return err
	})
	return sum, err
}

// Sweep takes one Sweep step in every partition.
func (c *Cluster) Sweep(ctx context.Context, limit int) (SweepResult, error) {
	var (
		mu  sync.Mutex
		sum SweepResult
	)
	err := c.eachPartition(ctx, func(ctx context.Context, _ int, s *Store) error {
		r, err := s.Sweep(ctx, limit)
		mu.Lock()
		sum.Claimed += r.Claimed
		sum.Graced += r.Graced
		sum.More = sum.More || r.More
		sum.Reannounce = sum.Reannounce || r.Reannounce
		mu.Unlock()
		return err
	})
	return sum, err
}

// Reannounce takes one step of the re-announcement walk in every
// partition (a partition without a walk under way does nothing).
func (c *Cluster) Reannounce(ctx context.Context) (ReannounceResult, error) {
	var (
		mu  sync.Mutex
		sum ReannounceResult
	)
	err := c.eachPartition(ctx, func(ctx context.Context, _ int, s *Store) error {
		r, err := s.Reannounce(ctx)
		mu.Lock()
		sum.Announced += r.Announced
		if r.More && !r.Waiting {
			sum.More = true
		}
		mu.Unlock()
		return err
	})
	return sum, err
}

// Claim claims the expired ones of ids, each in its partition.
func (c *Cluster) Claim(ctx context.Context, ids []string) (int, error) {
	byPart := make(map[int][]string)
	for _, id := range ids {
		p := c.PartitionOf(id)
		byPart[p] = append(byPart[p], id)
	}
	var (
		total    int
		deferred int
		errs     []error
	)
	for p, mine := range byPart {
		n, err := c.parts[p].Claim(ctx, mine)
		total += n
		switch {
		case errors.Is(err, ErrClaimDeferred):
			deferred++
		case err != nil:
			errs = append(errs, fmt.Errorf("partition %d: %w", p, err))
		}
	}
	if len(errs) > 0 {
		return total, &PartitionsError{Failed: len(errs), Of: len(c.parts), Err: errs[0]}
	}
	if deferred == len(byPart) {
		return total, ErrClaimDeferred
	}
	return total, nil
}

// Count returns the number of open sessions over all partitions.
func (c *Cluster) Count(ctx context.Context) (int64, error) {
	p := c.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(c.parts))
	for i, s := range c.parts {
		cmds[i] = p.Get(ctx, s.keys.Count())
	}
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("count online users: %w", err)
	}
	var n int64
	for _, cmd := range cmds {
		v, err := cmd.Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return 0, fmt.Errorf("count online users: %w", err)
		}
		n += v
	}
	return n, nil
}

// Status is Store.Status in id's partition.
func (c *Cluster) Status(ctx context.Context, id string) (Status, error) {
	return c.parts[c.PartitionOf(id)].Status(ctx, id)
}

// GetOnlineUsers returns those of ids online, each asked of its partition.
func (c *Cluster) GetOnlineUsers(ctx context.Context, ids []string) ([]string, error) {
	online := make(map[string]bool, len(ids))
	byPart := make(map[int][]string)
	for _, id := range ids {
		p := c.PartitionOf(id)
		byPart[p] = append(byPart[p], id)
	}
	for p, mine := range byPart {
		got, err := c.parts[p].GetOnlineUsers(ctx, mine)
		if err != nil {
			return nil, err
		}
		for _, id := range got {
			online[id] = true
		}
	}
	out := make([]string, 0, len(online))
	for _, id := range ids {
		if online[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

// List walks the partitions in order, each with Store.List. Cursors are
// "<partition>.<the partition's cursor>".
func (c *Cluster) List(ctx context.Context, cursor string, limit int) (Page, error) {
	part, inner := 0, ""
	if cursor != "" {
		a, b, ok := strings.Cut(cursor, ".")
		p, err := strconv.Atoi(a)
		if !ok || err != nil || !isDigits(a) || p >= len(c.parts) {
			return Page{}, fmt.Errorf("%w: %q", ErrInvalidCursor, cursor)
		}
		part, inner = p, b
	}
	for {
		pg, err := c.parts[part].List(ctx, inner, limit)
		if err != nil {
			return Page{}, err
		}
		if pg.Cursor != "" {
			pg.Cursor = strconv.Itoa(part) + "." + pg.Cursor
			return pg, nil
		}
		part, inner = part+1, ""
		if part == len(c.parts) {
			return pg, nil
		}
		if len(pg.UserIDs) > 0 {
			pg.Cursor = strconv.Itoa(part) + "."
			return pg, nil
		}
	}
}

// Gateway returns gateway's lease (as partition 0 holds it) and its
// connections over all partitions.
func (c *Cluster) Gateway(ctx context.Context, gateway string) (GatewayStatus, error) {
	sts := make([]GatewayStatus, len(c.parts))
	err := c.eachPartition(ctx, func(ctx context.Context, p int, s *Store) error {
		st, err := s.Gateway(ctx, gateway)
		sts[p] = st
		return err
	})
	if err != nil {
		return GatewayStatus{GatewayID: gateway}, err
	}
	out := sts[0]
	for _, st := range sts[1:] {
		out.Connections += st.Connections
	}
	return out, nil
}
