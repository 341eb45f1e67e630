package presence_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// Benchmarks of the store's scripts against a real redis-server (one per
// top-level benchmark, started by internal/testenv and killed when it ends;
// no mocks). Run them with
//
//	go test -run '^$' -bench . -benchmem ./presence/
//
// ns/op is one store call; ids/s is the ids it handled per second. The
// client, Redis and the Lua scripts all run on this machine, so the figures
// include the round trip over loopback and the client's encoding.
// Allocations per op include building the ids of new users (one string
// each), which a real caller has already done.

func benchStore(b *testing.B, rdb *redis.Client, ttl time.Duration) *presence.Store {
	b.Helper()
	s := presence.NewStore(rdb, presence.Options{Prefix: testenv.Prefix(b) + ":", TTL: ttl, OutageThreshold: time.Hour})
	if err := s.Ping(context.Background()); err != nil {
		b.Fatal(err)
	}
	return s
}

func reportIDs(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), "ids/s")
}

// ids returns n ids "<prefix><start>".."<prefix><start+n-1>".
func ids(prefix string, start, n int) []string {
	out := make([]string, n)
	buf := make([]byte, 0, len(prefix)+20)
	for i := range out {
		out[i] = string(strconv.AppendInt(append(buf[:0], prefix...), int64(start+i), 10))
	}
	return out
}

// BenchmarkHeartbeat is Store.Heartbeat with 1, 100 and 1000 ids per call:
// "new" starts a session for each id (SET, ZADD, HSET and an outbox XADD
// per id), "refresh" extends sessions that exist (SET and ZADD per id).
func BenchmarkHeartbeat(b *testing.B) {
	rdb := testenv.StartRedis(b).Client(b)
	ctx := context.Background()
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("new/ids=%d", n), func(b *testing.B) {
			s := benchStore(b, rdb, time.Hour)
			next := 0
			buf := make([]string, n)
			for b.Loop() {
				for j := range buf {
					buf[j] = "u" + strconv.Itoa(next)
					next++
				}
				vs, err := s.Heartbeat(ctx, buf)
				if err != nil {
					b.Fatal(err)
				}
				if vs[0] == 0 {
					b.Fatal("a new user's heartbeat started no session")
				}
			}
			reportIDs(b, n)
		})
		b.Run(fmt.Sprintf("refresh/ids=%d", n), func(b *testing.B) {
			s := benchStore(b, rdb, time.Hour)
			users := ids("u", 0, n)
			if _, err := s.Heartbeat(ctx, users); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				vs, err := s.Heartbeat(ctx, users)
				if err != nil {
					b.Fatal(err)
				}
				if vs[0] != 0 {
					b.Fatal("a refresh started a new session")
				}
			}
			reportIDs(b, n)
		})
	}
}

// due makes n users due: sessions with a 1ms TTL, then a wait of wait: 3 ms
// lets the keys expire (enough for Claim); 110 ms also passes the end of the
// deadlines' 100 ms index slot (the sweep reads a slot once it has ended).
// The caller stops the timer around it.
func due(b *testing.B, short *presence.Store, prefix string, start, n int, wait time.Duration) []string {
	users := ids(prefix, start, n)
	if _, err := short.Heartbeat(context.Background(), users); err != nil {
		b.Fatal(err)
	}
	time.Sleep(wait)
	return users
}

// BenchmarkSweep is one reconciler step: "due=1000" claims 1000 users whose
// deadline passed and appends their offline events; "due=0" is the step of
// an idle replica (every replica runs one per PRESENCE_RECONCILE_INTERVAL)
// with 100000 sessions in the index, none due.
func BenchmarkSweep(b *testing.B) {
	rdb := testenv.StartRedis(b).Client(b)
	ctx := context.Background()
	b.Run("due=1000", func(b *testing.B) {
		s := benchStore(b, rdb, time.Millisecond)
		next := 0
		for b.Loop() {
			b.StopTimer()
			due(b, s, "u", next, 1000, 110*time.Millisecond)
			next += 1000
			b.StartTimer()
			res, err := s.Sweep(ctx, 1000)
			if err != nil {
				b.Fatal(err)
			}
			if res.Claimed != 1000 {
				b.Fatalf("claimed %d, want 1000 (%+v)", res.Claimed, res)
			}
		}
		reportIDs(b, 1000)
	})
	b.Run("due=0/online=100000", func(b *testing.B) {
		s := benchStore(b, rdb, time.Hour)
		for start := 0; start < 100000; start += presence.ChunkSize * 4 {
			if _, err := s.Heartbeat(ctx, ids("u", start, presence.ChunkSize*4)); err != nil {
				b.Fatal(err)
			}
		}
		for b.Loop() {
			res, err := s.Sweep(ctx, 1000)
			if err != nil {
				b.Fatal(err)
			}
			if res.Claimed != 0 || res.Graced != 0 {
				b.Fatalf("idle sweep did %+v", res)
			}
		}
	})
}

