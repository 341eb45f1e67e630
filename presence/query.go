package presence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
)

// The seed-compatible API: the seed's PresenceRepository operations
// (setOnline, refreshOnline, deleteOnline, isOnline, getOnlineUsers,
// getAllOnlineUsers), a requirement of the design document, kept for
// programs that used the repository and tested in TestSeedOperations. The
// worker itself uses Heartbeat and Disconnect. Writes go through the same
// scripts as the worker, so they keep the deadline index and the outbox
// consistent with the keys; reads see exactly what EXISTS sees. The TTL is
// the store's (Options.TTL), not an argument.

// SetOnline is the seed's setOnline (SET NX EX), seed-compatible API: it
// marks id online and reports true when this started a new session (an
// online event was queued), false for a refresh. It fails with ErrKeyConflict when id's key holds another type.
func (s *Store) SetOnline(ctx context.Context, id string) (bool, error) {
	v, err := s.Heartbeat(ctx, []string{id})
	if err != nil {
		return false, err
	}
	if v[0] == KeyConflict {
		return false, fmt.Errorf("set %q online: %w", id, ErrKeyConflict)
	}
	return v[0] != 0, nil
}

// RefreshOnline is the seed's refreshOnline (SET EX), seed-compatible API:
// it extends id's presence by one TTL; if id had no session it starts one.
// It fails with ErrKeyConflict when id's key holds another type.
func (s *Store) RefreshOnline(ctx context.Context, id string) error {
	_, err := s.SetOnline(ctx, id)
	return err
}

// DeleteOnline is the seed's deleteOnline (DEL), seed-compatible API: it
// marks id offline now and reports true when id was online (an offline
// event was queued). It fails with ErrKeyConflict (and deletes nothing)
// when id's key holds another type.
func (s *Store) DeleteOnline(ctx context.Context, id string) (bool, error) {
	v, err := s.Disconnect(ctx, []string{id})
	if err != nil {
		return false, err
	}
	if v[0] == KeyConflict {
		return false, fmt.Errorf("delete %q: %w", id, ErrKeyConflict)
	}
	return v[0] != 0, nil
}

// IsOnline is the seed's isOnline (EXISTS), seed-compatible API: it reports
// whether id's presence key exists.
func (s *Store) IsOnline(ctx context.Context, id string) (bool, error) {
	n, err := s.rdb.Exists(ctx, s.keys.User(id)).Result()
	if err != nil {
		return false, fmt.Errorf("is online %q: %w", id, err)
	}
	return n == 1, nil
}

// GetOnlineUsers is the seed's getOnlineUsers, seed-compatible API (and the
// query service's online query without the view): it returns those of ids
// that are online, each once, in the order of first appearance, in one
// round trip (one MGET of the presence keys, where the seed pipelined an
// EXISTS per id). ids is not modified.
func (s *Store) GetOnlineUsers(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	ids = contract.AppendUnique(make([]string, 0, len(ids)), ids)
	// Every key in one allocation: a key per id is a fifth of this call's
	// CPU with 10k ids.
	prefix := s.keys.UserPrefix()
	size := 0
	for _, id := range ids {
		size += len(prefix) + len(id)
	}
	buf := make([]byte, 0, size)
	keys := make([]string, len(ids))
	for i, id := range ids {
		start := len(buf)
		buf = append(append(buf, prefix...), id...)
		keys[i] = unsafe.String(&buf[start], len(buf)-start)
	}
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("get online users among %d: %w", len(ids), err)
	}
	online := make([]string, 0, len(ids))
	for i, v := range vals {
		if v != nil {
			online = append(online, ids[i])
		}
	}
	return online, nil
}

// Page is one page of a listing of the users online.
type Page struct {
	UserIDs []string
	// Cursor continues the listing; "" means the listing is complete.
	Cursor string
}

// List returns one page of the users with an open session, walking the
// sessions shards in order (one script call): a user online for the whole
// listing is returned at least once (exactly once unless a shard holding
// far more users than Redis keeps compact is resized meanwhile); a user who
// comes or goes during it may or may not appear. limit is a hint: a page
// may exceed it by one shard (about 64 ids when the shard count matches the
// load), and a smaller limit makes a smaller page from the same cursor.
// Cursors are "<shard>-<HSCAN cursor>".
func (s *Store) List(ctx context.Context, cursor string, limit int) (Page, error) {
	shard, inner := "0", "0"
	if cursor != "" {
		a, b, ok := strings.Cut(cursor, "-")
		if !ok || !isDigits(a) || !isDigits(b) || len(a) > 9 || len(b) > 20 {
			return Page{}, fmt.Errorf("%w: %q", ErrInvalidCursor, cursor)
		}
		shard, inner = a, b
	}
	vals, err := s.run(ctx, scriptList, []string{s.keys.Epoch()}, s.keys.Prefix(), shard, inner, max(1, limit)).Slice()
	if err != nil {
		return Page{}, fmt.Errorf("list online users: %w", scriptError(err))
	}
	if len(vals) != 3 {
		return Page{}, fmt.Errorf("list online users: unexpected reply %v", vals)
	}
	next, _ := vals[0].(int64)
	nextInner, _ := vals[1].(string)
	var ids []string
	if joined, _ := vals[2].(string); joined != "" {
		ids = strings.Split(joined, "\n")
	}
	p := Page{UserIDs: ids}
	if next >= 0 {
		p.Cursor = strconv.FormatInt(next, 10) + "-" + nextInner
	}
	return p, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ErrInvalidCursor is returned by List for a cursor it did not produce.
var ErrInvalidCursor = errors.New("invalid cursor")

// GetAllOnlineUsers is the seed's getAllOnlineUsers, seed-compatible API: it
// returns every user with an open session, walking the sessions shards with
// List (where the seed ran SCAN MATCH over the keys; never KEYS). For large
// sets prefer List.
func (s *Store) GetAllOnlineUsers(ctx context.Context) ([]string, error) {
	var all []string
	cursor := ""
	for {
		p, err := s.List(ctx, cursor, 1000)
		if err != nil {
			return nil, err
		}
		all = append(all, p.UserIDs...)
		if p.Cursor == "" {
			return all, nil
		}
		cursor = p.Cursor
	}
}

// Count returns the number of users with an open session.
func (s *Store) Count(ctx context.Context) (int64, error) {
	n, err := s.rdb.Get(ctx, s.keys.Count()).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("count online users: %w", err)
	}
	return n, nil
}

