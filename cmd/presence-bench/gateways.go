package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presenced/presenced/contract"
)

// GatewaysRow is the gateways scenario: users online through gateways
// that hold leases, with named connections, some users on two or more
// gateways; users leaving (every connection stops: they expire) and one
// gateway killed (its lease and its connections' heartbeats stop).
type GatewaysRow struct {
	Users          int     `json:"users"`
	Gateways       int     `json:"gateways"`
	Connections    int     `json:"connections"`
	ConnsPerUser   float64 `json:"connections_per_user"`
	Replicas       int     `json:"replicas"`
	BackgroundKeys int     `json:"background_keys"`
	TTL            string  `json:"ttl"`
	HBInterval     string  `json:"hb_interval"`
	Lease          string  `json:"gateway_lease"`
	Duration       string  `json:"leaving_for"`
	LeavePctPerMin float64 `json:"leave_pct_per_min"`
	Grace          string  `json:"grace"`

	LoadSeconds      float64 `json:"load_seconds"`
	LoadConnsPerSec  float64 `json:"load_connections_per_sec"`
	DuplicateOnline  int64   `json:"duplicate_online_users_at_load"`
	MemPerUser       float64 `json:"redis_data_bytes_per_user"`
	UsedPerUser      float64 `json:"redis_used_memory_bytes_per_user"`
	UsedMemoryMB     float64 `json:"redis_used_memory_mb"`
	MaxRoundSeconds  float64 `json:"max_heartbeat_round_seconds"`
	FailedRequests   int64   `json:"failed_requests"`
	RejectedEntries  int64   `json:"rejected_entries"`
	LeaseFailures    int64   `json:"lease_failures"`
	Flaps            int64   `json:"online_events_in_steady_state"`
	KilledAfterS     float64 `json:"killed_after_s"`
	KilledGateway    string  `json:"killed_gateway"`
	KilledConns      int     `json:"killed_connections"`
	LeaseExpiryKnown bool    `json:"lease_expiry_known"`

	// Expired: users who stopped every connection (none on the killed
	// gateway), latency = first offline minus the deadline (PTTL of the
	// user key after the last heartbeat was applied); FalseOffline in it
	// counts users who kept a connection and are on no killed gateway.
	Expired OfflineRow `json:"expired"`
	// Lost: users whose every connection was on the killed gateway,
	// latency = first offline minus the lease's expiry (its score in
	// Redis's lease index after the last renewal); Late in it counts
	// events more than LostBound after the expiry.
	Lost OfflineRow `json:"gateway_lost"`
	// LostBound is the target's "within lease + 1 s" measured from the
	// expiry: 1 s.
	LostBound string `json:"gateway_lost_bound"`
	// Elsewhere: users with a connection on the killed gateway and another
	// one elsewhere; any offline event for them counts in its FalseOffline.
	Elsewhere      OfflineRow `json:"connected_elsewhere"`
	ElsewhereUsers int64      `json:"connected_elsewhere_users"`
	// WrongReason counts users whose offline came with another reason than
	// expected (expired for Expired, gateway_lost for Lost).
	ExpiredWrongReason int64 `json:"expired_wrong_reason"`
	LostWrongReason    int64 `json:"gateway_lost_wrong_reason"`

	// Graced and ConnsLost are each replica's presenced_graced_users_total
	// (users given a TTL of grace because no sweep ran for longer than the
	// outage threshold) and presenced_gateway_connections_lost_total at
	// the end (-1: not read).
	Graced    []int64 `json:"graced_users_per_replica"`
	ConnsLost []int64 `json:"gateway_connections_lost_per_replica"`

	Usage usage `json:"usage_steady"`
}

// gwLostBound is how long after a lost gateway's lease expired its users'
// offline events may come: the target is "within lease + 1 s" of the last
// renewal.
const gwLostBound = time.Second

