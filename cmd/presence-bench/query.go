package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/seedbaseline"
	"github.com/presenced/presenced/presence"
)

// queryAPI is how one implementation answers the three queries.
type queryAPI struct {
	path   string
	status func(ctx context.Context, id string) (bool, error)
	online func(ctx context.Context, ids []string, payload []byte) (int, error)
	// page returns one listing step: ids (as bytes of the reply, for
	// counting), the next cursor ("" when done) and the reply's size.
	page  func(ctx context.Context, cursor string) ([]string, string, int, error)
	count func(ctx context.Context) (int64, error)
}

func (b *bench) queryAPI(ctx context.Context, im impl) queryAPI {
	maxPayload := b.c.pub.MaxPayload()
	if im.name == "seed" {
		q := seedbaseline.NewQueries(b.c.rdb, im.keys)
		q.ScanCount = b.cfg.scanCount
		return queryAPI{
			path:   "redis (the seed's repository)",
			status: q.IsOnline,
			online: func(ctx context.Context, ids []string, _ []byte) (int, error) {
				on, err := q.OnlineAmong(ctx, ids)
				return len(on), err
			},
			page: func(ctx context.Context, cursor string) ([]string, string, int, error) {
				cur, _ := strconv.ParseUint(cursor, 10, 64)
				ids, next, err := q.ScanPage(ctx, cur)
				nc := ""
				if next != 0 {
					nc = strconv.FormatUint(next, 10)
				}
				return ids, nc, 0, err
			},
		}
	}
	nc := b.c.pub
	_, err := nc.Request(im.subjects.Query(contract.QueryCount), []byte("{}"), 2*time.Second)
	if err != nil {
		b.note("presenced queries measured on presence.Store directly, not over NATS: %s answered %v (the query service is not wired into presenced)", im.subjects.Query(contract.QueryCount), err)
		store := presence.NewStore(b.c.rdb, presence.Options{Prefix: im.keys, TTL: b.cfg.idleTTL})
		// The page size the query service would use: the most worst-case
		// ids that fit the max payload, as in bus.listCap.
		limit := int((maxPayload - 64) / (2*contract.MaxUserIDLen + 3))
		return queryAPI{
			path: "presence.Store (query service not wired)",
			status: func(ctx context.Context, id string) (bool, error) {
				s, err := store.Status(ctx, id)
				return s.Online, err
			},
			online: func(ctx context.Context, ids []string, _ []byte) (int, error) {
				on, err := store.GetOnlineUsers(ctx, ids)
				return len(on), err
			},
			page: func(ctx context.Context, cursor string) ([]string, string, int, error) {
				p, err := store.List(ctx, cursor, limit)
				if err != nil {
					return nil, "", 0, err
				}
				data, _ := json.Marshal(contract.ListReply{UserIDs: p.UserIDs, Cursor: p.Cursor})
				return p.UserIDs, p.Cursor, len(data), nil
			},
			count: store.Count,
		}
	}
	qc := client.New(nc, client.WithPrefix(im.subjects.Prefix), client.WithBatchSize(10000), client.WithTimeout(time.Minute))
	request := func(ctx context.Context, endpoint string, data []byte) (*nats.Msg, error) {
		m, err := nc.RequestWithContext(ctx, im.subjects.Query(endpoint), data)
		if err != nil {
			return nil, err
		}
		if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
			return nil, fmt.Errorf("%s: %s %s", endpoint, code, m.Header.Get("Nats-Service-Error"))
		}
		return m, nil
	}
	return queryAPI{
		path: "NATS query service",
		status: func(ctx context.Context, id string) (bool, error) {
			data, _ := json.Marshal(contract.StatusRequest{UserID: id})
			m, err := request(ctx, contract.QueryStatus, data)
			if err != nil {
				return false, err
			}
			var r contract.StatusReply
			err = json.Unmarshal(m.Data, &r)
			return r.Online, err
		},
		// Online goes through the Go client presenced ships, as a service
		// would call it: it encodes the request and decodes the reply
		// without reflection (encoding/json on the bench's side cost ~3.7 ms
		// of a 10k-id round trip), in one request of up to 10000 ids.
		online: func(ctx context.Context, ids []string, _ []byte) (int, error) {
			on, err := qc.Online(ctx, ids)
			return len(on), err
		},
		page: func(ctx context.Context, cursor string) ([]string, string, int, error) {
			data, _ := json.Marshal(contract.ListRequest{Cursor: cursor, Limit: 10000})
			m, err := request(ctx, contract.QueryList, data)
			if err != nil {
				return nil, "", 0, err
			}
			var r contract.ListReply
			err = json.Unmarshal(m.Data, &r)
			return r.UserIDs, r.Cursor, len(m.Data), err
		},
		count: func(ctx context.Context) (int64, error) {
			m, err := request(ctx, contract.QueryCount, []byte("{}"))
			if err != nil {
				return 0, err
			}
			var r contract.CountReply
			err = json.Unmarshal(m.Data, &r)
			return r.Online, err
		},
	}
}

