package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// StormRow is one reconnect storm against one implementation: Users
// single-id first heartbeats, one per new user, no reply subject, published
// as fast as one NATS connection can.
type StormRow struct {
	Impl     string `json:"impl"`
	Users    int    `json:"users"`
	Replicas int    `json:"replicas"`
	Bound    string `json:"bound"`
	// SeedPendingLimit is the seed's subscription pending limit in
	// messages (0: the port's 65536; negative: none); seed rows only.
	SeedPendingLimit int `json:"seed_pending_limit,omitempty"`

	PublishSeconds float64 `json:"publish_seconds"` // first publish until the server acknowledged a flush after the last
	PublishRate    float64 `json:"publish_msgs_per_sec"`
	// StoredSeconds is from the first publish until Users were stored
	// (presenced: its count key; the seed: DBSIZE), polled every 100 ms;
	// OnlineSeconds until the bench had an online event for every user. -1:
	// not by the end of the wait.
	StoredSeconds float64 `json:"all_stored_seconds"`
	OnlineSeconds float64 `json:"all_online_events_seconds"`
	// StoredAtBound and OnlineAtBound are the users stored and with an
	// online event Bound after the first publish (or when all were, if
	// earlier).
	StoredAtBound int64 `json:"stored_at_bound"`
	OnlineAtBound int64 `json:"online_events_at_bound"`
	// Stored counts the users' keys that exist at the end of the wait
	// (EXISTS of every user key); Online the users with an online event.
	Stored          int64   `json:"stored_at_end"`
	Online          int64   `json:"online_events_at_end"`
	DuplicateOnline int64   `json:"duplicate_online_users"`
	WaitedSeconds   float64 `json:"waited_seconds"`
	EndReason       string  `json:"end_reason"`

	// Per replica, from its /metrics (-1: not read). Dropped: presenced's
	// presenced_intake_dropped_total, the seed's messages dropped by its
	// subscriptions' pending limit. SlowConsumer: presenced's
	// presenced_nats_slow_consumer_total (slow-consumer errors: runs of
	// drops, not messages; -1 for the seed, whose drops are in Dropped).
	// Accepted: ids stored (presenced: heartbeats accepted; the seed: online
	// events it published). Failed: ids not stored after an error.
	Dropped      []int64 `json:"dropped_per_replica"`
	SlowConsumer []int64 `json:"slow_consumer_per_replica"`
	Accepted     []int64 `json:"accepted_per_replica"`
	Failed       []int64 `json:"failed_per_replica"`
	// ServerSlowConsumers is nats-server's slow_consumers (/varz) during
	// the storm: clients the server cut off for not reading (-1: unknown).
	ServerSlowConsumers int64 `json:"nats_server_slow_consumers"`

	Usage usage `json:"usage"` // from the first publish to the end of the wait; WorkerPeakMB is each replica's VmHWM
}

// stormStall ends the wait when, past the bound and with every message
// published, neither the users stored nor the online events moved for
// this long: what is missing then is lost, not late.
const stormStall = 15 * time.Second

