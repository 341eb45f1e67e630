package main

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// load brings users tag0..n-1 online with batched heartbeats and waits for
// every reply and every online event. It returns the seconds it took.
func (b *bench) load(ctx context.Context, im impl, col *collector, tag string, n int) (float64, error) {
	req, err := newRequester(b.c.pub, b.cfg.batchWindow)
	if err != nil {
		return 0, err
	}
	defer req.close()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
	defer cancel()
	t0 := time.Now()
	for start := 0; start < n; start += b.cfg.batchSize {
		if err := req.send(ctx, im.subjects.Heartbeat(), rangePayload(tag, start, min(start+b.cfg.batchSize, n)), nil); err != nil {
			return 0, err
		}
	}
	if err := req.wait(ctx); err != nil {
		return 0, err
	}
	if f := req.failed.Load(); f > 0 {
		return 0, fmt.Errorf("%d heartbeat requests failed: %s", f, req.err())
	}
	if err := col.waitOnline(ctx, n); err != nil {
		return 0, err
	}
	return time.Since(t0).Seconds(), nil
}

// settle waits until the relay has published and trimmed the outbox, so
// Redis memory is measured on the steady data set, for at most limit (the
// trailing second for the last trim included). presenced keeps published
// entries PRESENCE_OUTBOX_RETENTION (30s by default) for its query views,
// so the idle scenario, whose users live an hour, waits up to 45s; the
// offline scenario's users stop heartbeating while it waits and must not
// expire, so it waits less (see offlineSettle).
func (b *bench) settle(ctx context.Context, im impl, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if n, err := b.outboxLen(ctx, im); err != nil || n <= 10 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(min(time.Second, time.Until(deadline)))
}

// outboxLen is the entries in im's outbox streams (one per partition on a
// Redis Cluster).
func (b *bench) outboxLen(ctx context.Context, im impl) (int64, error) {
	var total int64
	for _, k := range im.outboxKeys() {
		n, err := b.c.kv.XLen(ctx, k).Result()
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// memBase is Redis memory before users come online.
type memBase struct{ used, data int64 }

func (b *bench) memBase(ctx context.Context) (memBase, error) {
	used, err := b.c.usedMemory(ctx)
	if err != nil {
		return memBase{}, err
	}
	data, err := b.c.dataMemory(ctx)
	return memBase{used, data}, err
}

// memPerUser returns the data memory per user since base (see dataMemory),
// the used_memory per user since base, and used_memory in MiB.
func (b *bench) memPerUser(ctx context.Context, base memBase, n int) (data, used, usedMB float64) {
	u, err1 := b.c.usedMemory(ctx)
	d, err2 := b.c.dataMemory(ctx)
	if err1 != nil || err2 != nil {
		return -1, -1, -1
	}
	return float64(d-base.data) / float64(n), float64(u-base.used) / float64(n), float64(u) / (1 << 20)
}

// pct returns the p-th percentile of sorted (nearest rank).
func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	k := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(k, len(sorted)-1))]
}

func fmtFloats(fs []float64) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = strconv.FormatFloat(f, 'f', 2, 64)
	}
	return "[" + strings.Join(s, " ") + "]"
}