// gwUsers describes the scenario's users: user i has conns[i] connections,
// connection k on gateway (i+k) % gateways, with id "c-<k><9 digits of i>"
// (12 bytes).
type gwUsers struct {
	n, gateways int
	conns       []uint8
}

func newGWUsers(n, gateways int, perUser float64) gwUsers {
	u := gwUsers{n: n, gateways: gateways, conns: make([]uint8, n)}
	extra := perUser - 1
	whole := int(extra)
	frac := extra - float64(whole)
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range u.conns {
		k := 1 + whole
		if rng.Float64() < frac {
			k++
		}
		u.conns[i] = uint8(min(k, gateways))
	}
	return u
}

// on reports whether user i has a connection on gateway g.
func (u gwUsers) on(i, g int) bool {
	return (g-i%u.gateways+u.gateways)%u.gateways < int(u.conns[i])
}

func gwID(g int) string { return "gw-" + strconv.Itoa(g) }

func appendConnID(b []byte, i, k int) []byte {
	b = append(b, "c-"...)
	b = strconv.AppendInt(b, int64(k), 10)
	var d [20]byte
	s := strconv.AppendInt(d[:0], int64(i), 10)
	for range 9 - len(s) {
		b = append(b, '0')
	}
	return append(b, s...)
}

// connPayloads returns one message per gateway for the users idx (their
// connections on that gateway, gateway skip left out):
// {"gatewayId":"gw-1","connections":[{"userId":..,"connectionId":..,"seq":..}, ...]}.
func (u gwUsers) connPayloads(tag string, idx []int32, seq int64, skip int) [][]byte {
	out := make([][]byte, u.gateways)
	for _, i := range idx {
		for k := range int(u.conns[i]) {
			g := (int(i) + k) % u.gateways
			if g == skip {
				continue
			}
			b := out[g]
			if b == nil {
				b = append(make([]byte, 0, 64*len(idx)), `{"gatewayId":"`...)
				b = append(b, gwID(g)...)
				b = append(b, `","connections":[`...)
			} else {
				b = append(b, ',')
			}
			b = append(b, `{"userId":"`...)
			b = appendUserID(b, tag, int(i))
			b = append(b, `","connectionId":"`...)
			b = appendConnID(b, int(i), k)
			b = append(b, `","seq":`...)
			b = strconv.AppendInt(b, seq, 10)
			b = append(b, '}')
			out[g] = b
		}
	}
	var msgs [][]byte
	for _, b := range out {
		if b != nil {
			msgs = append(msgs, append(b, "]}"...))
		}
	}
	return msgs
}

// leaseKeeper takes and renews the gateways' leases every lease/3 until
// stopped; a killed gateway's lease is no longer renewed. After each
// renewal of the gateway to be killed it reads the lease's expiry from
// Redis's lease index (its score: Redis time in ms).
type leaseKeeper struct {
	b        *bench
	im       impl
	instance string
	gateways int
	lease    time.Duration

	killed   atomic.Int32 // gateway index + 1, 0 for none
	expiry   atomic.Int64 // ms: the watched gateway's lease expiry after its last renewal
	failures atomic.Int64
	firstErr atomic.Value
}

func (k *leaseKeeper) renew(ctx context.Context, g int) error {
	data, _ := json.Marshal(contract.GatewayLeaseRequest{GatewayID: gwID(g), InstanceID: k.instance})
	msg, err := k.b.c.pub.RequestWithContext(ctx, k.im.subjects.GatewayHeartbeat(), data)
	if err != nil {
		return fmt.Errorf("lease of %s: %w", gwID(g), err)
	}
	var r contract.GatewayLeaseReply
	if err := json.Unmarshal(msg.Data, &r); err != nil || r.Error != "" {
		return fmt.Errorf("lease of %s: %q", gwID(g), msg.Data)
	}
	if g != 0 {
		return nil
	}
	// The expiry of gateway 0's lease (the one killed), as the sweep sees it.
	cur, err := k.b.c.rdb.Get(ctx, k.im.keys+"gw:"+gwID(g)).Result()
	if err != nil {
		return fmt.Errorf("lease of %s: %w", gwID(g), err)
	}
	num, _, _ := cutSpace(cur)
	score, err := k.b.c.rdb.ZScore(ctx, k.im.keys+"leases", num).Result()
	if err != nil {
		return fmt.Errorf("lease %s of %s: %w", num, gwID(g), err)
	}
	k.expiry.Store(int64(score))
	return nil
}

