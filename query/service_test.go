package query_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/query"
)

var (
	_ query.Store = (*presence.Store)(nil)
	_ query.Store = (*presence.View)(nil)
)

// queryEnv is one test's Redis, NATS, store and query service.
type queryEnv struct {
	t        testing.TB
	redis    *testenv.Redis
	rdb      *redis.Client
	store    *presence.Store
	nc       *nats.Conn // the client side
	subjects contract.Subjects
	svc      micro.Service
}

func newQueryEnv(t testing.TB, opts query.Options, nopts ...testenv.NATSOption) *queryEnv {
	t.Helper()
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t, nopts...)
	p := testenv.Prefix(t)
	e := &queryEnv{t: t, redis: r, rdb: r.Client(t), nc: n.Conn(t), subjects: contract.Subjects{Prefix: p}}
	e.store = presence.NewStore(e.rdb, presence.Options{Prefix: p + ":", TTL: time.Minute})
	opts.Subjects = e.subjects
	svc, err := query.Start(n.Conn(t), e.store, opts)
	if err != nil {
		t.Fatalf("start query service: %v", err)
	}
	t.Cleanup(func() {
		if err := svc.Stop(); err != nil {
			t.Errorf("stop query service: %v", err)
		}
	})
	e.svc = svc
	return e
}

func (e *queryEnv) heartbeat(ids ...string) {
	e.t.Helper()
	if _, err := e.store.Heartbeat(context.Background(), ids); err != nil {
		e.t.Fatalf("heartbeat: %v", err)
	}
}

// request sends body to the endpoint and returns the reply message.
func (e *queryEnv) request(endpoint string, body any) *nats.Msg {
	e.t.Helper()
	return request(e.t, e.nc, e.subjects.Query(endpoint), body)
}

// request sends body (JSON-encoded unless []byte) to subject on nc and
// returns the reply message.
func request(t testing.TB, nc *nats.Conn, subject string, body any) *nats.Msg {
	t.Helper()
	data, ok := body.([]byte)
	if !ok {
		var err error
		if data, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := nc.Request(subject, data, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s %s: %v", subject, data, err)
	}
	return msg
}

// call sends body to the endpoint and decodes a successful reply into out.
func (e *queryEnv) call(endpoint string, body, out any) {
	e.t.Helper()
	msg := e.request(endpoint, body)
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		e.t.Fatalf("%s: error %s %q", endpoint, code, msg.Header.Get(micro.ErrorHeader))
	}
	if err := json.Unmarshal(msg.Data, out); err != nil {
		e.t.Fatalf("%s: decode %q: %v", endpoint, msg.Data, err)
	}
}

