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
// it after the script, on every heartbeat that leaves the user online (see
// syncMirrors: SET with the TTL, refused for a key of another type; then,
// for a new session, a check that the session is still open), and removes
// it when the relay reads the user's offline event and the user has no
// session again. So EXISTS on the mirror lags the session: it turns true
// just after the heartbeat that opened it is stored, and false when the
// offline is read for publishing (a few milliseconds normally; while no
// relay runs, at the latest when its TTL runs out, which a heartbeat set
// together with the session's). A heartbeat stored between the relay's
// check and its delete leaves the mirror missing until that user's next
// heartbeat. Sessions, versions and events are exact, as on one server:
// the mirror is a copy.
//
// Cluster is safe for concurrent use; it does not own the client.
type Cluster struct {
	rdb    *redis.ClusterClient
	opts   Options
	parts  []*Store
	mirror Keys   // the seed's keys, Prefix+"user:"+id
	ttl    string // opts.TTL in ms, for the mirror's SET

	log            *slog.Logger
	busy           [numLoopSteps][]atomic.Bool // a loop step's call running, per partition (see eachPartition)
	mirrorFailures atomic.Int64
	lastMirrorLog  atomic.Int64 // unix ms of the last mirror failure logged
}

// DefaultPartitions is the partition count when none is given: it spreads
// evenly over 3, 4, 6 or 12 masters. More partitions allow more masters
// but cut each worker batch into smaller script calls, each paying the
// script's fixed cost (BENCHMARKS.md, "Redis Cluster": 48 partitions cost
// about a third more Redis CPU per heartbeat than 12 on 3 masters).
const DefaultPartitions = 12

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
	for k := range c.busy {
		c.busy[k] = make([]atomic.Bool, partitions)
	}
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

// Writable checks that the partitions' masters answer as masters and take the scripts
// (loaded on each master, not on replicas, which may be loading or gone),
// and that the data set's partition count is this store's (recording it
// when none is). It succeeds when at least one master does: a replica
// leaves the queue group only when every partition fails (see
// PartitionsError), so it rejoins as soon as some partitions work again,
// and starts while a master fails over.
func (c *Cluster) Writable(ctx context.Context) error {
	// The masters of the partitions, from the client's slot map (not
	// ForEachMaster, which reloads the map first from a node picked at
	// random, and waits on it when that node hangs).
	masters := map[string]*redis.Client{}
	var errs []error
	for _, p := range c.parts {
		m, err := c.rdb.MasterForKey(ctx, p.keys.Epoch())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		masters[m.Options().Addr] = m
	}
	var (
		mu   sync.Mutex
		good int
		wg   sync.WaitGroup
	)
	for addr, m := range masters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := masterWritable(ctx, m)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("redis %s: %w", addr, err))
			} else {
				good++
			}
		}()
	}
	wg.Wait()
	if good == 0 {
		if len(errs) == 0 {
			return errors.New("redis cluster: no master known")
		}
		return errors.Join(errs...)
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
	return nil
}

// masterWritable checks that m is a master and loads the scripts on it.
func masterWritable(ctx context.Context, m *redis.Client) error {
	role, err := m.Do(ctx, "ROLE").Slice()
	if err != nil {
		return fmt.Errorf("role: %w", err)
	}
	if len(role) == 0 || role[0] != "master" {
		return fmt.Errorf("a %v, not a master: it takes no writes", role[0:min(1, len(role))])
	}
	return loadScripts(ctx, m)
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
// the per-item results in items' order, and whether each item's partition
// applied it (with a PartitionsError when some did not). calls makes a
// partition's calls for its items (the Store's own builder, so the layout
// is written once).
func route[T any](ctx context.Context, c *Cluster, script *redis.Script, items []T, user func(T) string,
	calls func(s *Store, items []T) func(lo, hi int) ([]string, []any)) ([]int64, []bool, error) {
	if len(items) == 0 {
		return nil, nil, nil
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
	rctx, cancel := context.WithTimeout(ctx, routeTimeout)
	defer cancel()
	cmds, err := pipelineCalls(rctx, c.rdb, script, all)
	if err != nil && len(cmds) < len(all) {
		return nil, nil, scriptError(err)
	}
	out := make([]int64, len(items))
	ok := make([]bool, len(items))
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
			out[i], ok[i] = res[k], true
		}
	}
	if failed > 0 {
		return out, ok, &PartitionsError{Failed: failed, Of: n, Err: firstErr}
	}
	return out, ok, nil
}

