// Package presence keeps who is online in Redis: the seed's presence keys
// (presence:user:{userId} = "1" with a TTL, so services that check EXISTS keep
// working), sessions shards whose fields are the open sessions (removing one
// is the claim), a deadline index that makes expiry authoritative, and an outbox
// stream that carries every online/offline transition to NATS. Every
// transition and its event are written by one Lua script, so a transition is
// never lost or doubled between Redis and the publisher.
//
// Store is safe for concurrent use. It does not own the Redis client it is
// given; the fx Module owns and closes the clients it creates.
package presence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ChunkSize is the most ids one script call handles; longer batches are split
// into several calls sent in one pipeline, so no call blocks Redis for long.
const ChunkSize = 1000

// Options configures a Store. Zero values take the documented defaults.
type Options struct {
	// Prefix of every key; zero means "presence:".
	Prefix string
	// TTL of a presence key and the grace granted after an outage; zero means 60s.
	TTL time.Duration
	// OutageThreshold: when no replica has swept for longer than this, users
	// whose deadline fell in the gap get one TTL of grace; zero means 5s.
	OutageThreshold time.Duration
	// Shards is the number of sessions shards, used when this store creates
	// the data set (the first write to an empty Redis); after that the count
	// recorded in the epoch key wins. About the expected peak of users online
	// divided by 64 keeps every shard a compact listpack (Redis's default
	// hash-max-listpack-entries is 128). Zero means DefaultShards.
	Shards int
	// OutboxRetention keeps published outbox entries this long, so that a
	// View can follow the stream (one that falls further behind reads the
	// sessions again); zero keeps none.
	OutboxRetention time.Duration
	// OfflineGrace holds the offline of a user whose last connection ended
	// by a disconnect or a lost gateway this long: a connection within it
	// continues the session with no events. Zero holds none.
	OfflineGrace time.Duration
	// GatewayLease is how long a gateway's lease lasts after its last
	// lease heartbeat; zero means 15s.
	GatewayLease time.Duration
	// MaxConnections is the most live connections one user may have; a new
	// one beyond it is refused (TooManyConnections). Zero means 64.
	MaxConnections int
}

// DefaultShards suits up to about a million users online (~64 per shard).
const DefaultShards = 16384

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = "presence:"
	}
	if o.TTL <= 0 {
		o.TTL = 60 * time.Second
	}
	if o.OutageThreshold <= 0 {
		o.OutageThreshold = 5 * time.Second
	}
	if o.Shards <= 0 {
		o.Shards = DefaultShards
	}
	if o.GatewayLease <= 0 {
		o.GatewayLease = 15 * time.Second
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 64
	}
	return o
}

// Store is the Redis side of presence. See the package comment.
type Store struct {
	rdb    redis.UniversalClient
	keys   Keys
	opts   Options
	shards string // opts.Shards, formatted once
	// fence, in a partition of a Redis Cluster, is a key of the partition's
	// hash slot that never exists, declared last in every script call's
	// keys. The scripts reach keys they do not declare (sessions shards,
	// index buckets), which Redis does not check while a slot migrates
	// (redis-cli --cluster reshard moves keys one batch at a time): such a
	// script could read a key already moved as missing. A declared key that
	// is always missing makes Redis refuse every call on a migrating slot,
	// on either node, with TRYAGAIN (or ASK, then TRYAGAIN), before the
	// script runs; the call is retried once the slot has moved. Empty on
	// one server and with Sentinel.
	fence string
	// part and parts: the partition this store holds, of parts (0 and 0
	// on one server and with Sentinel); reset events read from its outbox
	// carry them (contract.Event.Partition).
	part, parts int
}

// NewStore returns a Store on rdb. It does no I/O.
func NewStore(rdb redis.UniversalClient, opts Options) *Store {
	opts = opts.withDefaults()
	return &Store{rdb: rdb, keys: NewKeys(opts.Prefix), opts: opts, shards: strconv.Itoa(opts.Shards)}
}

