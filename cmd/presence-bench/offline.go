package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// offline measures offline latency at n users against im: load them, let
// Redis settle, keep them heartbeating while some leave (steady), then tally
// each leaver's offline event against its deadline.
func (b *bench) offline(ctx context.Context, im impl, n int) error {
	cfg := b.cfg
	progress("%s offline: %d users, %d replicas, ttl %s, heartbeat every %s, %.1f%%/min leaving for %s, %d background keys",
		im.name, n, cfg.replicas, cfg.offTTL, cfg.hbInterval, cfg.leavePct, cfg.offDuration, cfg.bgKeys)
	if err := b.c.reset(ctx, im, cfg.replicas, cfg.offTTL); err != nil {
		return err
	}
	row := OfflineRow{Impl: im.name, Topology: b.c.topology(), Users: n, BackgroundKeys: cfg.bgKeys, Replicas: len(b.c.workerPIDs()),
		TTL: cfg.offTTL.String(), Grace: cfg.offGrace.String(), HBInterval: cfg.hbInterval.String(), Duration: cfg.offDuration.String(), LeavePctPerMin: cfg.leavePct}
	base, err := b.memBase(ctx)
	if err != nil {
		return err
	}
	tag := "o-"
	if cfg.external {
		tag = fmt.Sprintf("o%02d-", rand.IntN(100))
	}
	col, err := newCollector(b.c.ev, im.subjects, tag, n, false)
	if err != nil {
		return err
	}
	defer col.close()
	if row.LoadSeconds, err = b.load(ctx, im, col, tag, n); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	row.LoadIDsPerSec = float64(n) / row.LoadSeconds
	row.DuplicateOnline, _ = col.onlineDuplicates()
	b.settle(ctx, im, offlineSettle(cfg.offTTL, cfg.hbInterval))
	row.MemPerUser, row.UsedPerUser, row.UsedMemoryMB = b.memPerUser(ctx, base, n)
	progress("  loaded in %.1fs; %.0f bytes/user in Redis; steady state for %s", row.LoadSeconds, row.MemPerUser, cfg.offDuration)

	col.mark()
	st, err := b.steady(ctx, im, col, tag, n)
	if err != nil {
		return err
	}
	row.Usage = st.usage
	row.MaxRoundSeconds = st.maxRound.Seconds()
	row.FailedRequests = st.failed
	row.UnknownDeadline = st.unknown.Load()

	var lat []float64
	grace := cfg.offGrace.Nanoseconds()
	for i := range n {
		lat = row.tally(st.leaver[i].Load(), st.deadline[i].Load(), col.offline[i].Load(), col.offFirst[i].Load(), grace, lat)
	}
	row.Flaps = col.sinceMark.Load()
	if len(lat) > 0 {
		slices.Sort(lat)
		row.P50Ms, row.P90Ms, row.P99Ms = pct(lat, 50), pct(lat, 90), pct(lat, 99)
		row.MinMs, row.MaxMs = lat[0], lat[len(lat)-1]
	}
	b.rep.Offline = append(b.rep.Offline, row)
	progress("  %d leavers: p50 %.0fms p99 %.0fms max %.0fms; missing %d, late %d, duplicated %d (%d events), false offline %d, flaps %d; workers %.0f%% cpu",
		row.Leavers, row.P50Ms, row.P99Ms, row.MaxMs, row.Missing, row.Late, row.DuplicatedUsers, row.DuplicateEvents, row.FalseOffline, row.Flaps, row.Usage.WorkerCPUSum)
	return b.c.checkWorkers()
}