// routeOnly is route for the calls that leave the mirrors to the relay.
func routeOnly[T any](ctx context.Context, c *Cluster, script *redis.Script, items []T, user func(T) string,
	calls func(s *Store, items []T) func(lo, hi int) ([]string, []any)) ([]int64, error) {
	res, _, err := route(ctx, c, script, items, user, calls)
	if err != nil {
		return nil, err
	}
	return res, nil
}

func self(id string) string           { return id }
func connUser(c contract.Conn) string { return c.UserID }

// Heartbeat is Store.Heartbeat on each id's partition; the mirrors of the
// ids left online are written after.
func (c *Cluster) Heartbeat(ctx context.Context, ids []string) ([]int64, error) {
	res, ok, err := route(ctx, c, scriptHeartbeat, ids, self, (*Store).heartbeatCalls)
	syncMirrors(ctx, c, ids, self, res, ok)
	if err != nil {
		return nil, fmt.Errorf("heartbeat %d users: %w", len(ids), err)
	}
	return res, nil
}

// Disconnect is Store.Disconnect on each id's partition.
func (c *Cluster) Disconnect(ctx context.Context, ids []string) ([]int64, error) {
	res, err := routeOnly(ctx, c, scriptDisconnect, ids, self, (*Store).disconnectCalls)
	if err != nil {
		return nil, fmt.Errorf("disconnect %d users: %w", len(ids), err)
	}
	return res, nil
}

// Connect is Store.Connect on each entry's partition; the mirrors of the
// users left online are written after.
func (c *Cluster) Connect(ctx context.Context, conns []contract.Conn) ([]int64, error) {
	res, ok, err := route(ctx, c, scriptConnect, conns, connUser, (*Store).connectCalls)
	syncMirrors(ctx, c, conns, connUser, res, ok)
	if err != nil {
		return nil, fmt.Errorf("heartbeat %d connections: %w", len(conns), err)
	}
	return res, nil
}

// Release is Store.Release on each entry's partition.
func (c *Cluster) Release(ctx context.Context, conns []contract.Conn) ([]int64, error) {
	res, err := routeOnly(ctx, c, scriptRelease, conns, connUser, (*Store).releaseCalls)
	if err != nil {
		return nil, fmt.Errorf("disconnect %d connections: %w", len(conns), err)
	}
	return res, nil
}

// Kick is Store.Kick on each id's partition.
func (c *Cluster) Kick(ctx context.Context, ids []string) ([]int64, error) {
	res, err := routeOnly(ctx, c, scriptRelease, ids, self, (*Store).kickCalls)
	if err != nil {
		return nil, fmt.Errorf("end every connection of %d users: %w", len(ids), err)
	}
	return res, nil
}

// mirrorWait bounds the mirror writes of one heartbeat batch: the mirror
// keys hash over every master, and a hung one must not hold the reply for
// the sessions already stored.
const mirrorWait = time.Second

