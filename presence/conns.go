package presence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
)

// Per-entry results of Connect and Release besides versions, 0 and
// KeyConflict (lua/lib.lua: TOO_MANY, STALE).
const (
	// TooManyConnections: the user has MaxConnections live connections and
	// the entry's connection is new; nothing was written.
	TooManyConnections int64 = -2
	// Stale: the entry's seq is not above the last applied for its
	// connection (or a disconnect's tombstone), so it was ignored.
	Stale int64 = -3
)

// ErrTooManyConnections is what a TooManyConnections result means.
var ErrTooManyConnections = errors.New("the user has the most live connections allowed (PRESENCE_MAX_CONNECTIONS_PER_USER); this connection was not stored and the others are untouched")

func (s *Store) ttlMS() string   { return strconv.FormatInt(s.opts.TTL.Milliseconds(), 10) }
func (s *Store) graceMS() string { return strconv.FormatInt(s.opts.OfflineGrace.Milliseconds(), 10) }

// Connect starts or refreshes connections (entries valid and unique per
// user and connection; see contract.Conn). A user whose first live
// connection this is starts a session (its online event's version is the
// entry's result) or continues one whose offline is held; a refresh of a
// known connection is one O(1) step. Results: the version, 0, KeyConflict,
// TooManyConnections or Stale, one per entry. See lua/connect.lua.
func (s *Store) Connect(ctx context.Context, conns []contract.Conn) ([]int64, error) {
	res, err := s.runChunks(ctx, scriptConnect, len(conns), s.connectCalls(conns))
	if err != nil {
		return nil, fmt.Errorf("heartbeat %d connections: %w", len(conns), err)
	}
	return res, nil
}

// Release ends connections by disconnect (GatewayID is not used). A user
// left with no live connection goes offline, reason "disconnect", or has
// the offline held for OfflineGrace. Results: the offline's version, 0,
// KeyConflict or Stale, one per entry. See lua/release.lua.
func (s *Store) Release(ctx context.Context, conns []contract.Conn) ([]int64, error) {
	res, err := s.runChunks(ctx, scriptRelease, len(conns), s.releaseCalls(conns))
	if err != nil {
		return nil, fmt.Errorf("disconnect %d connections: %w", len(conns), err)
	}
	return res, nil
}

// Kick ends every connection of ids at once, without grace: each open
// session ends with reason "kicked". Results: the offline's version, 0
// (no session) or KeyConflict, one per id.
func (s *Store) Kick(ctx context.Context, ids []string) ([]int64, error) {
	res, err := s.runChunks(ctx, scriptRelease, len(ids), s.kickCalls(ids))
	if err != nil {
		return nil, fmt.Errorf("end every connection of %d users: %w", len(ids), err)
	}
	return res, nil
}

// connectCalls builds the connect script's calls of conns (see runChunks).
func (s *Store) connectCalls(conns []contract.Conn) func(lo, hi int) ([]string, []any) {
	max := strconv.Itoa(s.opts.MaxConnections)
	return func(lo, hi int) ([]string, []any) {
		chunk := conns[lo:hi]
		keys := s.baseKeys(len(chunk))
		args := append(s.baseArgs(2+4*len(chunk)), s.ttlMS(), max)
		for _, c := range chunk {
			keys = append(keys, s.keys.User(c.UserID))
			args = append(args, c.UserID, c.ConnectionID, c.GatewayID, strconv.FormatInt(c.Seq, 10))
		}
		return keys, args
	}
}

// releaseCalls builds the release script's calls of conns.
func (s *Store) releaseCalls(conns []contract.Conn) func(lo, hi int) ([]string, []any) {
	return func(lo, hi int) ([]string, []any) {
		chunk := conns[lo:hi]
		keys := s.baseKeys(len(chunk))
		args := append(s.baseArgs(3+3*len(chunk)), s.ttlMS(), s.graceMS(), "conn")
		for _, c := range chunk {
			keys = append(keys, s.keys.User(c.UserID))
			args = append(args, c.UserID, c.ConnectionID, strconv.FormatInt(c.Seq, 10))
		}
		return keys, args
	}
}

// kickCalls builds the release script's calls that end every connection
// of ids.
func (s *Store) kickCalls(ids []string) func(lo, hi int) ([]string, []any) {
	return func(lo, hi int) ([]string, []any) {
		chunk := ids[lo:hi]
		keys := s.baseKeys(len(chunk))
		args := append(s.baseArgs(3+len(chunk)), s.ttlMS(), s.graceMS(), "kick")
		for _, id := range chunk {
			keys = append(keys, s.keys.User(id))
			args = append(args, id)
		}
		return keys, args
	}
}