// tally adds one user to the row: a user who kept heartbeating and got an
// offline is a false offline; a leaver is unknown (its deadline could not
// be read: steady counts it in UnknownDeadline, nothing else does),
// missing (no event by the end), or received, and then also late if its
// first event came more than grace after its deadline. Every received
// leaver's latency (first event minus deadline, ms) is appended to lat,
// late ones included. Times are unix nanos.
func (row *OfflineRow) tally(leaver bool, deadline int64, events uint32, first, grace int64, lat []float64) []float64 {
	if !leaver {
		if events > 0 {
			row.FalseOffline++
			row.FalseOfflineEvents += int64(events)
		}
		return lat
	}
	row.Leavers++
	if deadline == 0 {
		return lat
	}
	if events == 0 {
		row.Missing++
		return lat
	}
	row.Received++
	if first-deadline > grace {
		row.Late++
	}
	if events > 1 {
		row.DuplicatedUsers++
		row.DuplicateEvents += int64(events) - 1
	}
	return append(lat, float64(first-deadline)/1e6)
}

type steadyResult struct {
	leaver   []atomic.Bool
	deadline []atomic.Int64 // unix nanos; 0 when unknown
	usage    usage
	maxRound time.Duration
	failed   int64
	unknown  atomic.Int64

	// leavers counts the users who left; known, those whose deadline was
	// read (or found unknown); maxDeadline is the latest deadline read.
	leavers, known, maxDeadline atomic.Int64
	pttl                        *batchQueue // leavers whose deadline is to be read
}

// startSteady prepares a steady phase of n users: its result, a requester,
// and the reader of the leavers' deadlines (pushed to st.pttl once their
// last heartbeat was applied; deadline = time before the PTTL + PTTL: at
// most one round trip and 1ms early, so a latency is at most that much too
// long). stop ends the reader and the requester.
func (b *bench) startSteady(im impl, tag string, n int) (st *steadyResult, req *requester, stop func(), err error) {
	st = &steadyResult{leaver: make([]atomic.Bool, n), deadline: make([]atomic.Int64, n)}
	req, err = newRequester(b.c.pub, b.cfg.batchWindow)
	if err != nil {
		return nil, nil, nil, err
	}
	st.pttl = &batchQueue{signal: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		b.readDeadlines(im, tag, st)
	}()
	// Replies may still come after stop: the queue ignores them.
	return st, req, func() { st.pttl.close(); wg.Wait(); req.close() }, nil
}

// leaversDone reports whether the phase may end: every leaver's offline
// arrived (col) and their latest deadline, or until if later, is 2 s past
// (room for duplicates); or offline-grace is past it whatever arrived
// (timedOut).
func (st *steadyResult) leaversDone(now time.Time, col *collector, until time.Time, grace time.Duration) (done, timedOut bool) {
	if st.known.Load() < st.leavers.Load() {
		return false, false
	}
	md := time.Unix(0, st.maxDeadline.Load())
	if until.After(md) {
		md = until
	}
	switch {
	case now.Before(md.Add(2 * time.Second)): // room for duplicates
		return false, false
	case now.After(md.Add(grace)):
		return true, true
	}
	for i := range st.leaver {
		if st.leaver[i].Load() && st.deadline[i].Load() != 0 && col.offline[i].Load() == 0 {
			return false, false
		}
	}
	return true, false
}

// batchQueue is an unbounded queue of leaver batches from the reply
// goroutine (which must not block) to the PTTL reader.
type batchQueue struct {
	mu     sync.Mutex
	items  [][]int32
	closed bool
	signal chan struct{}
}

func (q *batchQueue) push(b []int32) {
	q.mu.Lock()
	if !q.closed {
		q.items = append(q.items, b)
	}
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *batchQueue) take() ([][]int32, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items, q.closed
}

func (q *batchQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
}