func TestQueryEndpoints(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, query.Options{})
	before := time.Now()
	e.heartbeat("u-1", "u-2", "a<b&c>\"d") // HTML characters and a quote round-trip unharmed

	var st contract.StatusReply
	e.call(contract.QueryStatus, contract.StatusRequest{UserID: "u-1"}, &st)
	if st.UserID != "u-1" || !st.Online || st.Version <= 0 {
		t.Fatalf("status of u-1 = %+v", st)
	}
	since, err := time.Parse(contract.TimeFormat, st.Since)
	if err != nil {
		t.Fatalf("since %q: %v", st.Since, err)
	}
	expires, err := time.Parse(contract.TimeFormat, st.ExpiresAt)
	if err != nil {
		t.Fatalf("expiresAt %q: %v", st.ExpiresAt, err)
	}
	if since.Before(before.Add(-time.Minute)) || !expires.After(since) || expires.Sub(since) > time.Minute+time.Second {
		t.Fatalf("since %v, expiresAt %v: not a fresh one-minute session", since, expires)
	}
	if since.UnixMicro() != st.Version {
		t.Fatalf("since %v is not the version %d in µs", since, st.Version)
	}

	// Offline: no session fields at all on the wire.
	msg := e.request(contract.QueryStatus, []byte(`{"userId":"nobody"}`))
	if got, want := string(msg.Data), `{"userId":"nobody","online":false,"version":0,"connections":[]}`; got != want {
		t.Fatalf("status of nobody = %s, want %s", got, want)
	}

	var on contract.OnlineReply
	e.call(contract.QueryOnline, contract.OnlineRequest{UserIDs: []string{"u-2", "nobody", "a<b&c>\"d", "u-1", "u-2"}}, &on)
	if want := []string{"u-2", "a<b&c>\"d", "u-1"}; !slices.Equal(on.Online, want) {
		t.Fatalf("online = %q, want %q", on.Online, want)
	}
	msg = e.request(contract.QueryOnline, []byte(`{"userIds":[]}`))
	if string(msg.Data) != `{"online":[]}` {
		t.Fatalf("online of none = %s", msg.Data)
	}
	msg = e.request(contract.QueryOnline, []byte(`{"userIds":["a<b&c>\"d"]}`))
	if string(msg.Data) != `{"online":["a<b&c>\"d"]}` {
		t.Fatalf("online reply escapes HTML: %s", msg.Data)
	}

	for _, body := range [][]byte{nil, []byte(`{}`), []byte(`whatever`)} {
		var c contract.CountReply
		e.call(contract.QueryCount, body, &c)
		if c.Online != 3 {
			t.Fatalf("count with body %q = %d, want 3", body, c.Online)
		}
	}

	var page contract.ListReply
	e.call(contract.QueryList, contract.ListRequest{}, &page)
	slices.Sort(page.UserIDs)
	if want := []string{"a<b&c>\"d", "u-1", "u-2"}; !slices.Equal(page.UserIDs, want) || page.Cursor != "" {
		t.Fatalf("list = %+v, want %q and no cursor", page, want)
	}

	if _, err := e.store.Disconnect(context.Background(), []string{"u-1"}); err != nil {
		t.Fatal(err)
	}
	msg = e.request(contract.QueryStatus, contract.StatusRequest{UserID: "u-1"})
	if got, want := string(msg.Data), `{"userId":"u-1","online":false,"version":0,"connections":[]}`; got != want {
		t.Fatalf("status after disconnect = %s, want %s", got, want)
	}
}