// syncMirrors brings the mirrors of items in line with their partitions
// after a heartbeat, for the items whose partition applied it (ok):
//
//  1. One pipeline: for a user whose session the call opened (a version),
//     SET the mirror with the TTL; for a refresh (0), SET it only if it
//     exists (XX), which refreshes its TTL and never brings back a mirror
//     the relay removed. Both with GET, which fails on a key of another
//     type without writing it, so another program's key under the prefix
//     is left alone, and tells whether the key existed.
//  2. For the refreshes that found no mirror and the entries ignored as
//     Stale (a resent connection entry of a user who may be online), SET
//     the mirror.
//  3. For every user whose mirror was SET (1 or 2), check the deadline key
//     in the partition, and remove the mirror (GETDEL) when the session has
//     ended meanwhile (a disconnect stored by another replica, whose relay
//     found no mirror yet to remove).
//
// A refresh, the common case, costs one command. A mirror written here
// never outlives the session for long: whichever of this check and the
// relay's comes second removes it. The whole is bounded by mirrorWait.
// Failures are counted and logged, not returned: the sessions are stored,
// and the next heartbeat writes the mirror again.
func syncMirrors[T any](ctx context.Context, c *Cluster, items []T, user func(T) string, res []int64, ok []bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mirrorWait)
	defer cancel()
	opened := map[string]bool{}  // sessions the call opened
	refresh := map[string]bool{} // sessions refreshed
	var missing []string         // refreshes without a mirror, stale entries: SET, then check
	for i, it := range items {
		id := user(it)
		switch {
		case !ok[i]:
		case res[i] > 0:
			opened[id] = true
		case res[i] == 0:
			refresh[id] = true
		case res[i] == Stale:
			missing = append(missing, id)
		}
	}
	for id := range opened {
		delete(refresh, id)
	}
	set := func(p redis.Pipeliner, id string, xx bool) *redis.Cmd {
		if xx {
			return p.Do(ctx, "SET", c.mirror.User(id), "1", "PX", c.ttl, "XX", "GET")
		}
		return p.Do(ctx, "SET", c.mirror.User(id), "1", "PX", c.ttl, "GET")
	}
	if len(opened)+len(refresh) > 0 {
		p := c.rdb.Pipeline()
		for id := range opened {
			set(p, id, false)
		}
		ids := make([]string, 0, len(refresh))
		cmds := make([]*redis.Cmd, 0, len(refresh))
		for id := range refresh {
			ids = append(ids, id)
			cmds = append(cmds, set(p, id, true))
		}
		c.mirrorResults(p.Exec(ctx))
		for k, cmd := range cmds {
			if errors.Is(cmd.Err(), redis.Nil) { // no mirror, so not set (XX)
				missing = append(missing, ids[k])
			}
		}
	}
	check := make([]string, 0, len(opened)+len(missing))
	for id := range opened {
		check = append(check, id)
	}
	if len(missing) > 0 {
		p := c.rdb.Pipeline()
		for _, id := range missing {
			if !opened[id] {
				opened[id] = true // checked once
				set(p, id, false)
				check = append(check, id)
			}
		}
		c.mirrorResults(p.Exec(ctx))
	}
	if len(check) == 0 {
		return
	}
	p := c.rdb.Pipeline()
	live := make([]*redis.IntCmd, len(check))
	for i, id := range check {
		live[i] = p.Exists(ctx, c.parts[c.PartitionOf(id)].keys.User(id))
	}
	if _, err := p.Exec(ctx); err != nil {
		c.mirrorFailed(len(check), err)
		return
	}
	p = c.rdb.Pipeline()
	n := 0
	for i, id := range check {
		if live[i].Val() == 0 {
			p.GetDel(ctx, c.mirror.User(id))
			n++
		}
	}
	if n > 0 {
		c.mirrorResults(p.Exec(ctx))
	}
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

// PartitionTimeout bounds each partition's call of a step that runs on
// every partition (sweep, lapse, re-announce, lease messages, the gateway
// query) and of a claim; routeTimeout bounds a heartbeat or disconnect
// batch. A master that hangs (a host lost before the cluster notices)
// fails its own partitions' calls; the others go on (see eachPartition).
const (
	PartitionTimeout = 2 * time.Second
	routeTimeout     = 5 * time.Second
	// partitionWait is how long a step waits for a partition's call
	// before reporting it failed and leaving it running: the step's other
	// partitions are not held up by a hung one, so their sweeps go on
	// well within OutageThreshold.
	partitionWait = time.Second
)

