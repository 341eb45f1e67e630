package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The memory breakdown groups presenced's shared keys by name. It knows both
// key layouts: the old one (P+"deadlines" ZSET, P+"sessions" HASH) and the
// bucketed one (P+"s:"+N sessions shards, P+"d:"+slot+":"+k deadline index
// buckets with the P+"dir" ZSET of buckets). Per-user keys (P+"user:"+id)
// are not scanned: they are what is left of the data memory.
const (
	groupUsers    = "user keys and the rest"
	groupSessions = "sessions"
	groupIndex    = "deadline index"
	groupOutbox   = "outbox"
	groupOther    = "other"
)

// breakdownGroups is the order the groups are printed in.
var breakdownGroups = []string{groupUsers, groupSessions, groupIndex, groupOutbox, groupOther}

// keyGroup returns the group of a key under the prefix, given the part of
// its name after the prefix.
func keyGroup(rest string) string {
	switch {
	case strings.HasPrefix(rest, "user:"):
		return groupUsers
	case strings.HasPrefix(rest, "s:"), rest == "sessions":
		return groupSessions
	case strings.HasPrefix(rest, "d:"), rest == "dir", rest == "deadlines":
		return groupIndex
	case rest == "outbox":
		return groupOutbox
	default: // count, clock, epoch, sweep, grace, and anything new
		return groupOther
	}
}

// globEscape escapes the characters of s that Redis's glob matching
// (SCAN MATCH) treats specially.
func globEscape(s string) string {
	var sb strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// breakdownMatch is the SCAN MATCH pattern for every key under prefix
// except the user keys ("user:..."): Redis's glob negates a class with '^'
// ([^u]), not '!'. A key under the prefix whose name starts with 'u' but is
// not a user key is not scanned either; it counts with the user keys.
func breakdownMatch(prefix string) string { return globEscape(prefix) + "[^u]*" }

// keyBreakdown is the result of one scan.
type keyBreakdown struct {
	Bytes map[string]int64 // MEMORY USAGE ... SAMPLES 0, summed per group
	Keys  map[string]int   // keys per group
	Scans int              // SCAN calls (each walks COUNT slots of the whole keyspace)
	Took  time.Duration
}

// keyBreakdown SCANs the keys under prefix (user keys excluded by the
// MATCH pattern) and sums MEMORY USAGE ... SAMPLES 0 of each, by group.
// SCAN still walks every key in the database (user and background keys
// too); MATCH only filters what it returns, so the cost grows with the
// keyspace: COUNT is large to keep the round trips few.
func scanBreakdown(ctx context.Context, rdb *redis.Client, prefix string) (keyBreakdown, error) {
	kb := keyBreakdown{Bytes: map[string]int64{}, Keys: map[string]int{}}
	t0 := time.Now()
	match := breakdownMatch(prefix)
	var cursor uint64
	for {
		keys, next, err := rdb.Scan(ctx, cursor, match, 10000).Result()
		if err != nil {
			return kb, fmt.Errorf("scan %s: %w", match, err)
		}
		kb.Scans++
		if len(keys) > 0 {
			cmds := make([]*redis.IntCmd, len(keys))
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, k := range keys {
					cmds[i] = p.MemoryUsage(ctx, k, 0)
				}
				return nil
			})
			if err != nil && err != redis.Nil {
				return kb, fmt.Errorf("memory usage: %w", err)
			}
			for i, k := range keys {
				v, err := cmds[i].Result()
				if err != nil { // gone since the SCAN
					continue
				}
				g := keyGroup(strings.TrimPrefix(k, prefix))
				kb.Bytes[g] += v
				kb.Keys[g]++
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	kb.Took = time.Since(t0)
	return kb, nil
}

// perUser turns a scan into bytes per user: each group's bytes over n, and
// the user keys and the rest as what remains of dataPerUser.
func (kb keyBreakdown) perUser(dataPerUser float64, n int) map[string]float64 {
	out := map[string]float64{}
	rest := dataPerUser
	for g, v := range kb.Bytes {
		if g == groupUsers {
			continue
		}
		out[g] = float64(v) / float64(n)
		rest -= out[g]
	}
	out[groupUsers] = rest
	return out
}

func sumInts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