// queries times the status, online and count queries and the paged listing
// of every user against im, whose users tag0..n-1 are all online.
func (b *bench) queries(ctx context.Context, im impl, tag string, n int) error {
	cfg := b.cfg
	api := b.queryAPI(ctx, im)
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	rng := rand.New(rand.NewPCG(7, uint64(n)))
	maxPayload := int(b.c.pub.MaxPayload())
	timed := func(reps int, f func() error) ([]float64, error) {
		lat := make([]float64, 0, reps)
		for range reps {
			t0 := time.Now()
			if err := f(); err != nil {
				return nil, err
			}
			lat = append(lat, float64(time.Since(t0).Nanoseconds())/1e6)
		}
		slices.Sort(lat)
		return lat, nil
	}
	add := func(q QueryRow, lat []float64) {
		q.Impl, q.Path, q.Reps = im.name, api.path, len(lat)
		if len(lat) > 0 {
			q.P50Ms, q.P99Ms, q.MaxMs = pct(lat, 50), pct(lat, 99), lat[len(lat)-1]
		}
		b.rep.Query = append(b.rep.Query, q)
		progress("  %-10s p50 %.3fms p99 %.3fms max %.3fms %s", q.Query, q.P50Ms, q.P99Ms, q.MaxMs, q.Detail)
	}

	// One id.
	wrong := 0
	lat, err := timed(cfg.queryReps, func() error {
		on, err := api.status(ctx, userID(tag, rng.IntN(n)))
		if err == nil && !on {
			wrong++
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	add(QueryRow{Query: "status (1 id)", Wrong: wrong}, lat)

	// Many ids, half of them online. The requests are built before timing.
	k := cfg.queryIDs
	type onlineReq struct {
		ids     []string
		payload []byte
		want    int
	}
	reqs := make([]onlineReq, cfg.query10k)
	for r := range reqs {
		ids := make([]string, k)
		for j := range ids {
			if j%2 == 0 {
				ids[j] = userID(tag, rng.IntN(n))
			} else {
				ids[j] = userID("zz-", j) // never online
			}
		}
		ids = dedupe(ids)
		payload, _ := json.Marshal(contract.OnlineRequest{UserIDs: ids})
		want := 0
		for _, id := range ids {
			if strings.HasPrefix(id, tag) {
				want++
			}
		}
		reqs[r] = onlineReq{ids, payload, want}
	}
	wrong = 0
	next := 0
	lat, err = timed(len(reqs), func() error {
		r := reqs[next]
		next++
		got, err := api.online(ctx, r.ids, r.payload)
		if err == nil && got != r.want {
			wrong++
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("online: %w", err)
	}
	if cfg.pprofDir != "" && api.path == "NATS query service" {
		// Profile a replica while the same queries repeat (untimed).
		done := b.profile(im, "query-online", nil)
		for i := 0; ; i++ {
			select {
			case <-done:
			default:
				if _, err := api.online(ctx, reqs[i%len(reqs)].ids, reqs[i%len(reqs)].payload); err != nil {
					return fmt.Errorf("online: %w", err)
				}
				continue
			}
			break
		}
	}
	add(QueryRow{Query: fmt.Sprintf("online (%d ids)", k), Wrong: wrong}, lat)

	// The whole listing, paged.
	seen := make([]bool, n)
	q := QueryRow{Query: fmt.Sprintf("list all %d", n), MaxPayload: maxPayload}
	var all []string
	t0 := time.Now()
	cursor := ""
	for {
		ids, next, size, err := api.page(ctx, cursor)
		if err != nil {
			return fmt.Errorf("list page %d: %w", q.Pages, err)
		}
		q.Pages++
		if im.name == "seed" {
			all = append(all, ids...)
		}
		q.MaxReplyBytes = max(q.MaxReplyBytes, size)
		if size > maxPayload {
			q.OverMaxPayload++
		}
		for _, id := range ids {
			q.IDs++
			if i := parseIndex(tag, []byte(id)); i >= 0 && i < n && !seen[i] {
				seen[i] = true
				q.Distinct++
			}
		}
		if next == "" {
			break
		}
		cursor = next
		if ctx.Err() != nil {
			return fmt.Errorf("list: %w", ctx.Err())
		}
	}
	if im.name == "seed" {
		// The seed's getAllOnlineUsers returns one array: that is its reply.
		data, _ := json.Marshal(all)
		q.MaxReplyBytes = len(data)
		if len(data) > maxPayload {
			q.OverMaxPayload = 1
		}
		q.Detail = fmt.Sprintf("%d SCAN calls (COUNT %d) over %d keys; one reply of %s", q.Pages, cfg.scanCount, n+cfg.bgKeys, mib(len(data)))
	} else {
		q.Detail = fmt.Sprintf("%d pages, largest reply %s", q.Pages, mib(q.MaxReplyBytes))
	}
	q.Missing = n - q.Distinct
	add(q, []float64{float64(time.Since(t0).Nanoseconds()) / 1e6})

	if api.count != nil {
		var got int64
		lat, err := timed(min(cfg.queryReps, 200), func() error {
			var err error
			got, err = api.count(ctx)
			return err
		})
		if err != nil {
			return fmt.Errorf("count: %w", err)
		}
		add(QueryRow{Query: "count", Detail: fmt.Sprintf("%d online", got)}, lat)
	}
	return nil
}

func dedupe(ids []string) []string {
	seen := make(map[string]struct{}, len(ids))
	out := ids[:0]
	for _, id := range ids {
		if _, ok := seen[id]; !ok {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}
