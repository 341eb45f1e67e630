package presence_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
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
		total, index, sessions = memoryPerUser(b, rdb, prefix, before, users)
	}
	b.ReportMetric(total, "B/user")
	b.ReportMetric(index, "index-B/user")
	b.ReportMetric(sessions, "sessions-B/user")
}

// memoryPerUser deletes the outbox (the relay trims it) and returns, per
// user, used_memory since before and MEMORY USAGE of the deadline index and
// of the sessions shards.
func memoryPerUser(b *testing.B, rdb *redis.Client, prefix string, before int64, users int) (total, index, sessions float64) {
	b.Helper()
	if err := rdb.Del(context.Background(), prefix+"outbox").Err(); err != nil {
		b.Fatal(err)
	}
	total = float64(usedMemory(b, rdb)-before) / float64(users)
	index = float64(keysMemory(b, rdb, prefix+"d:*")+keysMemory(b, rdb, prefix+"dir")) / float64(users)
	sessions = float64(keysMemory(b, rdb, prefix+"s:*")) / float64(users)
	return total, index, sessions
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

// connID returns connection id k of user i: "c-" and 10 characters (12
// bytes, the size of a typical gateway's connection id), or a 36-byte
// UUID-shaped id when uuid is set.
func connID(i, k int, uuid bool) string {
	if uuid {
		return fmt.Sprintf("%08x-%04x-4000-8000-%012x", i, k, i*7+k)
	}
	return fmt.Sprintf("c-%d%09d", k, i)
}

// benchGateways is the number of gateways the connection benchmarks spread
// a user's connections over: connection k of user i is on gateway
// (i+k) % benchGateways, so a user's connections are on different gateways.
const benchGateways = 5

// userConns returns the connections of users start..start+n-1, k each, on
// the benchmark's gateways.
func userConns(start, n, k int, uuid bool) []contract.Conn {
	out := make([]contract.Conn, 0, n*k)
	for i := start; i < start+n; i++ {
		id := "u" + strconv.Itoa(i)
		for j := range k {
			out = append(out, contract.Conn{UserID: id, ConnectionID: connID(i, j, uuid), GatewayID: "gw-" + strconv.Itoa((i+j)%benchGateways)})
		}
	}
	return out
}

// takeLeases gives every benchmark gateway a lease that outlasts the
// benchmark.
func takeLeases(b *testing.B, s *presence.Store) {
	b.Helper()
	for g := range benchGateways {
		if _, err := s.RenewLease(context.Background(), "gw-"+strconv.Itoa(g), "bench-instance"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryPerConnection is BenchmarkMemoryPerUser's load (100000
// users, shards users/64, the index filled as at 1M users) with the users
// online through named connections on gateways that hold a lease, as
// Store.Connect stores them: "plain" is today's plain heartbeat
// (Store.Heartbeat, no connection data); "conns=K" gives every user K
// connections with ids of 12 bytes ("c-" and 10 characters), each on
// another of 5 leased gateways; "conns=1/uuid" uses 36-byte UUIDs as
// connection ids. Metrics: "B/user" is used_memory after minus before (the
// outbox deleted) per user; "B/extra-conn" is (B/user of conns=K minus
// B/user of conns=1) / (K-1), when conns=1 ran before in the same
// invocation; MEMORY USAGE per user of the connections shards ("conns-"),
// the lease index ("lease-"), the deadline index ("index-") and the
// sessions shards ("sessions-"); "conns-hashtable-%" is the share of
// connections shards Redis holds as a hash table instead of a listpack
// (more fields than hash-max-listpack-entries: 512 in the redis-server
// this machine runs without a config file, 128 in Redis's redis.conf);
// "conns=K/listpack-128" runs conns=K on a redis-server started with
// hash-max-listpack-entries 128.
func BenchmarkMemoryPerConnection(b *testing.B) {
	const users = 100_000
	shards := users / 64
	perSlot := 64 * ((shards + 255) / 256)
	redis512 := testenv.StartRedis(b).Client(b)
	redis128 := testenv.StartRedis(b, testenv.WithConfig("hash-max-listpack-entries", "128")).Client(b)
	ctx := context.Background()
	perUser := map[string]float64{}
	variants := []struct {
		name  string
		k     int
		uuid  bool
		stock bool
	}{{"plain", 0, false, false}, {"conns=1", 1, false, false}, {"conns=2", 2, false, false}, {"conns=3", 3, false, false},
		{"conns=1/uuid", 1, true, false}, {"conns=2/uuid", 2, true, false},
		{"conns=1/listpack-128", 1, false, true}, {"conns=2/listpack-128", 2, false, true}}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			rdb := redis512
			if v.stock {
				rdb = redis128
			}
			var total, index, sessions, conns, lease, hashtable float64
			for b.Loop() {
				if err := rdb.FlushAll(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				before := usedMemory(b, rdb)
				prefix := testenv.Prefix(b) + ":"
				opts := func(slot int) presence.Options {
					return presence.Options{Prefix: prefix, TTL: time.Hour + time.Duration(slot)*100*time.Millisecond, Shards: shards, GatewayLease: 2 * time.Hour}
				}
				if v.k > 0 {
					takeLeases(b, presence.NewStore(rdb, opts(0)))
				}
				for start, slot := 0, 0; start < users; start, slot = start+perSlot, slot+1 {
					// One call per slot: a TTL 100 ms longer than the last one's.
					s := presence.NewStore(rdb, opts(slot))
					n := min(perSlot, users-start)
					var err error
					if v.k == 0 {
						_, err = s.Heartbeat(ctx, ids("u", start, n))
					} else {
						_, err = s.Connect(ctx, userConns(start, n, v.k, v.uuid))
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				total, index, sessions = memoryPerUser(b, rdb, prefix, before, users)
				conns = float64(keysMemory(b, rdb, prefix+"c:*")) / users
				lease = float64(keysMemory(b, rdb, prefix+"g:*")) / users
				if v.k > 0 {
					hashtable = 100 * hashtableShare(b, rdb, prefix+"c:*")
				}
			}
			perUser[v.name] = total
			b.ReportMetric(total, "B/user")
			one := "conns=1"
			switch {
			case v.uuid:
				one += "/uuid"
			case v.stock:
				one += "/listpack-128"
			}
			if base, ok := perUser[one]; ok && v.k >= 2 {
				b.ReportMetric((total-base)/float64(v.k-1), "B/extra-conn")
			}
			b.ReportMetric(conns, "conns-B/user")
			b.ReportMetric(lease, "lease-B/user")
			b.ReportMetric(index, "index-B/user")
			b.ReportMetric(sessions, "sessions-B/user")
			if v.k > 0 {
				b.ReportMetric(hashtable, "conns-hashtable-%")
			}
		})
	}
}

// hashtableShare is the share of the keys matching pattern that Redis
// encodes as a hash table.
func hashtableShare(b *testing.B, rdb *redis.Client, pattern string) float64 {
	b.Helper()
	ctx := context.Background()
	var n, ht int
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		enc, err := rdb.ObjectEncoding(ctx, iter.Val()).Result()
		if err != nil {
			b.Fatal(err)
		}
		n++
		if enc == "hashtable" {
			ht++
		}
	}
	if err := iter.Err(); err != nil {
		b.Fatal(err)
	}
	if n == 0 {
		return 0
	}
	return float64(ht) / float64(n)
}

// redisTime returns the microseconds Redis spent in scripts (EVALSHA and
// EVAL) and the calls of every other command, from INFO commandstats: the
// commands a script runs are counted on their own too.
func redisTime(b *testing.B, rdb *redis.Client) (scriptUsec, commands int64) {
	b.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		rest, ok := strings.CutPrefix(line, "cmdstat_")
		if !ok {
			continue
		}
		name, fields, _ := strings.Cut(rest, ":")
		var calls, usec int64
		for _, f := range strings.Split(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "calls":
				calls, _ = strconv.ParseInt(v, 10, 64)
			case "usec":
				usec, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		switch name {
		case "evalsha", "eval":
			scriptUsec += usec
		case "info", "script|load", "script":
		default:
			commands += calls
		}
	}
	return scriptUsec, commands
}

// BenchmarkRefresh compares the refresh of users that are online: today's
// plain heartbeat (Store.Heartbeat of user ids) against the heartbeat of a
// known connection (Store.Connect of one named connection per user on a
// gateway with a lease, with an increasing seq, as the client's Gateway
// helper sends it), with 1, 100 and 1000 entries per call. "redis-µs/id"
// is Redis's time in the scripts (INFO commandstats, EVALSHA) per entry,
// "cmds/id" the commands the scripts ran per entry.
func BenchmarkRefresh(b *testing.B) {
	rdb := testenv.StartRedis(b).Client(b)
	ctx := context.Background()
	for _, n := range []int{1, 100, 1000} {
		report := func(b *testing.B, usec0, cmds0 int64) {
			usec1, cmds1 := redisTime(b, rdb)
			ops := float64(b.N * n)
			b.ReportMetric(float64(usec1-usec0)/ops, "redis-µs/id")
			b.ReportMetric(float64(cmds1-cmds0)/ops, "cmds/id")
			reportIDs(b, n)
		}
		b.Run(fmt.Sprintf("heartbeat/ids=%d", n), func(b *testing.B) {
			s := benchStore(b, rdb, time.Hour)
			users := ids("u", 0, n)
			if _, err := s.Heartbeat(ctx, users); err != nil {
				b.Fatal(err)
			}
			usec0, cmds0 := redisTime(b, rdb)
			for b.Loop() {
				vs, err := s.Heartbeat(ctx, users)
				if err != nil {
					b.Fatal(err)
				}
				if vs[0] != 0 {
					b.Fatal("a refresh started a new session")
				}
			}
			report(b, usec0, cmds0)
		})
		b.Run(fmt.Sprintf("connect/ids=%d", n), func(b *testing.B) {
			s := presence.NewStore(rdb, presence.Options{Prefix: testenv.Prefix(b) + ":", TTL: time.Hour, OutageThreshold: time.Hour, GatewayLease: time.Hour})
			takeLeases(b, s)
			conns := userConns(0, n, 1, false)
			for i := range conns {
				conns[i].GatewayID = "gw-0"
			}
			if _, err := s.Connect(ctx, conns); err != nil {
				b.Fatal(err)
			}
			usec0, cmds0 := redisTime(b, rdb)
			for b.Loop() {
				for i := range conns {
					conns[i].Seq++
				}
				vs, err := s.Connect(ctx, conns)
				if err != nil {
					b.Fatal(err)
				}
				if vs[0] != 0 {
					b.Fatalf("a refresh of a known connection returned %d", vs[0])
				}
			}
			report(b, usec0, cmds0)
		})
	}
}

// BenchmarkLapse is the loss of a gateway with 200000 connections (one per
// user; 30% of the users have a second connection on another gateway, so
// 140000 go offline): the lease is ended (EndLease: due at once) and
// Store.Lapse is called with the worker's limit of 2000 until no lease is
// due. "steps" is the Lapse calls, "max-step-ms" the longest one (a script
// blocks Redis while it runs), "offline" the users left without a
// connection; ns/op is the whole sweep. The default 16384 shards, as at 1M
// users.
func BenchmarkLapse(b *testing.B) {
	const conns, withOther = 200_000, 60_000
	rdb := testenv.StartRedis(b).Client(b)
	ctx := context.Background()
	var steps, offline int
	var maxStep time.Duration
	for b.Loop() {
		b.StopTimer()
		s := presence.NewStore(rdb, presence.Options{Prefix: testenv.Prefix(b) + ":", TTL: time.Hour, OutageThreshold: time.Hour, GatewayLease: time.Hour})
		takeLeases(b, s)
		for start := 0; start < conns; start += 10_000 {
			cs := userConns(start, 10_000, 1, false)
			for i := range cs {
				cs[i].GatewayID = "gw-0"
			}
			for i := start; i < start+10_000 && i < withOther; i++ {
				cs = append(cs, contract.Conn{UserID: "u" + strconv.Itoa(i), ConnectionID: connID(i, 1, false), GatewayID: "gw-1"})
			}
			if _, err := s.Connect(ctx, cs); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := s.EndLease(ctx, "gw-0", "bench-instance"); err != nil {
			b.Fatal(err)
		}
		steps, offline, maxStep = 0, 0, 0
		ended := 0
		b.StartTimer()
		for {
			t := time.Now()
			res, err := s.Lapse(ctx, 2000)
			if err != nil {
				b.Fatal(err)
			}
			maxStep = max(maxStep, time.Since(t))
			steps++
			ended += res.Ended
			offline += res.Left
			if !res.More {
				break
			}
		}
		b.StopTimer()
		if ended != conns || offline != conns-withOther {
			b.Fatalf("ended %d connections (want %d), %d users offline (want %d)", ended, conns, offline, conns-withOther)
		}
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(steps), "steps")
	b.ReportMetric(float64(maxStep.Microseconds())/1000, "max-step-ms")
	b.ReportMetric(float64(offline), "offline")
}
