package seedbaseline

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Queries is the read side of the seed's PresenceRepository: isOnline,
// getOnlineUsers and getAllOnlineUsers. Safe for concurrent use.
type Queries struct {
	rdb    *redis.Client
	prefix string // KeyPrefix+"user:"
	// ScanCount is the SCAN COUNT hint; zero means 100 (the seed's).
	ScanCount int
}

// NewQueries returns the seed's queries over the keys under keyPrefix
// ("presence:").
func NewQueries(rdb *redis.Client, keyPrefix string) *Queries {
	if keyPrefix == "" {
		keyPrefix = "presence:"
	}
	return &Queries{rdb: rdb, prefix: keyPrefix + "user:"}
}

// IsOnline is EXISTS presence:user:{id}.
func (q *Queries) IsOnline(ctx context.Context, id string) (bool, error) {
	n, err := q.rdb.Exists(ctx, q.prefix+id).Result()
	if err != nil {
		return false, fmt.Errorf("is online %q: %w", id, err)
	}
	return n == 1, nil
}

// OnlineAmong is getOnlineUsers: one EXISTS per id, in one pipeline. It
// returns the online ids in the order given.
func (q *Queries) OnlineAmong(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.IntCmd, len(ids))
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.Exists(ctx, q.prefix+id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("online among %d users: %w", len(ids), err)
	}
	online := make([]string, 0, len(ids))
	for i, c := range cmds {
		if c.Val() == 1 {
			online = append(online, ids[i])
		}
	}
	return online, nil
}

// ScanPage is one step of getAllOnlineUsers: SCAN cursor MATCH
// presence:user:* COUNT ScanCount. It returns the ids found and the next
// cursor (0 when the scan is complete). The SCAN walks the whole keyspace,
// not only presence keys.
func (q *Queries) ScanPage(ctx context.Context, cursor uint64) ([]string, uint64, error) {
	count := q.ScanCount
	if count <= 0 {
		count = 100
	}
	keys, next, err := q.rdb.Scan(ctx, cursor, q.prefix+"*", int64(count)).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("scan online users: %w", err)
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = strings.TrimPrefix(k, q.prefix)
	}
	return ids, next, nil
}

// AllOnline is getAllOnlineUsers: the SCAN loop to the end, every id in one
// slice (the seed returned them in one piece). A key present for the whole
// scan is returned at least once; some may be returned twice.
func (q *Queries) AllOnline(ctx context.Context) ([]string, error) {
	var all []string
	var cursor uint64
	for {
		ids, next, err := q.ScanPage(ctx, cursor)
		if err != nil {
			return nil, err
		}
		all = append(all, ids...)
		if next == 0 {
			return all, nil
		}
		cursor = next
	}
}