// Lease is what a gateway's lease message did.
type Lease struct {
	// Number is the lease the gateway holds now (0 after End).
	Number int64
	// Replaced is the lease of another instance this call made due (a
	// gateway restarted), or 0.
	Replaced int64
	// ExpiresAt is when Number lapses unless renewed.
	ExpiresAt time.Time
}

// RenewLease takes or extends gateway's lease for instance (random per
// gateway process start) by GatewayLease. A lease held by another instance
// is made due: the sweep (Lapse) ends its connections. See lua/lease.lua.
func (s *Store) RenewLease(ctx context.Context, gateway, instance string) (Lease, error) {
	return s.lease(ctx, gateway, instance, "renew")
}

// EndLease makes gateway's lease due now if instance holds it (a clean
// shutdown): the sweep ends its connections.
func (s *Store) EndLease(ctx context.Context, gateway, instance string) (Lease, error) {
	return s.lease(ctx, gateway, instance, "end")
}

func (s *Store) lease(ctx context.Context, gateway, instance, op string) (Lease, error) {
	keys := s.baseKeys(0)
	args := append(s.baseArgs(4), gateway, instance, s.opts.GatewayLease.Milliseconds(), op)
	vals, err := s.run(ctx, scriptLease, keys, args...).Int64Slice()
	if err != nil {
		return Lease{}, fmt.Errorf("%s lease of gateway %q: %w", op, gateway, scriptError(err))
	}
	if len(vals) != 2 {
		return Lease{}, fmt.Errorf("%s lease of gateway %q: unexpected reply %v", op, gateway, vals)
	}
	l := Lease{Number: vals[0], Replaced: vals[1]}
	if l.Number > 0 {
		l.ExpiresAt = time.Now().Add(s.opts.GatewayLease).UTC().Truncate(time.Millisecond)
	}
	return l, nil
}

// LapseResult is what one Lapse step did.
type LapseResult struct {
	Ended int  // connections ended
	Left  int  // users left with no live connection (offline published or held)
	More  bool // a lease is still due: call again at once
}

// Lapse takes one step (about limit connections) of ending the
// connections of the lease due first: users left with no live connection
// go offline with reason "gateway_lost" (held for OfflineGrace). Every
// replica may call it; the lease's cursor in Redis hands each bucket to
// one call. See lua/lapse.lua.
func (s *Store) Lapse(ctx context.Context, limit int) (LapseResult, error) {
	args := append(s.baseArgs(3), limit, s.graceMS(), s.opts.GatewayLease.Milliseconds())
	vals, err := s.run(ctx, scriptLapse, s.baseKeys(0), args...).Int64Slice()
	if err != nil {
		return LapseResult{}, fmt.Errorf("end connections of lost gateways: %w", scriptError(err))
	}
	if len(vals) != 3 {
		return LapseResult{}, fmt.Errorf("end connections of lost gateways: unexpected reply %v", vals)
	}
	return LapseResult{Ended: int(vals[0]), Left: int(vals[1]), More: vals[2] == 1}, nil
}

// GatewayStatus is a gateway's lease as the gateway query reports it.
type GatewayStatus struct {
	GatewayID   string
	Leased      bool
	InstanceID  string
	ExpiresAt   time.Time
	Connections int64 // registered under the lease, lapsed ones until pruned
}

// Gateway returns gateway's lease and its connection count (two round
// trips).
func (s *Store) Gateway(ctx context.Context, gateway string) (GatewayStatus, error) {
	st := GatewayStatus{GatewayID: gateway}
	p := s.rdb.Pipeline()
	cur := p.Get(ctx, s.keys.Gateway(gateway))
	ttl := p.PTTL(ctx, s.keys.Gateway(gateway))
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return st, fmt.Errorf("gateway %q: %w", gateway, err)
	}
	v, err := cur.Result()
	if errors.Is(err, redis.Nil) {
		return st, nil
	}
	lease, inst, ok := parseLease(v)
	if err != nil || !ok {
		return st, fmt.Errorf("gateway %q: unexpected lease %q (%v)", gateway, v, err)
	}
	st.Leased, st.InstanceID = true, inst
	if d := ttl.Val(); d > 0 {
		st.ExpiresAt = time.Now().Add(d).UTC().Truncate(time.Millisecond)
	}
	n, err := s.rdb.HGet(ctx, s.keys.LeaseCounts(), lease).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return st, fmt.Errorf("gateway %q: %w", gateway, err)
	}
	st.Connections = n
	return st, nil
}