// The steps that run on every partition. The loop steps (sweep, lapse,
// re-announce: one caller each, every interval) run one call per
// partition at a time: a call still running is skipped. The others
// (leases, the gateway query, the count) have callers that may overlap
// (the worker and the query service), so each call runs on its own.
type stepKind int

const (
	stepSweep stepKind = iota
	stepLapse
	stepReannounce
	stepLease
	stepGateway
	stepCount
)

// numLoopSteps: the steps before it are the loop steps.
const numLoopSteps = stepLease

// errStillRunning: the partition's previous call of the step has not
// returned (its master hangs); this step skipped it.
var errStillRunning = errors.New("its previous call has not returned yet")

// errNoAnswer: the partition's call did not return within partitionWait;
// it goes on, and the partition is skipped until it returns.
var errNoAnswer = fmt.Errorf("no answer within %s", partitionWait)

// eachPartition runs step on every partition concurrently, each call
// bounded by PartitionTimeout, and returns the results of those that
// returned within partitionWait, with a PartitionsError naming the others
// and the ones that failed. A call still running is left to finish on its
// own (within PartitionTimeout); for a loop step, the partition is skipped
// (errStillRunning) until it has: a hung master costs the loop one
// partitionWait, not one per round.
func eachPartition[R any](ctx context.Context, c *Cluster, step stepKind, f func(ctx context.Context, s *Store) (R, error)) ([]R, error) {
	type result struct {
		r   R
		err error
	}
	n := len(c.parts)
	chans := make([]chan result, n)
	loop := step < numLoopSteps
	for p, s := range c.parts {
		var busy *atomic.Bool
		if loop {
			busy = &c.busy[step][p]
			if !busy.CompareAndSwap(false, true) {
				continue
			}
		}
		ch := make(chan result, 1)
		chans[p] = ch
		go func() {
			if busy != nil {
				defer busy.Store(false)
			}
			pctx, cancel := context.WithTimeout(ctx, PartitionTimeout)
			defer cancel()
			r, err := f(pctx, s)
			ch <- result{r, err}
		}()
	}
	out := make([]R, n)
	var (
		failed  int
		first   error
		expired bool
	)
	fail := func(p int, err error) {
		failed++
		if first == nil {
			first = fmt.Errorf("partition %d: %w", p, err)
		}
	}
	timer := time.NewTimer(partitionWait)
	defer timer.Stop()
	for p, ch := range chans {
		if ch == nil {
			fail(p, errStillRunning)
			continue
		}
		var res result
		got := false
		if !expired {
			select {
			case res = <-ch:
				got = true
			case <-timer.C:
				expired = true
			}
		}
		if !got {
			select {
			case res = <-ch:
				got = true
			default:
			}
		}
		switch {
		case !got:
			fail(p, errNoAnswer)
		case res.err != nil:
			out[p] = res.r
			fail(p, res.err)
		default:
			out[p] = res.r
		}
	}
	if failed > 0 {
		return out, &PartitionsError{Failed: failed, Of: n, Err: first}
	}
	return out, nil
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
	leases, err := eachPartition(ctx, c, stepLease, f)
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
	rs, err := eachPartition(ctx, c, stepLapse, func(ctx context.Context, s *Store) (LapseResult, error) { return s.Lapse(ctx, limit) })
	var sum LapseResult
	for _, r := range rs {
		sum.Ended += r.Ended
		sum.Left += r.Left
		sum.More = sum.More || r.More
	}
	return sum, err
}

// Sweep takes one Sweep step in every partition.
func (c *Cluster) Sweep(ctx context.Context, limit int) (SweepResult, error) {
	rs, err := eachPartition(ctx, c, stepSweep, func(ctx context.Context, s *Store) (SweepResult, error) { return s.Sweep(ctx, limit) })
	var sum SweepResult
	for _, r := range rs {
		sum.Claimed += r.Claimed
		sum.Graced += r.Graced
		sum.More = sum.More || r.More
		sum.Reannounce = sum.Reannounce || r.Reannounce
	}
	return sum, err
}