// Keys returns the key names the store uses.
func (s *Store) Keys() Keys { return s.keys }

// Ping checks that Redis answers and loads the scripts, so the first
// heartbeat does not pay for it.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}
	return loadScripts(ctx, s.rdb)
}

// loadScripts loads every script on rdb (on a cluster client, on every
// node).
func loadScripts(ctx context.Context, rdb redis.Scripter) error {
	for _, sc := range []*redis.Script{scriptHeartbeat, scriptDisconnect, scriptConnect, scriptRelease, scriptLease, scriptLapse, scriptSweep, scriptClaim, scriptReset, scriptReannounce, scriptTrim, scriptStatus, scriptList} {
		if err := sc.Load(ctx, rdb).Err(); err != nil {
			return fmt.Errorf("load scripts: %w", err)
		}
	}
	return nil
}

// Writable reports whether Redis answers and takes writes: it is a master
// (ROLE), so a client left on a demoted master or a replica is told apart
// from a healthy one, and the scripts are loaded.
func (s *Store) Writable(ctx context.Context) error {
	role, err := s.rdb.Do(ctx, "ROLE").Slice()
	if err != nil {
		return fmt.Errorf("redis role: %w", err)
	}
	if len(role) == 0 || role[0] != "master" {
		return fmt.Errorf("redis is a %v, not a master: it takes no writes", role[0:min(1, len(role))])
	}
	return s.Ping(ctx)
}

// baseKeys returns KEYS[1..5] of every writing script (see lua/lib.lua),
// with room for n more.
func (s *Store) baseKeys(n int) []string {
	keys := make([]string, 5, 5+n)
	keys[0], keys[1], keys[2], keys[3], keys[4] = s.keys.Epoch(), s.keys.Clock(), s.keys.Outbox(), s.keys.Count(), s.keys.Dir()
	return keys
}

// baseArgs returns ARGV[1..2] of every writing script, with room for n more.
func (s *Store) baseArgs(n int) []any {
	args := make([]any, 2, 2+n)
	args[0], args[1] = s.keys.Prefix(), s.shards
	return args
}

// KeyConflict is the per-id result of Heartbeat and Disconnect for an id
// whose presence key holds another type than a string (another program's
// hash, list, ... at Prefix+"user:"+id): presenced does not own that key,
// so nothing of that id was written or deleted; the other ids of the call
// were applied as usual. ErrKeyConflict describes it.
const KeyConflict int64 = -1

// ErrKeyConflict is what a KeyConflict result means, for replies and errors.
var ErrKeyConflict = errors.New("the presence key holds another data type (not presenced's string); this id was not stored and the key was left as it is")

// Heartbeat starts or refreshes the presence of ids (which must be valid and
// unique; see contract.ValidateUserID). It returns one result per id: the online
// event's version when that user started a new session, 0 for a refresh,
// KeyConflict when the id's key holds another type (nothing written for it).
// The online events are in the outbox when Heartbeat returns.
func (s *Store) Heartbeat(ctx context.Context, ids []string) ([]int64, error) {
	res, err := s.runChunks(ctx, scriptHeartbeat, len(ids), s.heartbeatCalls(ids))
	if err != nil {
		return nil, fmt.Errorf("heartbeat %d users: %w", len(ids), err)
	}
	return res, nil
}

// Disconnect ends the implicit connections of ids now: for a user with no
// other live connection, the session ends (or its offline is held for
// OfflineGrace). It returns one result per id: the offline event's
// version, 0 when no offline was published, or KeyConflict when the id's
// key holds another type (the key is not deleted and nothing of that id
// changes; the sweep ends a session still open on such a key).
func (s *Store) Disconnect(ctx context.Context, ids []string) ([]int64, error) {
	res, err := s.runChunks(ctx, scriptDisconnect, len(ids), s.disconnectCalls(ids))
	if err != nil {
		return nil, fmt.Errorf("disconnect %d users: %w", len(ids), err)
	}
	return res, nil
}

