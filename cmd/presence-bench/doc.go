// Command presence-bench measures presenced end to end, and the seed's
// algorithm (internal/seedbaseline) beside it in the same run: heartbeat
// throughput, offline latency, query latency, Redis memory per online user,
// and worker CPU and memory, against the Redis SET ceiling measured by
// redis-benchmark on the same server.
//
//	presence-bench [flags]              run the scenarios, print tables (and --json)
//	presence-bench seed-worker [flags]  (internal) one seed baseline worker process
//
// By default it starts everything itself on loopback, each in its own
// process: nats-server (built from the module with go build), redis-server
// (internal/localredis), --replicas presenced processes and as many seed
// workers (this binary in seed-worker mode). The implementations never run
// at the same time: before each scenario the workers are stopped, Redis is
// flushed and the next implementation's workers start. With --nats-url and
// --redis-url it drives a deployment whose presenced workers already run
// (see BENCHMARKS.md for what is then measured).
//
// Every scenario is bounded by a count and by --timeout. See BENCHMARKS.md.
//
// # Files
//
// The command and its run:
//
//   - main.go: flags and settings (config), run, progress output.
//   - bench.go: the bench and its driver, which runs the selected scenarios
//     in order and records the settings in the report.
//   - cluster.go: the processes under test (nats-server, redis-server,
//     presenced and seed workers) and resetting them between scenarios.
//   - measure.go: what the bench reads off the cluster: Redis INFO and
//     memory, Redis and worker CPU (the meter), command statistics.
//   - proc.go: starting, watching and stopping a child process; CPU and
//     memory from /proc.
//   - seedworker.go: the seed-worker mode, one seed baseline worker.
//
// The scenarios, one file each:
//
//   - ceiling.go: redis-benchmark on the same redis-server.
//   - throughput.go: heartbeat throughput, single-id and batched.
//   - offline.go: offline latency while users leave at a steady rate.
//   - idle.go: the idle scenario (CPU with users online and no traffic,
//     Redis memory per user), which also loads the users of the queries.
//   - query.go: query latency (status, online, listing, count).
//   - storm.go: the reconnect storm; storm_report.go its target and table.
//   - gateways.go: users through gateways with leases and named
//     connections, one gateway killed; gateways_report.go its targets and
//     table.
//
// What the scenarios share:
//
//   - scenario.go: bringing users online, letting Redis settle, Redis
//     memory per user, percentiles.
//   - load.go: user ids and heartbeat payloads, the requester (requests
//     with a window of replies outstanding) and the collector (online and
//     offline events).
//   - breakdown.go: Redis memory per user by group of presenced's keys.
//   - profile.go: CPU profiles of a presenced replica during a phase.
//
// The report:
//
//   - report.go: what is measured: the Report, one row type per
//     scenario, the machine, and finishing a run.
//   - verdict.go: the performance targets and the judgement of each.
//   - render.go: the text tables and the JSON file.
package main
