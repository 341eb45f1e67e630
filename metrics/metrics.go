// Package metrics holds presenced's Prometheus collectors, one registry per
// process (or per test), so the seed's monitoring list is all there: users
// online, heartbeat (ping) rate, expired count and Redis latency.
package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
)

// Metrics are the collectors. All fields are safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	// Online is the number of users online (sessions in the deadline index).
	Online prometheus.Gauge
	// Heartbeats counts heartbeat ids by result: accepted, rejected, failed.
	Heartbeats *prometheus.CounterVec
	// Disconnects counts disconnect ids by result: accepted, rejected, failed.
	Disconnects *prometheus.CounterVec
	// Rejections counts rejected ids and messages by reason.
	Rejections *prometheus.CounterVec
	// Events counts events published, by status and reason.
	Events *prometheus.CounterVec
	// Expiries counts offline claims by the path that found them: keyspace or sweep.
	Expiries *prometheus.CounterVec
	// Graced counts users given a TTL of grace after an outage.
	Graced prometheus.Counter
	// OfflineLag is the time from a user's deadline to the publish of their
	// expired offline event.
	OfflineLag prometheus.Histogram
	// RedisLatency is the latency of Redis commands and pipelines, by command.
	RedisLatency *prometheus.HistogramVec
	// OutboxDepth is the number of outbox entries (batches of events, one
	// per script call) waiting in the outbox.
	OutboxDepth prometheus.Gauge
	// Republished counts outbox entries taken over from a dead replica.
	Republished prometheus.Counter
	// IntakeDropped counts heartbeat and disconnect messages dropped because
	// the intake held its byte limit (PRESENCE_INTAKE_MB).
	IntakeDropped prometheus.Counter
	// QueueGroupLeaves counts the times this replica left the queue group
	// because Redis was unavailable.
	QueueGroupLeaves prometheus.Counter
	// ConsumersRemoved counts outbox consumers removed because they had
	// nothing pending and were idle (left by replicas that stopped).
	ConsumersRemoved prometheus.Counter
	// StaleEntries counts connection heartbeats and disconnects ignored
	// because their seq was not above the last applied for the connection.
	StaleEntries prometheus.Counter
	// GatewayConnectionsLost counts connections ended because their
	// gateway's lease was lost (lapsed, replaced by a restart, or ended).
	GatewayConnectionsLost prometheus.Counter
	// Leases counts gateway lease messages by result: renewed (taken or
	// extended), replaced (taken from a restarted gateway's previous
	// instance), ended, rejected, failed.
	Leases *prometheus.CounterVec
}

// New returns fresh collectors registered on a new registry, with the Go and
// process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	m := &Metrics{Registry: r}
	m.Online = prometheus.NewGauge(prometheus.GaugeOpts{Name: "presenced_online_users", Help: "Users online (sessions in the deadline index)."})
	m.Heartbeats = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presenced_heartbeats_total", Help: "Heartbeat ids received, by result (accepted, rejected, failed)."}, []string{"result"})
	m.Disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presenced_disconnects_total", Help: "Disconnect ids received, by result (accepted, rejected, failed)."}, []string{"result"})
	m.Rejections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presenced_rejections_total", Help: "Rejected ids and messages, by reason."}, []string{"reason"})
	m.Events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presenced_events_published_total", Help: "Presence events published to NATS, by status and reason."}, []string{"status", "reason"})
	m.Expiries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presenced_expiries_total", Help: "Expired sessions claimed, by the path that found them (keyspace, sweep)."}, []string{"source"})
	m.Graced = prometheus.NewCounter(prometheus.CounterOpts{Name: "presenced_graced_users_total", Help: "Users given one TTL of grace after an outage."})
	m.OfflineLag = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "presenced_offline_lag_seconds", Help: "Time from a user's deadline to the publish of the expired offline event, for offlines the sweep found (the keyspace fast path does not know the deadline).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}})
	m.RedisLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "presenced_redis_command_seconds", Help: "Redis command and pipeline latency, by command.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}}, []string{"command"})
	m.OutboxDepth = prometheus.NewGauge(prometheus.GaugeOpts{Name: "presenced_outbox_depth", Help: "Outbox entries not yet trimmed: batches of events waiting to be published, plus those kept for PRESENCE_OUTBOX_RETENTION (or at most one without)."})
	m.Republished = prometheus.NewCounter(prometheus.CounterOpts{Name: "presenced_outbox_reclaimed_total", Help: "Outbox entries taken over from a replica that did not acknowledge them."})
	m.IntakeDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "presenced_intake_dropped_total", Help: "Heartbeat and disconnect messages dropped because the intake held PRESENCE_INTAKE_MB (answered \"overloaded\" when they had a reply subject)."})
	m.QueueGroupLeaves = prometheus.NewCounter(prometheus.CounterOpts{Name: "presenced_queue_group_leaves_total", Help: "Times this replica left the queue group because Redis was unavailable (it rejoins when Redis answers)."})
	m.ConsumersRemoved = prometheus.NewCounter(prometheus.CounterOpts{Name: "presenced_outbox_consumers_removed_total", Help: "Outbox consumers removed with nothing pending after being idle (left by replicas that stopped without leaving the group)."})
	m.StaleEntries = prometheus.NewCounter(prometheus.CounterOpts{Name: "presenced_stale_entries_total", Help: "Connection heartbeats and disconnects ignored because their seq was not above the last applied for their connection."})
	m.GatewayConnectionsLost = prometheus.NewCounter(prometheus.CounterOpts{Name: "presenced_gateway_connections_lost_total", Help: "Connections ended because their gateway's lease was lost (lapsed, taken by a restarted instance, or ended)."})
	m.Leases = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "presenced_gateway_leases_total", Help: "Gateway lease messages, by result (renewed: taken or extended; replaced: taken from a restarted gateway's previous instance; ended, rejected, failed)."}, []string{"result"})
	for _, c := range []prometheus.Collector{m.Online, m.Heartbeats, m.Disconnects, m.Rejections, m.Events, m.Expiries, m.Graced, m.OfflineLag,
		m.RedisLatency, m.OutboxDepth, m.Republished, m.IntakeDropped, m.QueueGroupLeaves, m.ConsumersRemoved,
		m.StaleEntries, m.GatewayConnectionsLost, m.Leases} {
		f(c)
	}
	return m
}