// storm publishes n single-id first heartbeats for new users r-00000000..
// as fast as one NATS connection can, to im's replicas (fresh, Redis
// flushed), and waits until every user is stored and has its online
// event, or nothing moves for stormStall past --storm-bound, or --timeout
// (at least the bound) after the first publish. It then reads each
// replica's drop counters and checks every user's key in Redis.
func (b *bench) storm(ctx context.Context, im impl, n int) error {
	cfg := b.cfg
	progress("%s storm: %d single-id first heartbeats, %d replicas", im.name, n, cfg.replicas)
	if err := b.c.reset(ctx, im, cfg.replicas, cfg.hbTTL); err != nil {
		return err
	}
	tag := "r-"
	if cfg.external {
		tag = fmt.Sprintf("r%02d-", rand.IntN(100))
	}
	row := StormRow{Impl: im.name, Users: n, Replicas: len(b.c.workerPIDs()), Bound: cfg.stormBound.String(),
		StoredSeconds: -1, OnlineSeconds: -1}
	if im.name == "seed" {
		row.SeedPendingLimit = cfg.seedPending
	}
	col, err := newCollector(b.c.ev, im.subjects, tag, n, false)
	if err != nil {
		return err
	}
	defer col.close()
	stored0, err := b.stormStored(ctx, im)
	if err != nil {
		return err
	}
	slow0 := b.c.natsSlowConsumers()
	nc, err := nats.Connect(b.c.natsURL, nats.Name("presence-bench storm"))
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()

	limit := max(cfg.timeout, cfg.stormBound)
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	subject := im.subjects.Heartbeat()
	m := b.c.meter(ctx)
	t0 := time.Now()
	buf := make([]byte, 0, 64)
	for i := range n {
		buf = append(buf[:0], `{"userId":"`...)
		buf = appendUserID(buf, tag, i)
		buf = append(buf, `"}`...)
		if err := nc.Publish(subject, buf); err != nil { // copies buf
			return fmt.Errorf("publish %d of %d: %w", i, n, err)
		}
	}
	if err := nc.FlushWithContext(wctx); err != nil {
		return fmt.Errorf("flush after %d messages: %w", n, err)
	}
	row.PublishSeconds = time.Since(t0).Seconds()
	row.PublishRate = float64(n) / row.PublishSeconds
	progress("  published %d messages in %.2fs (%.0f msgs/s)", n, row.PublishSeconds, row.PublishRate)

	boundAt := t0.Add(cfg.stormBound)
	boundTaken := false
	var last [2]int64
	lastMove := time.Now()
	nextLog := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var werr error
wait:
	for {
		stored, err := b.stormStored(ctx, im)
		if err != nil {
			return err
		}
		stored -= stored0
		online := col.onDistinct.Load()
		now := time.Now()
		if stored >= int64(n) && row.StoredSeconds < 0 {
			row.StoredSeconds = now.Sub(t0).Seconds()
		}
		done := stored >= int64(n) && online >= int64(n)
		if !boundTaken && (done || !now.Before(boundAt)) {
			boundTaken = true
			row.StoredAtBound, row.OnlineAtBound = min(stored, int64(n)), online
			progress("  at %.1fs: %d of %d stored, %d online events", now.Sub(t0).Seconds(), stored, n, online)
		}
		if [2]int64{stored, online} != last {
			last, lastMove = [2]int64{stored, online}, now
		}
		switch {
		case done:
			row.EndReason = "all stored and online"
			break wait
		case boundTaken && now.Sub(lastMove) >= stormStall:
			row.EndReason = fmt.Sprintf("nothing moved for %s past the bound", stormStall)
			break wait
		}
		if werr = b.c.checkWorkers(); werr != nil {
			row.EndReason = "a worker exited"
			break wait
		}
		if now.After(nextLog) {
			progress("  %.0fs: %d of %d stored, %d online events", now.Sub(t0).Seconds(), stored, n, online)
			nextLog = now.Add(5 * time.Second)
		}
		select {
		case <-wctx.Done():
			row.EndReason = fmt.Sprintf("the wait's limit (%s) passed", limit)
			if !boundTaken {
				row.StoredAtBound, row.OnlineAtBound = min(stored, int64(n)), online
			}
			break wait
		case <-tick.C:
		}
	}
	row.WaitedSeconds = time.Since(t0).Seconds()
	row.Usage = m.done(ctx)
	if at := col.allOnlineAt.Load(); at > 0 {
		row.OnlineSeconds = time.Unix(0, at).Sub(t0).Seconds()
	}
	row.Online = col.onDistinct.Load()
	row.DuplicateOnline, _ = col.onlineDuplicates()
	b.stormCounters(&row, im)
	if slow1 := b.c.natsSlowConsumers(); slow0 >= 0 && slow1 >= 0 {
		row.ServerSlowConsumers = slow1 - slow0
	} else {
		row.ServerSlowConsumers = -1
	}
	if row.Stored, err = b.existing(ctx, im, tag, n); err != nil {
		return err
	}
	b.rep.Storm = append(b.rep.Storm, row)
	progress("  %s; %d of %d stored, %d online events (%d at the %s bound); dropped %s; peak rss MiB %s",
		row.EndReason, row.Stored, n, row.Online, row.OnlineAtBound, row.Bound, fmtInts(row.Dropped), fmtFloats(row.Usage.WorkerPeakMB))
	return werr
}