func cutSpace(s string) (string, string, bool) {
	for i := range len(s) {
		if s[i] == ' ' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// run renews every lease each lease/3 until ctx is done.
func (k *leaseKeeper) run(ctx context.Context) {
	t := time.NewTicker(k.lease / 3)
	defer t.Stop()
	for {
		for g := range k.gateways {
			if int(k.killed.Load()) == g+1 {
				continue
			}
			if err := k.renew(ctx, g); err != nil {
				if ctx.Err() != nil {
					return
				}
				k.failures.Add(1)
				k.firstErr.CompareAndSwap(nil, err.Error())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// gateways runs the gateways scenario against presenced (the seed has no
// connections): n users through --gateways gateways with leases,
// --conns-per-user connections per user on average, TTL and heartbeat
// interval of the offline scenario. It loads them (one message per gateway
// per group of users), keeps them heartbeating while --leave-per-min %
// of the users not on gateway 0 leave (all their connections stop), kills
// gateway 0 halfway through the leaving window (its lease and its
// connections' heartbeats stop), and tallies every user's offline events.
func (b *bench) gateways(ctx context.Context, im impl, n int) error {
	cfg := b.cfg
	users := newGWUsers(n, cfg.gateways, cfg.connsPerUser)
	row := GatewaysRow{Users: n, Gateways: cfg.gateways, Replicas: cfg.replicas, BackgroundKeys: cfg.bgKeys,
		TTL: cfg.offTTL.String(), HBInterval: cfg.hbInterval.String(), Lease: cfg.gwLease.String(), Duration: cfg.offDuration.String(),
		LeavePctPerMin: cfg.leavePct, Grace: cfg.offGrace.String(), KilledGateway: gwID(0), LostBound: gwLostBound.String()}
	for i := range n {
		row.Connections += int(users.conns[i])
		if users.on(i, 0) {
			row.KilledConns++
		}
	}
	row.ConnsPerUser = float64(row.Connections) / float64(n)
	progress("%s gateways: %d users, %d connections (%.2f per user) on %d gateways, %d on %s; %d replicas, ttl %s, heartbeat every %s, lease %s",
		im.name, n, row.Connections, row.ConnsPerUser, cfg.gateways, row.KilledConns, gwID(0), cfg.replicas, cfg.offTTL, cfg.hbInterval, cfg.gwLease)
	if err := b.c.reset(ctx, im, cfg.replicas, cfg.offTTL, "--gateway-lease", cfg.gwLease.String()); err != nil {
		return err
	}
	row.Replicas = len(b.c.workerPIDs())
	base, err := b.memBase(ctx)
	if err != nil {
		return err
	}
	tag := "w-"
	if cfg.external {
		tag = fmt.Sprintf("w%02d-", rand.IntN(100))
	}
	col, err := newCollector(b.c.ev, im.subjects, tag, n, true)
	if err != nil {
		return err
	}
	defer col.close()

	kctx, stopLeases := context.WithCancel(ctx)
	keeper := &leaseKeeper{b: b, im: im, instance: fmt.Sprintf("bench-%08x", rand.Uint32()), gateways: cfg.gateways, lease: cfg.gwLease}
	for g := range cfg.gateways {
		if err := keeper.renew(ctx, g); err != nil {
			stopLeases()
			return err
		}
	}
	var kwg sync.WaitGroup
	kwg.Add(1)
	go func() { defer kwg.Done(); keeper.run(kctx) }()
	defer func() { stopLeases(); kwg.Wait() }()

	group := max(1, int(float64(cfg.batchSize*cfg.gateways)/row.ConnsPerUser))
	t0 := time.Now()
	if err := b.gwLoad(ctx, im, col, users, tag, group); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	row.LoadSeconds = time.Since(t0).Seconds()
	row.LoadConnsPerSec = float64(row.Connections) / row.LoadSeconds
	row.DuplicateOnline, _ = col.onlineDuplicates()
	// The steady state heartbeats the users in the order they were loaded,
	// starting now: user i's connections wait at most max(load, interval)
	// for their next heartbeat, which must stay under the TTL.
	if limit := cfg.offTTL - cfg.offTTL/6; row.LoadSeconds > limit.Seconds() {
		return fmt.Errorf("loading took %.1fs, more than %s (ttl %s less a sixth): the first users' connections would expire before their next heartbeat; give a longer --ttl", row.LoadSeconds, limit, cfg.offTTL)
	}
	// No settle: the first users' next heartbeat is due (the figure
	// includes the outbox entries still retained).
	row.MemPerUser, row.UsedPerUser, row.UsedMemoryMB = b.memPerUser(ctx, base, n)
	progress("  loaded in %.1fs (%.0f connections/s); %.0f bytes/user in Redis; steady state for %s, %s killed after %s",
		row.LoadSeconds, row.LoadConnsPerSec, row.MemPerUser, cfg.offDuration, gwID(0), cfg.offDuration/2)

	col.mark()
	st, err := b.gwSteady(ctx, im, col, users, tag, group, keeper, &row)
	if err != nil {
		return err
	}
	row.Usage = st.usage
	row.MaxRoundSeconds = st.maxRound.Seconds()
	row.FailedRequests = st.failed
	row.LeaseFailures = keeper.failures.Load()
	row.Flaps = col.sinceMark.Load()
	expiry := keeper.expiry.Load() * int64(time.Millisecond)
	row.LeaseExpiryKnown = expiry > 0

	var expLat, lostLat []float64
	grace := cfg.offGrace.Nanoseconds()
	for i := range n {
		events, first := col.offline[i].Load(), col.offFirst[i].Load()
		switch {
		case users.on(i, 0) && users.conns[i] == 1:
			lostLat = row.Lost.tally(true, expiry, events, first, gwLostBound.Nanoseconds(), lostLat)
			if events > 0 && col.gwLost[i].Load() != events {
				row.LostWrongReason++
			}
		case users.on(i, 0):
			row.ElsewhereUsers++
			row.Elsewhere.tally(false, 0, events, first, grace, nil)
		default:
			expLat = row.Expired.tally(st.leaver[i].Load(), st.deadline[i].Load(), events, first, grace, expLat)
			if st.leaver[i].Load() && events > 0 && col.expired[i].Load() != events {
				row.ExpiredWrongReason++
			}
		}
	}
	row.Expired.UnknownDeadline = st.unknown.Load()
	percentiles(&row.Expired, expLat)
	percentiles(&row.Lost, lostLat)
	if !row.LeaseExpiryKnown {
		row.Lost.UnknownDeadline = row.Lost.Leavers
	}
	for _, p := range b.c.workers {
		text, err := scrape(p.http)
		get := func(name string) int64 {
			if v, ok := promSum(text, name, ""); err == nil && ok {
				return int64(v)
			}
			return -1
		}
		row.Graced = append(row.Graced, get("presenced_graced_users_total"))
		row.ConnsLost = append(row.ConnsLost, get("presenced_gateway_connections_lost_total"))
	}
	b.rep.Gateways = append(b.rep.Gateways, row)
	progress("  expired: %d leavers, p50 %.0fms p99 %.0fms max %.0fms; missing %d, late %d, duplicated %d, wrong reason %d, false offline %d",
		row.Expired.Leavers, row.Expired.P50Ms, row.Expired.P99Ms, row.Expired.MaxMs, row.Expired.Missing, row.Expired.Late, row.Expired.DuplicatedUsers, row.ExpiredWrongReason, row.Expired.FalseOffline)
	progress("  %s killed: %d users only on it, p50 %.0fms p99 %.0fms max %.0fms after the lease expired; missing %d, over %s %d, duplicated %d, wrong reason %d; %d users connected elsewhere, %d of them got an offline; flaps %d",
		gwID(0), row.Lost.Leavers, row.Lost.P50Ms, row.Lost.P99Ms, row.Lost.MaxMs, row.Lost.Missing, gwLostBound, row.Lost.Late, row.Lost.DuplicatedUsers, row.LostWrongReason,
		row.ElsewhereUsers, row.Elsewhere.FalseOffline, row.Flaps)
	progress("  per replica: graced users %s, gateway connections lost %s", fmtInts(row.Graced), fmtInts(row.ConnsLost))
	return b.c.checkWorkers()
}

func percentiles(row *OfflineRow, lat []float64) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	row.P50Ms, row.P90Ms, row.P99Ms = pct(lat, 50), pct(lat, 90), pct(lat, 99)
	row.MinMs, row.MaxMs = lat[0], lat[len(lat)-1]
}

// gwLoad brings every user online: for each group of users, one
// connections message per gateway, with at most --batch-window awaiting a
// reply; then waits for every reply and online event.
func (b *bench) gwLoad(ctx context.Context, im impl, col *collector, users gwUsers, tag string, group int) error {
	req, err := newRequester(b.c.pub, b.cfg.batchWindow)
	if err != nil {
		return err
	}
	defer req.close()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
	defer cancel()
	idx := make([]int32, 0, group)
	for start := 0; start < users.n; start += group {
		idx = idx[:0]
		for i := start; i < min(start+group, users.n); i++ {
			idx = append(idx, int32(i))
		}
		for _, m := range users.connPayloads(tag, idx, 1, -1) {
			if err := req.send(ctx, im.subjects.Heartbeat(), m, nil); err != nil {
				return err
			}
		}
	}
	if err := req.wait(ctx); err != nil {
		return err
	}
	if f := req.failed.Load(); f > 0 {
		return fmt.Errorf("%d heartbeat requests failed: %s", f, req.err())
	}
	if r := req.rejected.Load(); r > 0 {
		return fmt.Errorf("%d connection entries rejected: %s", r, req.err())
	}
	return col.waitOnline(ctx, users.n)
}

// gwSteady is the offline scenario's steady state with connections: every
// hbInterval each group's connections are heartbeated (one message per
// gateway), spread over the interval. While --offline-duration runs, each
// user on no killed gateway leaves with the offline scenario's
// probability: its connections are heartbeated a last time, and its
// deadline is read with PTTL once every message of its group was applied.
// Halfway through, gateway 0 is killed: its lease is no longer renewed and
// its connections no longer heartbeated. It stops when every leaver's and
// every lost user's event arrived (2 s past the last deadline and the
// lease expiry, for duplicates) or --offline-grace after the last of them.
func (b *bench) gwSteady(ctx context.Context, im impl, col *collector, users gwUsers, tag string, group int, keeper *leaseKeeper, row *GatewaysRow) (*steadyResult, error) {
	cfg := b.cfg
	n := users.n
	st, req, stop, err := b.startSteady(im, tag, n)
	if err != nil {
		return nil, err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.offDuration+cfg.offTTL+cfg.offGrace+cfg.timeout)
	defer cancel()

	var lost []int32 // users only on gateway 0
	for i := range n {
		if users.on(i, 0) && users.conns[i] == 1 {
			lost = append(lost, int32(i))
		}
	}
	eligible := 0
	for i := range n {
		if !users.on(i, 0) {
			eligible++
		}
	}
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	// leave-per-min % of all users per minute, from the users on no killed
	// gateway.
	perSecond := float64(n) * cfg.leavePct / 100 / 60
	m := b.c.meter(ctx)
	start := time.Now()
	leaveUntil := start.Add(cfg.offDuration)
	killAt := start.Add(cfg.offDuration / 2)
	killed := false
	lastCheck := time.Time{}
	finished := func(now time.Time) bool {
		if !killed || now.Before(leaveUntil) || now.Sub(lastCheck) < 250*time.Millisecond {
			return false
		}
		lastCheck = now
		var until time.Time
		if ex := keeper.expiry.Load(); ex > 0 {
			until = time.UnixMilli(ex)
		}
		done, timedOut := st.leaversDone(now, col, until, cfg.offGrace)
		if !done || timedOut {
			return done
		}
		for _, i := range lost {
			if col.offline[i].Load() == 0 {
				return false
			}
		}
		return true
	}
	subject := im.subjects.Heartbeat()
	active := make([]int32, n)
	for i := range active {
		active[i] = int32(i)
	}
	next := make([]int32, 0, n)
	done := false
	seq := int64(1)
	skip := -1
	for !done {
		seq++
		roundStart := time.Now()
		prob := perSecond * cfg.hbInterval.Seconds() / float64(max(eligible-int(st.leavers.Load()), 1))
		groups := (len(active) + group - 1) / group
		if groups == 0 {
			return nil, errors.New("every user left: lower --leave-per-min or --offline-duration")
		}
		for k := 0; k < groups && !done; k++ {
			target := roundStart.Add(time.Duration(int64(cfg.hbInterval) * int64(k) / int64(groups)))
			for {
				now := time.Now()
				if !killed && !now.Before(killAt) {
					killed, skip = true, 0
					keeper.killed.Store(1)
					row.KilledAfterS = now.Sub(start).Seconds()
					progress("  %s killed %.1fs into the steady state: its lease expires at %s", gwID(0), row.KilledAfterS, time.UnixMilli(keeper.expiry.Load()).UTC().Format("15:04:05.000"))
				}
				if done = finished(now); done || !now.Before(target) {
					break
				}
				select {
				case <-ctx.Done():
					return nil, fmt.Errorf("steady state: %w", ctx.Err())
				case <-time.After(min(target.Sub(now), 250*time.Millisecond)):
				}
			}
			if done {
				break
			}
			batch := active[k*group : min((k+1)*group, len(active))]
			leaving := time.Now().Before(leaveUntil)
			var gone []int32
			for _, i := range batch {
				switch {
				case killed && users.on(int(i), 0) && users.conns[i] == 1:
					// on the killed gateway only: nothing left to send
				case leaving && !users.on(int(i), 0) && rng.Float64() < prob:
					gone = append(gone, i)
					st.leaver[i].Store(true)
					st.leavers.Add(1)
				default:
					next = append(next, i)
				}
			}
			msgs := users.connPayloads(tag, batch, seq, skip)
			var cb func()
			if len(gone) > 0 {
				left := atomic.Int32{}
				left.Store(int32(len(msgs)))
				cb = func() {
					if left.Add(-1) == 0 {
						st.pttl.push(gone)
					}
				}
			}
			for _, msg := range msgs {
				if err := req.send(ctx, subject, msg, cb); err != nil {
					return nil, fmt.Errorf("steady state: %w", err)
				}
			}
		}
		if !done {
			active, next = next, active[:0]
			st.maxRound = max(st.maxRound, time.Since(roundStart))
		}
		if err := b.c.checkWorkers(); err != nil {
			return nil, err
		}
	}
	st.usage = m.done(ctx)
	_ = req.wait(ctx)
	st.failed = req.failed.Load() + req.lost()
	row.RejectedEntries = req.rejected.Load()
	return st, nil
}