// Sources are counters kept by the connections themselves, read at scrape time.
type Sources struct {
	NATSReconnects       func() int64 // re-established NATS connections
	SubscriberReconnects func() int64 // re-established Redis expiry subscriptions
	SlowConsumerDrops    func() int64 // NATS slow-consumer errors (messages dropped)
	ExpiryDropped        func() int64 // expired ids left to the sweep because the claimer was behind
	IntakeBytes          func() int64 // bytes of received messages waiting in the intake
	IntakeHighWater      func() int64 // most bytes the intake held at once since start
	// MirrorFailures, on Redis Cluster, counts writes and deletes of the
	// seed's presence keys that failed (nil elsewhere).
	MirrorFailures func() int64
}

// Observe registers the connection counters. Call it once.
func (m *Metrics) Observe(s Sources) {
	counter := func(name, help string, labels prometheus.Labels, f func() int64) {
		m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(f()) }))
	}
	reconn := "Re-established connections, by connection (nats, redis_subscriber)."
	counter("presenced_reconnects_total", reconn, prometheus.Labels{"conn": "nats"}, s.NATSReconnects)
	counter("presenced_reconnects_total", reconn, prometheus.Labels{"conn": "redis_subscriber"}, s.SubscriberReconnects)
	counter("presenced_nats_slow_consumer_total", "NATS slow-consumer errors: times a subscription started dropping messages because its buffer was full (one error per episode, not per message).", nil, s.SlowConsumerDrops)
	counter("presenced_expiry_events_dropped_total", "Expired keyspace events left to the sweep because the claimer was behind.", nil, s.ExpiryDropped)
	if s.MirrorFailures != nil {
		counter("presenced_mirror_failures_total", "Redis Cluster: writes and deletes of presence:user:<id> (the mirror of a session) that failed; the next heartbeat or the key's TTL corrects it.", nil, s.MirrorFailures)
	}
	gauge := func(name, help string, f func() int64) {
		if f == nil {
			return
		}
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(f()) }))
	}
	gauge("presenced_intake_bytes", "Bytes of received heartbeats and disconnects waiting in the intake to be decoded (bounded by PRESENCE_INTAKE_MB).", s.IntakeBytes)
	gauge("presenced_intake_bytes_max", "Most bytes the intake held at once since the replica started.", s.IntakeHighWater)
}

// ViewSources are the query view's figures, read at scrape time.
type ViewSources struct {
	Users     func() int64 // users the view holds online
	FromView  func() int64 // online queries answered by the view
	FromRedis func() int64 // online queries answered by Redis (view building, behind or off)
	Builds    func() int64 // times the view read every session (start, resyncs)
}

// ObserveView registers the query view's figures. Call it once.
func (m *Metrics) ObserveView(s ViewSources) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "presenced_query_view_users", Help: "Users the query view holds online."},
		func() float64 { return float64(s.Users()) }))
	answers := "Online queries answered, by source: view, or redis (view being built, behind by more than the catch-up timeout, or off)."
	for source, f := range map[string]func() int64{"view": s.FromView, "redis": s.FromRedis} {
		m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "presenced_query_online_total", Help: answers, ConstLabels: prometheus.Labels{"source": source}},
			func() float64 { return float64(f()) }))
	}
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "presenced_query_view_builds_total", Help: "Times the query view read every session: at start, after falling behind the outbox retention, after a data set change or a Redis failure."},
		func() float64 { return float64(s.Builds()) }))
}

// RedisHook returns a go-redis hook that observes command and pipeline
// latency into RedisLatency.
func (m *Metrics) RedisHook() redis.Hook { return redisHook{m.RedisLatency} }

type redisHook struct{ h *prometheus.HistogramVec }

func (redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		if !isBlocking(cmd) {
			r.h.WithLabelValues(cmd.Name()).Observe(time.Since(start).Seconds())
		}
		return err
	}
}

func (r redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		r.h.WithLabelValues("pipeline").Observe(time.Since(start).Seconds())
		return err
	}
}

// isBlocking excludes commands whose latency is a wait, not Redis work.
func isBlocking(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "xreadgroup", "xread", "psubscribe", "subscribe":
		return true
	}
	return false
}
