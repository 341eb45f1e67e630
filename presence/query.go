package presence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The seed's PresenceRepository operations. Writes go through the same
// scripts as the worker, so they keep the deadline index and the outbox
// consistent with the keys; reads see exactly what EXISTS sees.

// SetOnline marks id online (the seed's SET NX EX): it reports true when this
// started a new session (an online event was queued), false for a refresh.
func (s *Store) SetOnline(ctx context.Context, id string) (bool, error) {
	v, err := s.Heartbeat(ctx, []string{id})
	if err != nil {
		return false, err
	}
	return v[0] != 0, nil
}

// RefreshOnline extends id's presence by one TTL (the seed's SET EX); if id
// had no session it starts one.
func (s *Store) RefreshOnline(ctx context.Context, id string) error {
	_, err := s.Heartbeat(ctx, []string{id})
	return err
}

// DeleteOnline marks id offline now (the seed's DEL): it reports true when id
// was online (an offline event was queued).
func (s *Store) DeleteOnline(ctx context.Context, id string) (bool, error) {
	v, err := s.Disconnect(ctx, []string{id})
	if err != nil {
		return false, err
	}
	return v[0] != 0, nil
}

// IsOnline reports whether id's presence key exists (the seed's EXISTS).
func (s *Store) IsOnline(ctx context.Context, id string) (bool, error) {
	n, err := s.rdb.Exists(ctx, s.keys.User(id)).Result()
	if err != nil {
		return false, fmt.Errorf("is online %q: %w", id, err)
	}
	return n == 1, nil
}

// GetOnlineUsers returns those of ids that are online, in the order given,
// in one round trip (one MGET of the presence keys).
func (s *Store) GetOnlineUsers(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.keys.User(id)
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

// List returns one page of the users in the deadline index, using ZSCAN:
// a user online for the whole listing is returned at least once; a user who
// comes or goes during it may or may not appear, and a user may appear
// twice if the index is resized meanwhile. limit is a hint (ZSCAN COUNT);
// a page may hold somewhat more or fewer ids.
func (s *Store) List(ctx context.Context, cursor string, limit int) (Page, error) {
	var cur uint64
	if cursor != "" {
		c, err := strconv.ParseUint(cursor, 10, 64)
		if err != nil {
			return Page{}, fmt.Errorf("%w: %q", ErrInvalidCursor, cursor)
		}
		cur = c
	}
	vals, next, err := s.rdb.ZScan(ctx, s.keys.Deadlines(), cur, "", int64(limit)).Result()
	if err != nil {
		return Page{}, fmt.Errorf("list online users: %w", err)
	}
	ids := make([]string, 0, len(vals)/2)
	for i := 0; i < len(vals); i += 2 {
		ids = append(ids, vals[i])
	}
	p := Page{UserIDs: ids}
	if next != 0 {
		p.Cursor = strconv.FormatUint(next, 10)
	}
	return p, nil
}

// ErrInvalidCursor is returned by List for a cursor it did not produce.
var ErrInvalidCursor = errors.New("invalid cursor")

// GetAllOnlineUsers returns every user online (the seed's SCAN loop, but over
// the deadline index, never KEYS). For large sets prefer List.
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

// Count returns the number of users online (sessions in the deadline index).
func (s *Store) Count(ctx context.Context) (int64, error) {
	n, err := s.rdb.ZCard(ctx, s.keys.Deadlines()).Result()
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
}

// Status returns id's presence in one round trip. A user is online while
// their presence key exists, as for the seed's EXISTS.
func (s *Store) Status(ctx context.Context, id string) (Status, error) {
	var exists *redis.IntCmd
	var score *redis.FloatCmd
	var version *redis.StringCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.Exists(ctx, s.keys.User(id))
		score = p.ZScore(ctx, s.keys.Deadlines(), id)
		version = p.HGet(ctx, s.keys.Sessions(), id)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return Status{}, fmt.Errorf("status of %q: %w", id, err)
	}
	st := Status{UserID: id, Online: exists.Val() == 1}
	if !st.Online {
		return st, nil
	}
	if sc, err := score.Result(); err == nil {
		st.ExpiresAt = time.UnixMilli(int64(sc)).UTC()
	}
	if v, err := version.Int64(); err == nil {
		st.Version = v
		st.Since = time.UnixMicro(v).UTC()
	}
	return st, nil
}