// heartbeatCalls builds the heartbeat script's calls of ids (see
// runChunks); Cluster uses it on each partition's ids.
func (s *Store) heartbeatCalls(ids []string) func(lo, hi int) ([]string, []any) {
	ttl := s.ttlMS()
	return func(lo, hi int) ([]string, []any) {
		chunk := ids[lo:hi]
		keys := s.baseKeys(len(chunk))
		args := append(s.baseArgs(1+len(chunk)), ttl)
		for _, id := range chunk {
			keys = append(keys, s.keys.User(id))
			args = append(args, id)
		}
		return keys, args
	}
}

// disconnectCalls builds the disconnect script's calls of ids.
func (s *Store) disconnectCalls(ids []string) func(lo, hi int) ([]string, []any) {
	return func(lo, hi int) ([]string, []any) {
		chunk := ids[lo:hi]
		keys := s.baseKeys(len(chunk))
		args := append(s.baseArgs(2+len(chunk)), s.ttlMS(), s.graceMS())
		for _, id := range chunk {
			keys = append(keys, s.keys.User(id))
			args = append(args, id)
		}
		return keys, args
	}
}

// run runs script with keys (the fence appended, see Store.fence).
func (s *Store) run(ctx context.Context, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	return script.Run(ctx, s.rdb, s.withFence(keys), args...)
}

// withFence appends the fence key to keys when the store has one.
func (s *Store) withFence(keys []string) []string {
	if s.fence == "" {
		return keys
	}
	return append(keys, s.fence)
}

// fenced is build with the fence key appended to each call's keys.
func (s *Store) fenced(build func(lo, hi int) ([]string, []any)) func(lo, hi int) ([]string, []any) {
	if s.fence == "" {
		return build
	}
	return func(lo, hi int) ([]string, []any) {
		k, a := build(lo, hi)
		return append(k, s.fence), a
	}
}

// scriptCall is one script call's keys and args.
type scriptCall struct {
	keys []string
	args []any
}

// chunkCalls makes one call per ChunkSize of n entries (build makes a
// call's keys and args for entries [lo, hi)).
func chunkCalls(n int, build func(lo, hi int) ([]string, []any)) []scriptCall {
	calls := make([]scriptCall, 0, (n+ChunkSize-1)/ChunkSize)
	for start := 0; start < n; start += ChunkSize {
		k, a := build(start, min(start+ChunkSize, n))
		calls = append(calls, scriptCall{k, a})
	}
	return calls
}

// runChunks runs script once per ChunkSize of n entries, all in one
// pipeline (build makes a call's keys and args for entries [lo, hi)), and
// concatenates the per-entry results (each reply is {now_ms, r1..rn}).
func (s *Store) runChunks(ctx context.Context, script *redis.Script, n int, build func(lo, hi int) ([]string, []any)) ([]int64, error) {
	if n == 0 {
		return nil, nil
	}
	cmds, err := pipelineCalls(ctx, s.rdb, script, chunkCalls(n, s.fenced(build)))
	if err != nil {
		return nil, scriptError(err)
	}
	out := make([]int64, 0, n)
	return appendResults(out, cmds)
}

// pipelineCalls sends calls of script in one pipeline (on a cluster
// client, one per master, sent concurrently), by its SHA. The calls that
// fail with NOSCRIPT (Redis restarted, or a replica promoted, without the
// script) did not run: they are sent once more with the script's body
// (EVAL, which also caches it on the server that runs it, wherever the
// cluster routes the call). Every command's own error stays on it; err is
// the first.
func pipelineCalls(ctx context.Context, rdb redis.UniversalClient, script *redis.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	all := make([]int, len(calls))
	for i := range all {
		all[i] = i
	}
	send := func(idx []int, body bool) error {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				if body {
					cmds[i] = script.Eval(ctx, p, calls[i].keys, calls[i].args...)
				} else {
					cmds[i] = script.EvalSha(ctx, p, calls[i].keys, calls[i].args...)
				}
			}
			return nil
		})
		return err
	}
	err := send(all, false)
	if err == nil {
		return cmds, nil
	}
	var again []int
	for i, c := range cmds {
		if isNoScript(c.Err()) {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return cmds, err
	}
	_ = send(again, true) // each command keeps its own error
	for _, c := range cmds {
		if c.Err() != nil {
			return cmds, c.Err()
		}
	}
	return cmds, nil
}