func TestQueryBadRequests(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, query.Options{MaxIDs: 3})
	tests := []struct {
		endpoint string
		body     string
		want     string // in the description
	}{
		{contract.QueryStatus, ``, "malformed message: empty body"},
		{contract.QueryStatus, `not json`, "malformed message: expected a JSON object"},
		{contract.QueryStatus, `{"userId":`, "malformed message: unexpected end of JSON input"},
		{contract.QueryStatus, `{"userId":7}`, "malformed message: json: cannot unmarshal number"},
		{contract.QueryStatus, "\v{\"userId\":\"u\"}", "malformed message: expected a JSON object"},
		{contract.QueryStatus, "{\"userId\":\"u\"}\u00a0", "malformed message: data after the object"},
		{contract.QueryStatus, `{"userId":"a","userId":"b"}`, `malformed message: duplicate key "userId"`},
		{contract.QueryStatus, `{"USERID":"u"}`, "invalid userId: empty"},
		{contract.QueryOnline, `{"USERIDS":["u"]}`, `malformed message: no "userIds"`},
		{contract.QueryOnline, `{"userIds":["a"],"userIds":["b"]}`, `malformed message: duplicate key "userIds"`},
		{contract.QueryList, `{"limit":1,"limit":2}`, `malformed message: duplicate key "limit"`},
		{contract.QueryStatus, `{}`, "invalid userId: empty"},
		{contract.QueryStatus, `{"userId":"a b"}`, "invalid userId: space at byte 1"},
		{contract.QueryStatus, `{"userId":"u*"}`, "invalid userId: glob character '*' at byte 1"},
		{contract.QueryStatus, `{"userId":"` + strings.Repeat("x", 257) + `"}`, "invalid userId: 257 bytes, over the maximum of 256"},
		{contract.QueryOnline, `{}`, `malformed message: no "userIds"`},
		{contract.QueryOnline, `[]`, "malformed message: expected a JSON object"},
		{contract.QueryOnline, `{"userIds":["ok","a\nb"]}`, "userIds[1]: invalid userId: control character 0x0a at byte 1"},
		{contract.QueryOnline, `{"userIds":["ok","a b"]}`, "userIds[1]: invalid userId: space at byte 1"},
		{contract.QueryOnline, `{"userIds":["ok","ok","u?"]}`, "userIds[2]: invalid userId: glob character '?' at byte 1"},
		{contract.QueryOnline, `{"userIds":["ok","` + strings.Repeat("x", 257) + `"]}`, "userIds[1]: invalid userId: 257 bytes, over the maximum of 256"},
		{contract.QueryOnline, `{"userIds":["ok",""]}`, "userIds[1]: invalid userId: empty"},
		{contract.QueryOnline, `{"userIds":["a","b","c","d"]}`, "too many ids: 4 ids, the maximum is 3"},
		{contract.QueryList, `{"cursor":"abc"}`, `invalid cursor: "abc"`},
		{contract.QueryList, `{"limit":-1}`, "malformed message: negative limit -1"},
		{contract.QueryList, `{"limit":"10"}`, "malformed message: json: cannot unmarshal string"},
	}
	for _, tt := range tests {
		t.Run(tt.endpoint+" "+tt.body, func(t *testing.T) {
			msg := request(t, e.nc, e.subjects.Query(tt.endpoint), []byte(tt.body))
			code, desc := msg.Header.Get(micro.ErrorCodeHeader), msg.Header.Get(micro.ErrorHeader)
			if code != contract.QueryBadRequest || !strings.Contains(desc, tt.want) {
				t.Fatalf("reply %s %q (body %q), want 400 containing %q", code, desc, msg.Data, tt.want)
			}
			if len(msg.Data) != 0 {
				t.Fatalf("error reply has a body %q", msg.Data)
			}
		})
	}
}

func TestQueryStoreFailure(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, query.Options{Timeout: time.Second})
	e.heartbeat("u-1")
	e.redis.Stop(t)
	for _, ep := range []struct {
		name string
		body any
	}{
		{contract.QueryStatus, contract.StatusRequest{UserID: "u-1"}},
		{contract.QueryOnline, contract.OnlineRequest{UserIDs: []string{"u-1"}}},
		{contract.QueryList, contract.ListRequest{}},
		{contract.QueryCount, nil},
	} {
		msg := e.request(ep.name, ep.body)
		if code, desc := msg.Header.Get(micro.ErrorCodeHeader), msg.Header.Get(micro.ErrorHeader); code != contract.QueryStoreFailure || desc == "" {
			t.Fatalf("%s with redis down: reply %s %q %q, want 500", ep.name, code, desc, msg.Data)
		}
	}
	// Redis back (empty, no AOF): the same service answers again.
	e.redis.Start(t)
	testenv.Eventually(t, 10*time.Second, func() bool {
		msg := e.request(contract.QueryCount, nil)
		return msg.Header.Get(micro.ErrorCodeHeader) == "" && string(msg.Data) == `{"online":0}`
	}, "count answers after redis restarted")
}