// Status is one user's presence.
type Status struct {
	UserID    string
	Online    bool
	Since     time.Time // start of the session (zero when offline)
	ExpiresAt time.Time // the deadline (zero when offline)
	Version   int64     // the session's online event version (0 when offline)
	// Connections are the live connections the user has records of (none
	// for a user kept online by plain heartbeats only).
	Connections []Connection
	// HeldUntil is set while the user's offline is held for the grace: no
	// live connection, the session still open (Version set).
	HeldUntil time.Time
}

// Connection is one live connection of a user.
type Connection struct {
	ID        string // "" for the implicit connection
	GatewayID string
	Since     time.Time
	ExpiresAt time.Time
}

// Status returns id's presence in one round trip. A user is online while
// their presence key exists, as for the seed's EXISTS.
func (s *Store) Status(ctx context.Context, id string) (Status, error) {
	vals, err := s.run(ctx, scriptStatus, []string{s.keys.Epoch(), s.keys.User(id)}, s.keys.Prefix(), id).Slice()
	if err != nil {
		return Status{}, fmt.Errorf("status of %q: %w", id, scriptError(err))
	}
	if len(vals) != 4 {
		return Status{}, fmt.Errorf("status of %q: unexpected reply %v", id, vals)
	}
	pttl, _ := vals[0].(int64)
	st := Status{UserID: id, Online: pttl != -2}
	if held, _ := vals[3].(string); held != "" {
		if _, until, ok := strings.Cut(held, " "); ok {
			if ms, err := strconv.ParseInt(until, 10, 64); err == nil {
				st.HeldUntil = time.UnixMilli(ms).UTC()
			}
		}
	}
	conns, _ := vals[2].([]any)
	for i := 0; i+3 < len(conns); i += 4 {
		c := Connection{}
		c.ID, _ = conns[i].(string)
		c.GatewayID, _ = conns[i+1].(string)
		since, _ := conns[i+2].(int64)
		dl, _ := conns[i+3].(int64)
		c.Since, c.ExpiresAt = time.UnixMilli(since).UTC(), time.UnixMilli(dl).UTC()
		st.Connections = append(st.Connections, c)
	}
	if !st.Online && st.HeldUntil.IsZero() {
		return st, nil
	}
	if pttl >= 0 {
		// The deadline as Redis sees it, read on this host's clock: exact to
		// the round trip.
		st.ExpiresAt = time.Now().Add(time.Duration(pttl) * time.Millisecond).UTC().Truncate(time.Millisecond)
	}
	var v int64
	switch x := vals[1].(type) {
	case int64:
		v = x
	case string:
		v, _ = strconv.ParseInt(x, 10, 64)
	}
	if v > 0 {
		st.Version = v
		st.Since = time.UnixMicro(v).UTC()
	}
	return st, nil
}

// Footprint counts what the presence data set holds in Redis, for
// diagnostics and tests. It reads every sessions shard and every index
// bucket, so its cost grows with the users online: do not call it often.
type Footprint struct {
	Sessions     int64 // open sessions (fields in the sessions shards)
	Count        int64 // the online count key
	IndexEntries int64 // entries in the deadline index, stale ones included
	Buckets      int64 // index buckets (members of the directory)
	Outbox       int64 // outbox entries (batches of events)
}

// Footprint returns the counts; see the type.
func (s *Store) Footprint(ctx context.Context) (Footprint, error) {
	var f Footprint
	count, err := s.Count(ctx)
	if err != nil {
		return f, err
	}
	f.Count = count
	shards := s.opts.Shards
	if v, err := s.rdb.Get(ctx, s.keys.Epoch()).Result(); err == nil {
		if ep, err := parseEpoch(v); err == nil {
			shards = ep.shards
		}
	}
	buckets, err := s.rdb.ZRange(ctx, s.keys.Dir(), 0, -1).Result()
	if err != nil {
		return f, fmt.Errorf("footprint: %w", err)
	}
	f.Buckets = int64(len(buckets))
	var sess, idx []*redis.IntCmd
	var outbox *redis.IntCmd
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := 0; i < shards; i++ {
			sess = append(sess, p.HLen(ctx, s.keys.Sessions(i)))
		}
		for _, b := range buckets {
			idx = append(idx, p.HLen(ctx, b))
		}
		outbox = p.XLen(ctx, s.keys.Outbox())
		return nil
	})
	if err != nil {
		return f, fmt.Errorf("footprint: %w", err)
	}
	for _, c := range sess {
		f.Sessions += c.Val()
	}
	for _, c := range idx {
		f.IndexEntries += c.Val()
	}
	f.Outbox = outbox.Val()
	return f, nil
}
