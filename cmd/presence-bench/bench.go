package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// bench runs the scenarios and fills the report.
type bench struct {
	cfg    *config
	c      *cluster
	rep    *Report
	profMu sync.Mutex
}

// run starts the cluster and runs the selected scenarios in order.
func (b *bench) run(ctx context.Context) error {
	b.rep.Started = time.Now().UTC().Format(time.RFC3339)
	b.rep.Machine = machineInfo()
	b.rep.Settings = b.settings()
	if err := b.c.start(ctx); err != nil {
		return err
	}
	b.rep.Machine.NATS = b.c.pub.ConnectedServerVersion()
	if m, err := b.c.info(ctx, "server"); err == nil {
		b.rep.Machine.Redis = m["redis_version"]
	}
	b.rep.MaxPayload = b.c.pub.MaxPayload()
	if b.cfg.external {
		b.note("external deployment: presenced workers were not started by the bench; nothing is flushed between scenarios, so Redis memory per user is a delta over whatever else changed meanwhile")
		if len(b.cfg.workerPIDs) == 0 {
			b.note("external deployment without --worker-pids: presenced worker CPU and RSS are not measured")
		}
	}
	if b.cfg.natsMode == "embedded" {
		b.note("nats-server embedded in the bench process: its CPU is counted in the bench's")
	}
	if b.cfg.scenarios["ceiling"] {
		if err := b.ceiling(ctx); err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
	}
	if b.cfg.scenarios["throughput"] {
		if err := b.throughput(ctx); err != nil {
			return fmt.Errorf("throughput: %w", err)
		}
	}
	if b.cfg.scenarios["offline"] {
		for _, n := range b.cfg.users {
			for _, im := range b.c.impls() {
				if err := b.offline(ctx, im, n); err != nil {
					return fmt.Errorf("%s offline at %d users: %w", im.name, n, err)
				}
			}
		}
	}
	if b.cfg.scenarios["idle"] || b.cfg.scenarios["query"] {
		n := slices.Max(b.cfg.users)
		for _, im := range b.c.impls() {
			if err := b.idleQuery(ctx, im, n); err != nil {
				return fmt.Errorf("%s idle/query at %d users: %w", im.name, n, err)
			}
		}
	}
	if b.cfg.scenarios["gateways"] {
		if b.cfg.baseline == "seed" {
			b.note("gateways scenario: presenced only (the seed has no connections or gateways)")
		}
		if err := b.gateways(ctx, b.c.presenced(), b.cfg.gwUsers); err != nil {
			return fmt.Errorf("presenced gateways at %d users: %w", b.cfg.gwUsers, err)
		}
	}
	if b.cfg.scenarios["storm"] {
		for _, im := range b.c.impls() {
			if err := b.storm(ctx, im, b.cfg.stormUsers); err != nil {
				return fmt.Errorf("%s storm of %d users: %w", im.name, b.cfg.stormUsers, err)
			}
		}
	}
	return b.c.stopWorkers()
}

func (b *bench) note(format string, args ...any) {
	b.rep.Notes = append(b.rep.Notes, fmt.Sprintf(format, args...))
}

func (b *bench) settings() map[string]any {
	c := b.cfg
	return map[string]any{
		"scale": c.scale, "users": c.users, "replicas": c.replicas, "baseline": c.baseline,
		"external": c.external, "nats": c.natsMode,
		"hb_users": c.hbUsers, "batch_users": c.batchUsers, "rounds": c.rounds, "batch_size": c.batchSize,
		"window": c.window, "batch_window": c.batchWindow, "hb_ttl": c.hbTTL.String(),
		"ttl": c.offTTL.String(), "hb_interval": c.hbInterval.String(), "offline_duration": c.offDuration.String(),
		"offline_grace": c.offGrace.String(), "leave_pct_per_min": c.leavePct, "background_keys": c.bgKeys,
		"idle_ttl": c.idleTTL.String(), "idle_duration": c.idleDuration.String(),
		"query_reps": c.queryReps, "query_batch_reps": c.query10k, "query_ids": c.queryIDs,
		"ceiling_n": c.ceilingN, "seed_concurrency": c.seedConcurrency, "seed_scan_count": c.scanCount, "seed_pending_limit": c.seedPending,
		"storm_users": c.stormUsers, "storm_bound": c.stormBound.String(),
		"gw_users": c.gwUsers, "gateways": c.gateways, "conns_per_user": c.connsPerUser, "gateway_lease": c.gwLease.String(),
		"user_id_length": len("o-") + idWidth, "timeout": c.timeout.String(), "presenced_flags": strings.Join(c.presencedFlags, " "), "reply_every": c.replyEvery,
		"stream": c.stream, "redis_topology": b.c.topology(),
		"redis_cluster": c.redisCluster, "redis_cluster_masters": c.clusterMasters, "redis_cluster_replicas": c.clusterReplicas,
		"redis_cluster_partitions": c.clusterPartitions,
	}
}