// appendResults appends the per-entry results of script calls (each reply
// is {now_ms, r1..rn}) to out.
func appendResults(out []int64, cmds []*redis.Cmd) ([]int64, error) {
	for _, c := range cmds {
		vals, err := c.Int64Slice()
		if err != nil {
			return nil, scriptError(err)
		}
		out = append(out, vals[1:]...)
	}
	return out, nil
}

// IsUnavailable reports whether err means Redis cannot serve this client
// now (a refused, broken or timed-out connection; a server that is loading,
// read-only or has lost its master) rather than that one command was
// wrong. A cancelled context is neither, nor is a PartitionsError that
// leaves partitions working.
func IsUnavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || partial(err) {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	return true
}

// IsRetryable reports whether the same request may succeed later: Redis
// is unavailable to this client (IsUnavailable), or it refuses every write
// for now (busy with a script, out of memory, unable to persist, or without
// the replicas it must write to).
func IsRetryable(err error) bool {
	if IsUnavailable(err) || partial(err) {
		return true
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, p := range []string{"BUSY", "OOM", "MISCONF", "NOREPLICAS"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
	}
	return false
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// SweepResult is what one reconciler step did.
type SweepResult struct {
	Claimed int  // users whose offline event was appended to the outbox
	Graced  int  // users given one TTL of grace after an outage
	More    bool // the limit was reached: call again at once
	// Reannounce: the walk after a partial-loss reset is under way; the
	// caller should take its steps (Store.Reannounce).
	Reannounce bool
}

// Sweep reads up to about limit index entries whose slot has ended: entries
// that are not their user's open session's are dropped, users still online
// are filed again at their current deadline, the sessions of users whose
// key is gone (or replaced by another program's key of another type without
// a TTL) are claimed (removing the session is the claim, so
// exactly one replica wins each user) and their offline events, reason
// "expired", appended to the outbox. After an outage (no sweep by any
// replica for longer than OutageThreshold) it grants grace instead; see
// lua/sweep.lua. Its cost is proportional to the entries due, not to the
// users online.
func (s *Store) Sweep(ctx context.Context, limit int) (SweepResult, error) {
	keys := append(s.baseKeys(3), s.keys.SweepMarker(), s.keys.GraceCutoff(), s.keys.Resync())
	args := append(s.baseArgs(3), limit, s.opts.OutageThreshold.Milliseconds(), s.opts.TTL.Milliseconds())
	vals, err := s.run(ctx, scriptSweep, keys, args...).Int64Slice()
	if err != nil {
		return SweepResult{}, fmt.Errorf("sweep due users: %w", scriptError(err))
	}
	if len(vals) != 4 {
		return SweepResult{}, fmt.Errorf("sweep due users: unexpected reply %v", vals)
	}
	return SweepResult{Claimed: int(vals[0]), Graced: int(vals[1]), More: vals[2] == 1, Reannounce: vals[3] == 1}, nil
}

// ErrClaimDeferred is returned by Claim when sweeps have stopped or a grace
// pass is running: the next sweep decides about those users.
var ErrClaimDeferred = errors.New("claim deferred to the sweep after an outage")

// Claim is the keyspace-event fast path: it claims the sessions of those of
// ids whose presence key is gone and appends their offline events. Users
// refreshed since their key expired, or already claimed, are left alone. It returns
// the number claimed.
func (s *Store) Claim(ctx context.Context, ids []string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	keys := append(s.baseKeys(2), s.keys.SweepMarker(), s.keys.GraceCutoff())
	args := append(s.baseArgs(1+len(ids)), s.opts.OutageThreshold.Milliseconds())
	for _, id := range ids {
		args = append(args, id)
	}
	n, err := s.run(ctx, scriptClaim, keys, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("claim %d expired users: %w", len(ids), scriptError(err))
	}
	if n < 0 {
		return 0, ErrClaimDeferred
	}
	return int(n), nil
}

// Published is an outbox entry a replica published: its id and the
// highest event version in it. See ResetAfterLoss.
type Published struct {
	Entry   string
	Version int64
}

// ResetAfterLoss checks whether Redis lost writes after the caller
// published them, and announces it. entries are the outbox entries the
// caller published since its previous call, plus the newest one before
// them; version is the highest version it ever published. Redis loses a
// suffix of its writes (a restart from an older RDB snapshot, a failover to
// a replica that lagged), keeping the data set, so a published entry gone
// from the outbox without having been trimmed means sessions whose onlines
// were published may be gone without an offline. Then, in one script, it
// queues one reset event (reason data_loss) whose version is above
// version, rewrites the epoch with it, and starts the walk that
// re-announces the surviving sessions (Reannounce). It returns the reset's
// version, or 0 when nothing was lost or the loss was announced already
// (by another replica). Safe to call from every replica: one reset per
// loss. A trim never removes an entry younger than Options.OutboxRetention,
// so a loss is told apart from a trim for certain while the entries are
// younger than that; see lua/reset.lua.
func (s *Store) ResetAfterLoss(ctx context.Context, entries []Published, version int64) (int64, error) {
	keys := append(s.baseKeys(2), s.keys.Resync(), s.keys.OutboxFloor())
	args := append(s.baseArgs(2+2*len(entries)), s.opts.OutboxRetention.Milliseconds(), strconv.FormatInt(version, 10))
	for _, e := range entries {
		args = append(args, e.Entry, strconv.FormatInt(e.Version, 10))
	}
	v, err := s.run(ctx, scriptReset, keys, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("check %d published outbox entries for lost writes: %w", len(entries), scriptError(err))
	}
	return v, nil
}

// ReannounceShards is how many sessions shards one Reannounce call walks:
// about 4096 sessions when the shard count matches the load.
const ReannounceShards = 64

// ReannounceResult is what one Reannounce step did.
type ReannounceResult struct {
	Announced int  // sessions given a new online event (reason "resync")
	More      bool // shards remain: call again (unless Waiting)
	// Waiting: the reset has not been published yet, so nothing was done;
	// call again later (the next sweep reports the walk again).
	Waiting bool
}

// Reannounce takes one step (ReannounceShards shards) of the walk a
// partial-loss reset started: every session opened before the reset gets a
// new online event (reason "resync") with a version above the reset's, and
// keeps that version. The walk's cursor is in Redis and moves in the same
// script, so any replica may take any step and no shard is walked twice.
// The walk starts once the reset has been published (acknowledged in the
// outbox's consumer group), so that consumers get the reset before any
// re-announcement. Without a walk under way it does nothing.
func (s *Store) Reannounce(ctx context.Context) (ReannounceResult, error) {
	keys := append(s.baseKeys(1), s.keys.Resync())
	args := append(s.baseArgs(3), ReannounceShards, s.opts.TTL.Milliseconds(), OutboxGroup)
	vals, err := s.run(ctx, scriptReannounce, keys, args...).Int64Slice()
	if err != nil {
		return ReannounceResult{}, fmt.Errorf("re-announce sessions after data loss: %w", scriptError(err))
	}
	if len(vals) != 3 {
		return ReannounceResult{}, fmt.Errorf("re-announce sessions after data loss: unexpected reply %v", vals)
	}
	return ReannounceResult{Announced: int(vals[0]), More: vals[1] == 1, Waiting: vals[2] == 1}, nil
}