// steady keeps the n users online with batched heartbeats every
// hbInterval, spread evenly over the interval. While offline-duration runs,
// each heartbeat is, with the probability that makes leave-per-min % of the
// users leave per minute, a user's last: the user leaves, and its deadline
// is read with PTTL once the heartbeat is applied. It stops when every
// leaver's deadline is 2s past and its offline event arrived, or
// offline-grace after the last deadline.
func (b *bench) steady(ctx context.Context, im impl, col *collector, tag string, n int) (*steadyResult, error) {
	cfg := b.cfg
	st, req, stop, err := b.startSteady(im, tag, n)
	if err != nil {
		return nil, err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.offDuration+cfg.offTTL+cfg.offGrace+cfg.timeout)
	defer cancel()

	rng := rand.New(rand.NewPCG(uint64(n), 42))
	perSecond := float64(n) * cfg.leavePct / 100 / 60
	m := b.c.meter(ctx)
	start := time.Now()
	leaveUntil := start.Add(cfg.offDuration)
	lastCheck := time.Time{}
	finished := func(now time.Time) bool {
		if now.Before(leaveUntil) || now.Sub(lastCheck) < 250*time.Millisecond {
			return false
		}
		lastCheck = now
		done, _ := st.leaversDone(now, col, time.Time{}, cfg.offGrace)
		return done
	}
	subject := im.subjects.Heartbeat()
	active := make([]int32, n)
	for i := range active {
		active[i] = int32(i)
	}
	next := make([]int32, 0, n)
	done := false
	for !done {
		roundStart := time.Now()
		prob := perSecond * cfg.hbInterval.Seconds() / float64(max(len(active), 1))
		batches := (len(active) + cfg.batchSize - 1) / cfg.batchSize
		if batches == 0 {
			return nil, errors.New("every user left: lower --leave-per-min or --offline-duration")
		}
		for k := 0; k < batches && !done; k++ {
			target := roundStart.Add(time.Duration(int64(cfg.hbInterval) * int64(k) / int64(batches)))
			for {
				now := time.Now()
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
			batch := active[k*cfg.batchSize : min((k+1)*cfg.batchSize, len(active))]
			leaving := time.Now().Before(leaveUntil)
			idx := make([]int, len(batch))
			var gone []int32
			for j, i := range batch {
				idx[j] = int(i)
				if leaving && rng.Float64() < prob {
					gone = append(gone, i)
					st.leaver[i].Store(true)
					st.leavers.Add(1)
				} else {
					next = append(next, i)
				}
			}
			var cb func()
			if len(gone) > 0 {
				cb = func() { st.pttl.push(gone) }
			}
			if err := req.send(ctx, subject, batchPayload(tag, idx), cb); err != nil {
				return nil, fmt.Errorf("steady state: %w", err)
			}
		}
		if !done {
			// users of the batches not sent are still in active
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
	return st, nil
}

// readDeadlines reads the deadline of each leaver pushed to q (PTTL of its
// user key, after its last heartbeat was applied) into st, counting each
// in known and keeping the latest in maxDeadline, until q is closed and
// empty. deadline = time before the PTTL + PTTL: at most one round trip
// and 1ms early, so a latency is at most that much too long.
func (b *bench) readDeadlines(im impl, tag string, st *steadyResult) {
	q := st.pttl
	for {
		batches, closed := q.take()
		for _, batch := range batches {
			t := time.Now().UnixNano()
			cmds := make([]*redis.DurationCmd, len(batch))
			_, _ = b.c.kv.Pipelined(context.Background(), func(p redis.Pipeliner) error {
				for k, i := range batch {
					cmds[k] = p.PTTL(context.Background(), im.userKey(userID(tag, int(i))))
				}
				return nil
			})
			for k, i := range batch {
				d, err := cmds[k].Result()
				if err == nil && d >= 0 {
					dl := t + d.Nanoseconds()
					st.deadline[i].Store(dl)
					for {
						cur := st.maxDeadline.Load()
						if dl <= cur || st.maxDeadline.CompareAndSwap(cur, dl) {
							break
						}
					}
				} else {
					st.unknown.Add(1)
				}
				st.known.Add(1)
			}
		}
		if closed && len(batches) == 0 {
			return
		}
		if len(batches) == 0 {
			select {
			case <-q.signal:
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// offlineSettle bounds the offline scenario's settle: its users heartbeat
// last during the load and next at most one interval into the steady
// state, so quiet time plus the interval must stay under the TTL. Half the
// slack is 15s at the full scale's defaults (TTL 60s, every 30s): the
// outbox still holds its retained entries then, and the offline table's
// memory figure includes them.
func offlineSettle(ttl, interval time.Duration) time.Duration {
	return max(0, (ttl-interval)/2)
}