func TestQueryDiscovery(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, query.Options{Version: "1.2.3"})
	msg, err := e.nc.Request("$SRV.PING.presence", nil, 5*time.Second)
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	var ping micro.Ping
	if err := json.Unmarshal(msg.Data, &ping); err != nil {
		t.Fatal(err)
	}
	if ping.Name != contract.QueryServiceName || ping.Version != "1.2.3" || ping.Metadata["prefix"] != e.subjects.Prefix || ping.Type != micro.PingResponseType {
		t.Fatalf("ping = %+v", ping)
	}

	msg, err = e.nc.Request("$SRV.INFO.presence", nil, 5*time.Second)
	if err != nil {
		t.Fatalf("info: %v", err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ep := range info.Endpoints {
		got = append(got, ep.Name+" "+ep.Subject+" "+ep.QueueGroup)
	}
	slices.Sort(got)
	p := e.subjects.Prefix
	want := []string{
		"count " + p + ".query.count presenced",
		"gateway " + p + ".query.gateway presenced",
		"list " + p + ".query.list presenced",
		"online " + p + ".query.online presenced",
		"status " + p + ".query.status presenced",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("info endpoints = %q, want %q", got, want)
	}

	var c contract.CountReply
	e.call(contract.QueryCount, nil, &c)
	// micro counts a request after its handler returns, so the reply can
	// come before the count: ask until it shows (never more than one).
	var count *micro.EndpointStats
	testenv.Eventually(t, 5*time.Second, func() bool {
		msg, err := e.nc.Request("$SRV.STATS.presence", nil, 5*time.Second)
		if err != nil {
			t.Fatalf("stats: %v", err)
		}
		var stats micro.Stats
		if err := json.Unmarshal(msg.Data, &stats); err != nil {
			t.Fatal(err)
		}
		for _, ep := range stats.Endpoints {
			if ep.Name == contract.QueryCount {
				count = ep
			}
		}
		if count != nil && count.NumRequests > 1 {
			t.Fatalf("count endpoint stats %+v, want 1 request", count)
		}
		return count != nil && count.NumRequests == 1
	}, "count endpoint stats %+v, want 1 request", count)
}

// listAll pages through the listing with limit and returns how often each id
// was seen, failing on any error or any reply over the max payload.
func (e *queryEnv) listAll(limit int) (seen map[string]int, pages int) {
	e.t.Helper()
	seen = map[string]int{}
	cursor := ""
	for {
		msg := e.request(contract.QueryList, contract.ListRequest{Cursor: cursor, Limit: limit})
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			e.t.Fatalf("page %d: error %s %q", pages, code, msg.Header.Get(micro.ErrorHeader))
		}
		if int64(len(msg.Data)) > e.nc.MaxPayload() {
			e.t.Fatalf("page %d is %d bytes, over the max payload %d", pages, len(msg.Data), e.nc.MaxPayload())
		}
		var page contract.ListReply
		if err := json.Unmarshal(msg.Data, &page); err != nil {
			e.t.Fatalf("page %d: decode: %v", pages, err)
		}
		pages++
		for _, id := range page.UserIDs {
			seen[id]++
		}
		if page.Cursor == "" {
			return seen, pages
		}
		cursor = page.Cursor
	}
}

// TestQueryListMillion pages through a million users with the default
// 1 MiB max payload and limit 10000: pages of ten-byte ids are not capped
// (about 130 KB each), no reply is over the max payload, all are seen.
func TestQueryListMillion(t *testing.T) {
	if testing.Short() {
		t.Skip("populates a million users")
	}
	t.Parallel()
	e := newQueryEnv(t, query.Options{})
	const total, chunk = 1_000_000, 10_000
	start := time.Now()
	ids := make([]string, chunk)
	for base := 0; base < total; base += chunk {
		for i := range ids {
			ids[i] = fmt.Sprintf("user-%07d", base+i)
		}
		e.heartbeat(ids...)
	}
	t.Logf("populated %d users in %v", total, time.Since(start))

	var c contract.CountReply
	e.call(contract.QueryCount, nil, &c)
	if c.Online != total {
		t.Fatalf("count = %d, want %d", c.Online, total)
	}

	start = time.Now()
	seen, pages := e.listAll(10_000)
	t.Logf("listed %d distinct ids in %d pages in %v", len(seen), pages, time.Since(start))
	if len(seen) != total {
		t.Fatalf("saw %d distinct ids, want %d", len(seen), total)
	}
	for i := range total {
		if id := fmt.Sprintf("user-%07d", i); seen[id] == 0 {
			t.Fatalf("%s never listed", id)
		}
	}
	// A page holds at least its limit, short of the end.
	if pages > total/10_000+1 {
		t.Fatalf("%d pages for %d ids with limit 10000: pages were capped", pages, total)
	}
}