// Reannounce takes one step of the re-announcement walk in every
// partition (a partition without a walk under way does nothing).
func (c *Cluster) Reannounce(ctx context.Context) (ReannounceResult, error) {
	rs, err := eachPartition(ctx, c, stepReannounce, func(ctx context.Context, s *Store) (ReannounceResult, error) { return s.Reannounce(ctx) })
	var sum ReannounceResult
	for _, r := range rs {
		sum.Announced += r.Announced
		if r.More && !r.Waiting {
			sum.More = true
		}
	}
	return sum, err
}

// byPartition groups ids by partition.
func (c *Cluster) byPartition(ids []string) map[int][]string {
	out := make(map[int][]string)
	for _, id := range ids {
		p := c.PartitionOf(id)
		out[p] = append(out[p], id)
	}
	return out
}

// somePartitions calls f concurrently for each partition of groups, each
// call bounded by PartitionTimeout, and joins the errors into a
// PartitionsError.
func (c *Cluster) somePartitions(ctx context.Context, groups map[int][]string, f func(ctx context.Context, s *Store, ids []string) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for p, ids := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, PartitionTimeout)
			defer cancel()
			if err := f(pctx, c.parts[p], ids); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("partition %d: %w", p, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return &PartitionsError{Failed: len(errs), Of: len(c.parts), Err: errs[0]}
	}
	return nil
}

// Claim claims the expired ones of ids, each in its partition,
// concurrently. ErrClaimDeferred when every partition deferred.
func (c *Cluster) Claim(ctx context.Context, ids []string) (int, error) {
	groups := c.byPartition(ids)
	var (
		total    atomic.Int64
		deferred atomic.Int64
	)
	err := c.somePartitions(ctx, groups, func(ctx context.Context, s *Store, mine []string) error {
		n, err := s.Claim(ctx, mine)
		total.Add(int64(n))
		if errors.Is(err, ErrClaimDeferred) {
			deferred.Add(1)
			return nil
		}
		return err
	})
	if err != nil {
		return int(total.Load()), err
	}
	if int(deferred.Load()) == len(groups) {
		return int(total.Load()), ErrClaimDeferred
	}
	return int(total.Load()), nil
}

// Count returns the number of open sessions over all partitions, each
// partition's count read on its own (see eachPartition); with a
// PartitionsError, the sum of those that answered.
func (c *Cluster) Count(ctx context.Context) (int64, error) {
	ns, err := eachPartition(ctx, c, stepCount, func(ctx context.Context, s *Store) (int64, error) { return s.Count(ctx) })
	var n int64
	for _, v := range ns {
		n += v
	}
	return n, err
}

// Status is Store.Status in id's partition.
func (c *Cluster) Status(ctx context.Context, id string) (Status, error) {
	return c.parts[c.PartitionOf(id)].Status(ctx, id)
}

// GetOnlineUsers returns those of ids online, each asked of its
// partition (concurrently), in ids' order.
func (c *Cluster) GetOnlineUsers(ctx context.Context, ids []string) ([]string, error) {
	var (
		mu     sync.Mutex
		online = make(map[string]bool, len(ids))
	)
	err := c.somePartitions(ctx, c.byPartition(ids), func(ctx context.Context, s *Store, mine []string) error {
		got, err := s.GetOnlineUsers(ctx, mine)
		mu.Lock()
		for _, id := range got {
			online[id] = true
		}
		mu.Unlock()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(online))
	for _, id := range ids {
		if online[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

// IsPartial reports whether err is a PartitionsError that leaves
// partitions of the cluster working (see PartitionsError); the results a
// call returns with it are those of the partitions that answered.
func IsPartial(err error) bool { return partial(err) }

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
	sts, err := eachPartition(ctx, c, stepGateway, func(ctx context.Context, s *Store) (GatewayStatus, error) { return s.Gateway(ctx, gateway) })
	if err != nil {
		return GatewayStatus{GatewayID: gateway}, err
	}
	out := sts[0]
	for _, st := range sts[1:] {
		out.Connections += st.Connections
	}
	return out, nil
}