// stormStored is how many users im holds: presenced's count key, or for
// the seed (which keeps no count) DBSIZE, which a flushed Redis with only
// the background keys and the seed's user keys makes the users plus a
// constant.
func (b *bench) stormStored(ctx context.Context, im impl) (int64, error) {
	if im.name == "seed" {
		n, err := b.c.rdb.DBSize(ctx).Result()
		if err != nil {
			return 0, fmt.Errorf("dbsize: %w", err)
		}
		return n, nil
	}
	n, err := b.c.rdb.Get(ctx, im.keys+"count").Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("get %scount: %w", im.keys, err)
	}
	return n, nil
}

// existing counts the users tag0..n-1 whose key exists: EXISTS of 1000
// keys at a time, 10 of them per round trip.
func (b *bench) existing(ctx context.Context, im impl, tag string, n int) (int64, error) {
	const perCmd, perPipe = 1000, 10
	var total int64
	for start := 0; start < n; start += perCmd * perPipe {
		var cmds []*redis.IntCmd
		_, err := b.c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for s := start; s < min(start+perCmd*perPipe, n); s += perCmd {
				keys := make([]string, 0, perCmd)
				for i := s; i < min(s+perCmd, n); i++ {
					keys = append(keys, im.userKey(userID(tag, i)))
				}
				cmds = append(cmds, p.Exists(ctx, keys...))
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("exists: %w", err)
		}
		for _, c := range cmds {
			total += c.Val()
		}
	}
	return total, nil
}

// stormCounters reads each replica's drop, accepted and failure counters
// from its /metrics; a replica that cannot be read gets -1.
func (b *bench) stormCounters(row *StormRow, im impl) {
	for _, p := range b.c.workers {
		text, err := scrape(p.http)
		// A plain counter is always exported; a series of a labelled one
		// (presenced_heartbeats_total{result}) only once counted, so its
		// absence from a page that was read means 0.
		get := func(name, labels string) int64 {
			if err != nil {
				return -1
			}
			v, ok := promSum(text, name, labels)
			switch {
			case ok:
				return int64(v)
			case labels != "":
				return 0
			}
			return -1
		}
		if im.name == "seed" {
			row.Dropped = append(row.Dropped, get("seed_nats_dropped_total", ""))
			row.SlowConsumer = append(row.SlowConsumer, -1)
			row.Accepted = append(row.Accepted, get("seed_online_events_total", ""))
			row.Failed = append(row.Failed, get("seed_failures_total", ""))
			continue
		}
		row.Dropped = append(row.Dropped, get("presenced_intake_dropped_total", ""))
		row.SlowConsumer = append(row.SlowConsumer, get("presenced_nats_slow_consumer_total", ""))
		row.Accepted = append(row.Accepted, get("presenced_heartbeats_total", `result="accepted"`))
		row.Failed = append(row.Failed, get("presenced_heartbeats_total", `result="failed"`))
	}
}

// scrape returns the body of http://addr/metrics.
func scrape(addr string) (string, error) {
	if addr == "" {
		return "", errors.New("no http address")
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s/metrics: %s", addr, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return string(data), err
}

// promSum sums the samples of metric name in Prometheus text whose labels
// contain labels ("" matches all); ok is false when there is none.
func promSum(text, name, labels string) (sum float64, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, found := strings.Cut(line, " ")
		if !found {
			continue
		}
		metric, lbl, _ := strings.Cut(series, "{")
		if metric != name || !strings.Contains(lbl, labels) {
			continue
		}
		value, _, _ = strings.Cut(strings.TrimSpace(value), " ") // a timestamp may follow
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		sum, ok = sum+v, true
	}
	return sum, ok
}

// natsSlowConsumers is nats-server's count of clients it cut off as slow
// consumers, or -1 when it cannot be read (an external server).
func (c *cluster) natsSlowConsumers() int64 {
	if c.natsEmb != nil {
		return c.natsEmb.NumSlowConsumers()
	}
	if c.natsMon == "" {
		return -1
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(c.natsMon + "/varz")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var v struct {
		SlowConsumers int64 `json:"slow_consumers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return -1
	}
	return v.SlowConsumers
}