// TestQueryListOversizedIDs fills the index with ids that ValidateUserID
// refuses (written directly, as a buggy writer might) and that escape to six
// bytes each, on a server with a 64 KiB max payload: the service shrinks
// its scan step until each page fits, and still lists every id.
func TestQueryListOversizedIDs(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, query.Options{}, testenv.WithServerOptions(func(o *server.Options) { o.MaxPayload = 64 << 10 }))
	if got := e.nc.MaxPayload(); got != 64<<10 {
		t.Fatalf("max payload %d", got)
	}
	ctx := context.Background()
	const n = 2000
	// The first write creates the data set; the ids then go straight into
	// one sessions shard, which Redis keeps as a hash table (values over 64
	// bytes), so the service must split it across pages.
	if _, err := e.store.Heartbeat(ctx, []string{"first"}); err != nil {
		t.Fatal(err)
	}
	fields := make([]any, 0, 2*n)
	for i := 0; i < n; i++ {
		// 250 control bytes: 1500 bytes each in JSON, so a page of the
		// payload cap's ~127 ids is about 190 KB.
		fields = append(fields, fmt.Sprintf("%06d", i)+strings.Repeat("\x01", 250), "1")
	}
	if err := e.rdb.HSet(ctx, e.store.Keys().Sessions(0), fields...).Err(); err != nil {
		t.Fatal(err)
	}
	want := n + 1
	seen, pages := e.listAll(0)
	if len(seen) != want {
		t.Fatalf("saw %d distinct ids in %d pages, want %d", len(seen), pages, want)
	}
	t.Logf("%d ids of 1500 JSON bytes in %d pages", n, pages)
}

// populate brings n users online, named fmt.Sprintf(format, i), in
// batches of 10000, and returns their ids.
func (e *queryEnv) populate(format string, n int) []string {
	e.t.Helper()
	all := make([]string, n)
	for i := range all {
		all[i] = fmt.Sprintf(format, i)
	}
	for lo := 0; lo < n; lo += 10_000 {
		e.heartbeat(all[lo:min(n, lo+10_000)]...)
	}
	return all
}

// redisUsec is the time redis-server spent in cmd so far, in µs (INFO
// commandstats).
func (e *queryEnv) redisUsec(cmd string) int64 {
	e.t.Helper()
	info, err := e.rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	_, rest, ok := strings.Cut(info, "cmdstat_"+cmd+":")
	if !ok {
		return 0
	}
	_, rest, _ = strings.Cut(rest, "usec=")
	n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
	return n
}

// onlineRequest10k is the request presence-bench times: 10000 ids of ten
// bytes, every other one online (picked from online, repeats removed), the
// rest never online; it returns the body and how many are online.
// startViewService runs a presence.View of the env's store and a second
// query service answering from it, under its own subjects.
func (e *queryEnv) startViewService() (contract.Subjects, *presence.View) {
	e.t.Helper()
	view := presence.NewView(e.store, nil)
	view.CatchUp = 10 * time.Second // answers from the view even on a loaded machine
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		view.Run(ctx)
	}()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-view.Ready():
	case <-time.After(10 * time.Second):
		e.t.Fatal("view not built within 10s")
	}
	subjects := contract.Subjects{Prefix: e.subjects.Prefix + "v"}
	svc, err := query.Start(e.nc, view, query.Options{Subjects: subjects})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = svc.Stop() })
	return subjects, view
}