// BenchmarkClaim is the keyspace-event fast path: Claim of 1 and of 1000
// users whose deadline passed.
func BenchmarkClaim(b *testing.B) {
	rdb := testenv.StartRedis(b).Client(b)
	ctx := context.Background()
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("ids=%d", n), func(b *testing.B) {
			s := benchStore(b, rdb, time.Millisecond)
			// Claim defers to the sweep unless a sweep ran recently.
			if _, err := s.Sweep(ctx, 1); err != nil {
				b.Fatal(err)
			}
			next := 0
			for b.Loop() {
				b.StopTimer()
				users := due(b, s, "u", next, n, 3*time.Millisecond)
				next += n
				b.StartTimer()
				got, err := s.Claim(ctx, users)
				if err != nil {
					b.Fatal(err)
				}
				if got != n {
					b.Fatalf("claimed %d, want %d", got, n)
				}
			}
			reportIDs(b, n)
		})
	}
}

// BenchmarkListMillion pages through 1M open sessions with Store.List at
// the query service's default page of 10000 ids. The sessions are started
// with Store.Heartbeat in chunks before timing (about 30 s).
func BenchmarkListMillion(b *testing.B) {
	rdb := testenv.StartRedis(b).Client(b)
	ctx := context.Background()
	s := benchStore(b, rdb, time.Hour)
	const total = 1_000_000
	for start := 0; start < total; start += 10_000 {
		if _, err := s.Heartbeat(ctx, ids("u", start, 10_000)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		n, pages, cursor := 0, 0, ""
		for {
			p, err := s.List(ctx, cursor, 10_000)
			if err != nil {
				b.Fatal(err)
			}
			n += len(p.UserIDs)
			pages++
			if p.Cursor == "" {
				break
			}
			cursor = p.Cursor
		}
		if n != total {
			b.Fatalf("listed %d of %d", n, total)
		}
		b.ReportMetric(float64(pages), "pages")
	}
}

// BenchmarkMemoryPerUser reports the Redis memory one online user costs:
// 100000 sessions (TTL about 1 h, nothing expires) with the shard count at
// users/64 as README recommends, and the index filled as users arriving
// over time fill it (each 100 ms slot holding 64 entries per bucket, the
// fill presence-bench measured at 1M users). "B/user" is used_memory after
// minus before (the outbox deleted first: the relay trims it), divided by
// the users; "index-B/user" and "sessions-B/user" are MEMORY USAGE of the
// index buckets and directory, and of the sessions shards, per user. The
// seed's bare key is the rest. One op loads and measures the whole set.
func BenchmarkMemoryPerUser(b *testing.B) {
	const users = 100_000
	shards := users / 64
	perSlot := 64 * ((shards + 255) / 256) // 64 entries in each of a slot's buckets
	rdb := testenv.StartRedis(b).Client(b)
	ctx := context.Background()
	var total, index, sessions float64
	for b.Loop() {
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		before := usedMemory(b, rdb)
		prefix := testenv.Prefix(b) + ":"
		for start, slot := 0, 0; start < users; start, slot = start+perSlot, slot+1 {
			// One call per slot: a TTL 100 ms longer than the last one's.
			s := presence.NewStore(rdb, presence.Options{Prefix: prefix, TTL: time.Hour + time.Duration(slot)*100*time.Millisecond, Shards: shards})
			if _, err := s.Heartbeat(ctx, ids("u", start, min(perSlot, users-start))); err != nil {
				b.Fatal(err)
			}
		}
		if err := rdb.Del(ctx, prefix+"outbox").Err(); err != nil {
			b.Fatal(err)
		}
		total = float64(usedMemory(b, rdb)-before) / users
		index = float64(keysMemory(b, rdb, prefix+"d:*")+keysMemory(b, rdb, prefix+"dir")) / users
		sessions = float64(keysMemory(b, rdb, prefix+"s:*")) / users
	}
	b.ReportMetric(total, "B/user")
	b.ReportMetric(index, "index-B/user")
	b.ReportMetric(sessions, "sessions-B/user")
}

func usedMemory(b *testing.B, rdb *redis.Client) int64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no used_memory in INFO memory")
	return 0
}

// keysMemory sums MEMORY USAGE (every element counted) of the keys matching pattern.
func keysMemory(b *testing.B, rdb *redis.Client, pattern string) int64 {
	b.Helper()
	ctx := context.Background()
	var sum int64
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		n, err := rdb.MemoryUsage(ctx, iter.Val(), 0).Result()
		if err != nil {
			b.Fatal(err)
		}
		sum += n
	}
	if err := iter.Err(); err != nil {
		b.Fatal(err)
	}
	return sum
}