// The online query answers the same from a query view as from Redis, and
// from the view too a disconnect stored before the query is seen by it.
func TestOnlineFromView(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, query.Options{})
	online := e.populate("us%05d", 2000)
	viewSubjects, view := e.startViewService()
	body, want := onlineRequest10k(online)
	fromRedis := request(t, e.nc, e.subjects.Query(contract.QueryOnline), body)
	fromView := request(t, e.nc, viewSubjects.Query(contract.QueryOnline), body)
	var r contract.OnlineReply
	if err := json.Unmarshal(fromView.Data, &r); err != nil || len(r.Online) != want {
		t.Fatalf("view reply: %d online, %v; want %d", len(r.Online), err, want)
	}
	if string(fromView.Data) != string(fromRedis.Data) {
		t.Fatalf("view and Redis differ:\nview  %.200s\nredis %.200s", fromView.Data, fromRedis.Data)
	}
	if _, err := e.store.Disconnect(context.Background(), online[:1000]); err != nil {
		t.Fatal(err)
	}
	msg := request(t, e.nc, viewSubjects.Query(contract.QueryOnline), contract.OnlineRequest{UserIDs: online[990:1010]})
	if err := json.Unmarshal(msg.Data, &r); err != nil || !slices.Equal(r.Online, online[1000:1010]) {
		t.Fatalf("after disconnecting %s..%s: view says %v, %v; want %v", online[0], online[999], r.Online, err, online[1000:1010])
	}
	if st := view.Stats(); st.FromView != 2 || st.FromRedis != 0 {
		t.Fatalf("view stats %+v: want both queries answered by the view", st)
	}
}

func onlineRequest10k(online []string) ([]byte, int) {
	ids := make([]string, 0, 10_000)
	seen := map[string]bool{}
	want := 0
	for j := range 10_000 {
		id := fmt.Sprintf("zz-%07d", j)
		if j%2 == 0 {
			id = online[(j*7919)%len(online)]
			if !seen[id] {
				want++
			}
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	body, _ := json.Marshal(contract.OnlineRequest{UserIDs: ids})
	return body, want
}

// BenchmarkQueryOnline10k is the 10k-id online query end to end, as
// presence-bench times it: a NATS request from a client connection to the
// query service (an embedded nats-server over loopback TCP), the MGET on a
// real redis-server holding 20k online users, and the reply; "decode" also
// decodes the reply with encoding/json as presence-bench does. Client,
// service and nats-server share this process, so -cpuprofile shows all
// three; redis-server is a process of its own.
func BenchmarkQueryOnline10k(b *testing.B) {
	e := newQueryEnv(b, query.Options{})
	online := e.populate("us%08d", 20_000)
	body, want := onlineRequest10k(online)
	// The same service answering from a query view.
	viewSubjects, view := e.startViewService()
	for _, source := range []string{"redis", "view"} {
		subject := e.subjects.Query(contract.QueryOnline)
		if source == "view" {
			subject = viewSubjects.Query(contract.QueryOnline)
		}
		for _, decode := range []bool{false, true} {
			name := source + "/raw"
			if decode {
				name = source + "/decode"
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				usec := e.redisUsec("mget")
				for b.Loop() {
					msg, err := e.nc.Request(subject, body, 5*time.Second)
					if err != nil {
						b.Fatal(err)
					}
					if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
						b.Fatalf("error %s %q", code, msg.Header.Get(micro.ErrorHeader))
					}
					if decode {
						var r contract.OnlineReply
						if err := json.Unmarshal(msg.Data, &r); err != nil {
							b.Fatal(err)
						}
						if len(r.Online) != want {
							b.Fatalf("%d online, want %d", len(r.Online), want)
						}
					} else if len(msg.Data) < want*13 {
						b.Fatalf("reply of %d bytes for %d online ids", len(msg.Data), want)
					}
				}
				b.ReportMetric(float64(e.redisUsec("mget")-usec)/float64(b.N), "redis-µs/op")
			})
		}
	}
	if st := view.Stats(); st.FromView == 0 || st.FromRedis != 0 {
		b.Fatalf("view stats %+v: the view benchmark did not run on the view", st)
	}
}

// BenchmarkQueryList100k pages through 100k online users (ids of ten bytes)
// as presence-bench lists 1M: one op is the whole listing, decoded with
// encoding/json; redis-µs/op is the list script's Redis time (EVALSHA). The
// limits are the old worst-case cap (2035 ids for 1 MiB), the default
// MaxList and a larger one.
func BenchmarkQueryList100k(b *testing.B) {
	e := newQueryEnv(b, query.Options{MaxList: 50_000})
	const n = 100_000
	e.populate("us%08d", n)
	for _, limit := range []int{2035, 10_000, 50_000} {
		b.Run(fmt.Sprintf("limit=%d", limit), func(b *testing.B) {
			b.ReportAllocs()
			pages, maxBytes := 0, 0
			usec := e.redisUsec("evalsha")
			for b.Loop() {
				distinct := 0
				cursor := ""
				for {
					data, _ := json.Marshal(contract.ListRequest{Cursor: cursor, Limit: limit})
					msg := request(b, e.nc, e.subjects.Query(contract.QueryList), data)
					if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
						b.Fatalf("error %s %q", code, msg.Header.Get(micro.ErrorHeader))
					}
					var page contract.ListReply
					if err := json.Unmarshal(msg.Data, &page); err != nil {
						b.Fatal(err)
					}
					pages++
					maxBytes = max(maxBytes, len(msg.Data))
					distinct += len(page.UserIDs) // no user comes or goes here
					if page.Cursor == "" {
						break
					}
					cursor = page.Cursor
				}
				if distinct != n {
					b.Fatalf("listed %d, want %d", distinct, n)
				}
			}
			b.ReportMetric(float64(pages)/float64(b.N), "pages/op")
			b.ReportMetric(float64(maxBytes), "max-reply-bytes")
			b.ReportMetric(float64(e.redisUsec("evalsha")-usec)/float64(b.N), "redis-µs/op")
		})
	}
}

// TestQueryListLongIDs lists valid ids of the maximum length, each escaping
// to about 500 bytes of JSON, with limit 10000 on a server with a 64 KiB max
// payload: the first page's scan step is retried smaller until it fits, the
// pages after it are sized by what the first one took, no reply exceeds the
// max payload, and every id is listed. Ids of ten bytes beside it fill
// pages up to the limit.
func TestQueryListLongIDs(t *testing.T) {
	t.Parallel()
	var log testenv.Buffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := newQueryEnv(t, query.Options{Logger: logger}, testenv.WithServerOptions(func(o *server.Options) { o.MaxPayload = 64 << 10 }))
	if got := e.nc.MaxPayload(); got != 64<<10 {
		t.Fatalf("max payload %d", got)
	}
	const n = 2000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%06d", i) + strings.Repeat(`"`, contract.MaxUserIDLen-6)
	}
	e.heartbeat(ids...)
	seen, pages := e.listAll(10_000)
	if len(seen) != n {
		t.Fatalf("saw %d distinct ids in %d pages, want %d", len(seen), pages, n)
	}
	// About 129 such ids fit 64 KiB; pages are sized to fill two thirds.
	if pages < n/129 {
		t.Fatalf("%d pages of 2000 ids of 500 bytes each under 64 KiB", pages)
	}
	retries := strings.Count(log.String(), "retrying smaller")
	if retries == 0 || retries > 3 {
		t.Fatalf("%d scan steps retried smaller in %d pages; want the first page's (1 to 3):\n%s", retries, pages, log.String())
	}
	t.Logf("%d ids of about 500 JSON bytes in %d pages, %d retried steps", n, pages, retries)
}

// TestQueryListFullPages: ten-byte ids come in pages of the limit asked for,
// up to MaxList.
func TestQueryListFullPages(t *testing.T) {
	t.Parallel()
	e := newQueryEnv(t, query.Options{MaxList: 8000})
	const n = 25_000
	e.populate("us%08d", n)
	for _, tt := range []struct{ limit, maxPages int }{
		{10_000, 4}, // capped at MaxList 8000: 25000 in 4 pages
		{5_000, 5},
		{0, 26}, // the default 1000
	} {
		seen, pages := e.listAll(tt.limit)
		if len(seen) != n || pages > tt.maxPages {
			t.Fatalf("limit %d: %d distinct ids in %d pages, want %d in at most %d", tt.limit, len(seen), pages, n, tt.maxPages)
		}
	}
}
