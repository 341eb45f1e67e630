package config

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

func env(kv ...string) func(string) string {
	m := make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestDefault(t *testing.T) {
	want := Config{
		NATSURL:                "nats://127.0.0.1:4222",
		RedisURL:               "redis://127.0.0.1:6379/0",
		TTL:                    60 * time.Second,
		KeyPrefix:              "presence:",
		SubjectPrefix:          "presence",
		QueueGroup:             "presenced",
		ReconcileInterval:      200 * time.Millisecond,
		MaxBatch:               10000,
		ConnectTimeout:         5 * time.Second,
		OutageThreshold:        5 * time.Second,
		OutboxClaimAfter:       15 * time.Second,
		InFlight:               8,
		IntakeMB:               256,
		Shards:                 16384,
		QueryView:              true,
		RedisClusterPartitions: 12,
		OutboxRetention:        30 * time.Second,
		GatewayLease:           15 * time.Second,
		MaxConnectionsPerUser:  64,
		LogLevel:               "info",
		LogFormat:              "json",
		HTTPAddr:               ":8080",
		Pprof:                  false,
	}
	if got := Default(); got != want {
		t.Fatalf("Default() = %+v, want %+v", got, want)
	}
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	got, err := Load(nil, env())
	if err != nil {
		t.Fatalf("Load with nothing set: %v", err)
	}
	if got != want {
		t.Fatalf("Load with nothing set = %+v, want %+v", got, want)
	}
}

func TestSettings(t *testing.T) {
	flags, envs := map[string]bool{}, map[string]bool{}
	for _, s := range Settings() {
		if s.Flag == "" || s.Env == "" || s.Usage == "" {
			t.Errorf("setting %+v has an empty Flag, Env or Usage", s)
		}
		if flags[s.Flag] || envs[s.Env] {
			t.Errorf("setting %s/%s is listed twice", s.Flag, s.Env)
		}
		flags[s.Flag], envs[s.Env] = true, true
	}
	if n, want := len(Settings()), reflect.TypeFor[Config]().NumField(); n != want {
		t.Errorf("Settings() has %d entries, want one per Config field (%d)", n, want)
	}
	s := Settings()
	s[0].Flag = "changed"
	if Settings()[0].Flag == "changed" {
		t.Error("Settings() returned the package's slice, not a copy")
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     func(string) string
		want    func(c *Config) // applied to Default() to get the expected Config
		wantErr string          // exact error message
	}{
		// NATS_URL
		{name: "nats env", env: env("NATS_URL", "nats://n1:4222"), want: func(c *Config) { c.NATSURL = "nats://n1:4222" }},
		{name: "nats env list", env: env("NATS_URL", "nats://u:p@n1:4222,nats://u:p@n2:4222"), want: func(c *Config) { c.NATSURL = "nats://u:p@n1:4222,nats://u:p@n2:4222" }},
		{name: "nats bare host", env: env("NATS_URL", "n1:4222"), want: func(c *Config) { c.NATSURL = "n1:4222" }},
		{name: "nats tls", args: []string{"--nats-url", "tls://n1:4443"}, want: func(c *Config) { c.NATSURL = "tls://n1:4443" }},
		{name: "nats flag beats env", args: []string{"--nats-url=nats://f:4222"}, env: env("NATS_URL", "nats://e:4222"), want: func(c *Config) { c.NATSURL = "nats://f:4222" }},
		{name: "nats bad scheme", env: env("NATS_URL", "http://n1:4222"), wantErr: `invalid NATS_URL "http://n1:4222": scheme "http": want nats, tls, ws or wss`},
		{name: "nats empty list entry", env: env("NATS_URL", "nats://n1,"), wantErr: `invalid NATS_URL "nats://n1,": empty entry in list`},
		{name: "nats no host", args: []string{"--nats-url=nats://"}, wantErr: `invalid --nats-url (NATS_URL) "nats://": "nats://" has no host`},
		{name: "nats bad url masks secret", env: env("NATS_URL", "nats://u:secret@h:port"), wantErr: `invalid NATS_URL "nats://u:xxxxx@h:port": not a URL`},

		// REDIS_URL
		{name: "redis env", env: env("REDIS_URL", "redis://r:6380/2"), want: func(c *Config) { c.RedisURL = "redis://r:6380/2" }},
		{name: "rediss flag", args: []string{"-redis-url", "rediss://u:p@r:6380/0"}, want: func(c *Config) { c.RedisURL = "rediss://u:p@r:6380/0" }},
		{name: "redis flag beats env", args: []string{"--redis-url=redis://f/1"}, env: env("REDIS_URL", "redis://e/2"), want: func(c *Config) { c.RedisURL = "redis://f/1" }},
		{name: "redis bad scheme", env: env("REDIS_URL", "unix:///tmp/r.sock"), wantErr: `invalid REDIS_URL "unix:///tmp/r.sock": scheme "unix": want redis or rediss`},
		{name: "redis bad db", env: env("REDIS_URL", "redis://:secret@r:6379/x"), wantErr: `invalid REDIS_URL "redis://:xxxxx@r:6379/x": redis: invalid database number: "x"`},
		{name: "redis no host", args: []string{"--redis-url=redis:///0"}, wantErr: `invalid --redis-url (REDIS_URL) "redis:///0": no host`},

		// Redis topologies
		{name: "sentinel", env: env("REDIS_SENTINEL_ADDRS", "s1:26379, s2:26379,[::1]:26379", "REDIS_SENTINEL_MASTER", "mymaster", "REDIS_SENTINEL_DB", "3"), want: func(c *Config) {
			c.RedisSentinelAddrs, c.RedisSentinelMaster, c.RedisSentinelDB = "s1:26379, s2:26379,[::1]:26379", "mymaster", 3
		}},
		{name: "sentinel flags", args: []string{"--redis-sentinel-addrs=s1:26379", "--redis-sentinel-master=m", "--redis-sentinel-tls"}, want: func(c *Config) {
			c.RedisSentinelAddrs, c.RedisSentinelMaster, c.RedisSentinelTLS = "s1:26379", "m", true
		}},
		{name: "sentinel without master", env: env("REDIS_SENTINEL_ADDRS", "s1:26379"), wantErr: `REDIS_SENTINEL_ADDRS is set without REDIS_SENTINEL_MASTER: set both or neither`},
		{name: "master without sentinels", args: []string{"--redis-sentinel-master=m"}, wantErr: `--redis-sentinel-master (REDIS_SENTINEL_MASTER) is set without REDIS_SENTINEL_ADDRS: set both or neither`},
		{name: "sentinel bad addr", env: env("REDIS_SENTINEL_ADDRS", "s1:26379,s2", "REDIS_SENTINEL_MASTER", "m"), wantErr: `invalid REDIS_SENTINEL_ADDRS "s1:26379,s2": "s2": want host:port`},
		{name: "sentinel bad port", env: env("REDIS_SENTINEL_ADDRS", "s1:0", "REDIS_SENTINEL_MASTER", "m"), wantErr: `invalid REDIS_SENTINEL_ADDRS "s1:0": "s1:0": port "0": want a number from 1 to 65535`},
		{name: "sentinel empty entry", env: env("REDIS_SENTINEL_ADDRS", "s1:26379,", "REDIS_SENTINEL_MASTER", "m"), wantErr: `invalid REDIS_SENTINEL_ADDRS "s1:26379,": empty entry in list`},
		{name: "sentinel master space", env: env("REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "my master"), wantErr: `invalid REDIS_SENTINEL_MASTER "my master": contains whitespace or control character ' '`},
		{name: "sentinel db without sentinels", env: env("REDIS_SENTINEL_DB", "2"), wantErr: `REDIS_SENTINEL_DB is set without REDIS_SENTINEL_ADDRS`},
		{name: "sentinel db negative", env: env("REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m", "REDIS_SENTINEL_DB", "-1"), wantErr: `REDIS_SENTINEL_DB must be 0 or more, got -1`},
		{name: "sentinel tls without sentinels", env: env("REDIS_SENTINEL_TLS", "true"), wantErr: `REDIS_SENTINEL_TLS is set without REDIS_SENTINEL_ADDRS`},
		{name: "url and sentinel", env: env("REDIS_URL", "redis://r:6379/0", "REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m"), wantErr: `REDIS_URL and REDIS_SENTINEL_ADDRS are mutually exclusive: set one Redis topology (one server, Sentinel or Cluster)`},
		{name: "url at its default and sentinel", args: []string{"--redis-url=redis://127.0.0.1:6379/0"}, env: env("REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m"), wantErr: `--redis-url (REDIS_URL) and REDIS_SENTINEL_ADDRS are mutually exclusive: set one Redis topology (one server, Sentinel or Cluster)`},
		{name: "all three topologies", env: env("REDIS_URL", "redis://r/0", "REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m", "REDIS_CLUSTER_ADDRS", "c1:7000"), wantErr: `REDIS_URL, REDIS_SENTINEL_ADDRS and REDIS_CLUSTER_ADDRS are mutually exclusive: set one Redis topology (one server, Sentinel or Cluster)`},
		{name: "sentinel and cluster", env: env("REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m", "REDIS_CLUSTER_ADDRS", "c1:7000"), wantErr: `REDIS_SENTINEL_ADDRS and REDIS_CLUSTER_ADDRS are mutually exclusive: set one Redis topology (one server, Sentinel or Cluster)`},
		{name: "cluster", env: env("REDIS_CLUSTER_ADDRS", "c1:7000,c2:7000", "REDIS_CLUSTER_PARTITIONS", "96", "REDIS_CLUSTER_TLS", "true"), want: func(c *Config) {
			c.RedisClusterAddrs, c.RedisClusterPartitions, c.RedisClusterTLS = "c1:7000,c2:7000", 96, true
		}},
		{name: "cluster partitions out of range", env: env("REDIS_CLUSTER_ADDRS", "c1:7000", "REDIS_CLUSTER_PARTITIONS", "0"), wantErr: `REDIS_CLUSTER_PARTITIONS must be between 1 and 1024, got 0`},
		{name: "cluster hash tag in prefix", env: env("REDIS_CLUSTER_ADDRS", "c1:7000", "PRESENCE_KEY_PREFIX", "app:{presence}:"), wantErr: `invalid PRESENCE_KEY_PREFIX "app:{presence}:" with REDIS_CLUSTER_ADDRS: must not contain { or } (presenced puts each partition's hash tag after the prefix)`},
		{name: "cluster tls without cluster", args: []string{"--redis-cluster-tls"}, wantErr: `--redis-cluster-tls (REDIS_CLUSTER_TLS) is set without REDIS_CLUSTER_ADDRS`},
		{name: "cluster bad addr", args: []string{"--redis-cluster-addrs=c1"}, wantErr: `invalid --redis-cluster-addrs (REDIS_CLUSTER_ADDRS) "c1": "c1": want host:port`},

		// PRESENCE_TTL
		{name: "ttl env", env: env("PRESENCE_TTL", "90s"), want: func(c *Config) { c.TTL = 90 * time.Second }},
		{name: "ttl minimum", env: env("PRESENCE_TTL", "100ms", "PRESENCE_RECONCILE_INTERVAL", "50ms"), want: func(c *Config) { c.TTL = 100 * time.Millisecond; c.ReconcileInterval = 50 * time.Millisecond }},
		{name: "ttl flag beats env", args: []string{"--ttl=2m"}, env: env("PRESENCE_TTL", "90s"), want: func(c *Config) { c.TTL = 2 * time.Minute }},
		{name: "ttl flag beats invalid env", args: []string{"--ttl=2m"}, env: env("PRESENCE_TTL", "abc"), want: func(c *Config) { c.TTL = 2 * time.Minute }},
		{name: "ttl env invalid", env: env("PRESENCE_TTL", "abc"), wantErr: `invalid PRESENCE_TTL "abc": time: invalid duration "abc"`},
		{name: "ttl flag invalid", args: []string{"--ttl", "abc"}, wantErr: `invalid --ttl (PRESENCE_TTL) "abc": time: invalid duration "abc"`},
		{name: "ttl too short", env: env("PRESENCE_TTL", "99ms"), wantErr: `PRESENCE_TTL must be between 100ms and 24h0m0s, got 99ms`},
		{name: "ttl too long flag", args: []string{"--ttl=25h"}, wantErr: `--ttl (PRESENCE_TTL) must be between 100ms and 24h0m0s, got 25h0m0s`},

		// PRESENCE_KEY_PREFIX
		{name: "key prefix env", env: env("PRESENCE_KEY_PREFIX", "app:presence:"), want: func(c *Config) { c.KeyPrefix = "app:presence:" }},
		{name: "key prefix flag beats env", args: []string{"--key-prefix=f:"}, env: env("PRESENCE_KEY_PREFIX", "e:"), want: func(c *Config) { c.KeyPrefix = "f:" }},
		{name: "key prefix empty flag", args: []string{"--key-prefix="}, wantErr: `--key-prefix (PRESENCE_KEY_PREFIX) must not be empty`},
		{name: "key prefix space", env: env("PRESENCE_KEY_PREFIX", "a b"), wantErr: `invalid PRESENCE_KEY_PREFIX "a b": contains whitespace or control character ' '`},
		{name: "key prefix control", env: env("PRESENCE_KEY_PREFIX", "a\x00"), wantErr: `invalid PRESENCE_KEY_PREFIX "a\x00": contains whitespace or control character '\x00'`},

		// PRESENCE_SUBJECT_PREFIX
		{name: "subject prefix env", env: env("PRESENCE_SUBJECT_PREFIX", "acme.presence"), want: func(c *Config) { c.SubjectPrefix = "acme.presence" }},
		{name: "subject prefix flag beats env", args: []string{"--subject-prefix=f"}, env: env("PRESENCE_SUBJECT_PREFIX", "e"), want: func(c *Config) { c.SubjectPrefix = "f" }},
		{name: "subject prefix wildcard", env: env("PRESENCE_SUBJECT_PREFIX", "a.*"), wantErr: `invalid PRESENCE_SUBJECT_PREFIX "a.*": contains a wildcard (* or >)`},
		{name: "subject prefix full wildcard", env: env("PRESENCE_SUBJECT_PREFIX", "a.>"), wantErr: `invalid PRESENCE_SUBJECT_PREFIX "a.>": contains a wildcard (* or >)`},
		{name: "subject prefix leading dot", env: env("PRESENCE_SUBJECT_PREFIX", ".a"), wantErr: `invalid PRESENCE_SUBJECT_PREFIX ".a": empty token (leading, trailing or double dot)`},
		{name: "subject prefix trailing dot", env: env("PRESENCE_SUBJECT_PREFIX", "a."), wantErr: `invalid PRESENCE_SUBJECT_PREFIX "a.": empty token (leading, trailing or double dot)`},
		{name: "subject prefix double dot", args: []string{"--subject-prefix=a..b"}, wantErr: `invalid --subject-prefix (PRESENCE_SUBJECT_PREFIX) "a..b": empty token (leading, trailing or double dot)`},
		{name: "subject prefix space", env: env("PRESENCE_SUBJECT_PREFIX", "a b"), wantErr: `invalid PRESENCE_SUBJECT_PREFIX "a b": contains whitespace or control character ' '`},
		{name: "subject prefix empty flag", args: []string{"--subject-prefix="}, wantErr: `invalid --subject-prefix (PRESENCE_SUBJECT_PREFIX) "": empty`},

		// PRESENCE_QUEUE_GROUP
		{name: "queue group env", env: env("PRESENCE_QUEUE_GROUP", "pd-eu"), want: func(c *Config) { c.QueueGroup = "pd-eu" }},
		{name: "queue group flag beats env", args: []string{"--queue-group=f"}, env: env("PRESENCE_QUEUE_GROUP", "e"), want: func(c *Config) { c.QueueGroup = "f" }},
		{name: "queue group empty flag", args: []string{"--queue-group="}, wantErr: `--queue-group (PRESENCE_QUEUE_GROUP) must not be empty`},
		{name: "queue group tab", env: env("PRESENCE_QUEUE_GROUP", "a\tb"), wantErr: `invalid PRESENCE_QUEUE_GROUP "a\tb": contains whitespace or control character '\t'`},

		// PRESENCE_RECONCILE_INTERVAL
		{name: "reconcile env", env: env("PRESENCE_RECONCILE_INTERVAL", "1s"), want: func(c *Config) { c.ReconcileInterval = time.Second }},
		{name: "reconcile equal to ttl", env: env("PRESENCE_TTL", "10s", "PRESENCE_RECONCILE_INTERVAL", "10s", "PRESENCE_OUTAGE_THRESHOLD", "11s"), want: func(c *Config) {
			c.TTL, c.ReconcileInterval, c.OutageThreshold = 10*time.Second, 10*time.Second, 11*time.Second
		}},
		{name: "reconcile flag beats env", args: []string{"--reconcile-interval=300ms"}, env: env("PRESENCE_RECONCILE_INTERVAL", "1s"), want: func(c *Config) { c.ReconcileInterval = 300 * time.Millisecond }},
		{name: "reconcile zero", env: env("PRESENCE_RECONCILE_INTERVAL", "0s"), wantErr: `PRESENCE_RECONCILE_INTERVAL must be greater than 0 and at most PRESENCE_TTL (1m0s), got 0s`},
		{name: "reconcile above ttl", args: []string{"--reconcile-interval=2s"}, env: env("PRESENCE_TTL", "1s"), wantErr: `--reconcile-interval (PRESENCE_RECONCILE_INTERVAL) must be greater than 0 and at most PRESENCE_TTL (1s), got 2s`},
		{name: "reconcile env invalid", env: env("PRESENCE_RECONCILE_INTERVAL", "5"), wantErr: `invalid PRESENCE_RECONCILE_INTERVAL "5": time: missing unit in duration "5"`},

		// PRESENCE_MAX_BATCH
		{name: "max batch env", env: env("PRESENCE_MAX_BATCH", "500"), want: func(c *Config) { c.MaxBatch = 500 }},
		{name: "max batch bounds", args: []string{"--max-batch=1000000"}, want: func(c *Config) { c.MaxBatch = 1_000_000 }},
		{name: "max batch flag beats env", args: []string{"--max-batch=1"}, env: env("PRESENCE_MAX_BATCH", "500"), want: func(c *Config) { c.MaxBatch = 1 }},
		{name: "max batch zero", env: env("PRESENCE_MAX_BATCH", "0"), wantErr: `PRESENCE_MAX_BATCH must be between 1 and 1000000, got 0`},
		{name: "max batch too big flag", args: []string{"--max-batch=1000001"}, wantErr: `--max-batch (PRESENCE_MAX_BATCH) must be between 1 and 1000000, got 1000001`},
		{name: "max batch not a number", env: env("PRESENCE_MAX_BATCH", "ten"), wantErr: `invalid PRESENCE_MAX_BATCH "ten": invalid syntax`},

		// PRESENCE_CONNECT_TIMEOUT
		{name: "connect timeout env", env: env("PRESENCE_CONNECT_TIMEOUT", "1s"), want: func(c *Config) { c.ConnectTimeout = time.Second }},
		{name: "connect timeout flag beats env", args: []string{"--connect-timeout=2s"}, env: env("PRESENCE_CONNECT_TIMEOUT", "1s"), want: func(c *Config) { c.ConnectTimeout = 2 * time.Second }},
		{name: "connect timeout negative", env: env("PRESENCE_CONNECT_TIMEOUT", "-1s"), wantErr: `PRESENCE_CONNECT_TIMEOUT must be greater than 0, got -1s`},

		// PRESENCE_OUTAGE_THRESHOLD
		{name: "outage env", env: env("PRESENCE_OUTAGE_THRESHOLD", "30s"), want: func(c *Config) { c.OutageThreshold = 30 * time.Second }},
		{name: "outage flag beats env", args: []string{"--outage-threshold=1s"}, env: env("PRESENCE_OUTAGE_THRESHOLD", "30s"), want: func(c *Config) { c.OutageThreshold = time.Second }},
		{name: "outage not above reconcile", env: env("PRESENCE_OUTAGE_THRESHOLD", "200ms"), wantErr: `PRESENCE_OUTAGE_THRESHOLD must be greater than PRESENCE_RECONCILE_INTERVAL (200ms), got 200ms`},

		// PRESENCE_OUTBOX_CLAIM_AFTER
		{name: "claim after env", env: env("PRESENCE_OUTBOX_CLAIM_AFTER", "1m"), want: func(c *Config) { c.OutboxClaimAfter = time.Minute }},
		{name: "claim after flag beats env", args: []string{"--outbox-claim-after=3s"}, env: env("PRESENCE_OUTBOX_CLAIM_AFTER", "1m"), want: func(c *Config) { c.OutboxClaimAfter = 3 * time.Second }},
		{name: "claim after zero flag", args: []string{"--outbox-claim-after=0s"}, wantErr: `--outbox-claim-after (PRESENCE_OUTBOX_CLAIM_AFTER) must be greater than 0, got 0s`},
		// PRESENCE_STREAM
		{name: "stream env", env: env("PRESENCE_STREAM", "PRESENCE_EVENTS"), want: func(c *Config) { c.Stream = "PRESENCE_EVENTS" }},
		{name: "stream flag", args: []string{"--stream", "ev-1"}, want: func(c *Config) { c.Stream = "ev-1" }},
		{name: "stream with dot", env: env("PRESENCE_STREAM", "presence.events"), wantErr: `invalid PRESENCE_STREAM "presence.events": a stream name has no '.', '*', '>', '/' or '\'`},
		{name: "stream wildcard flag", args: []string{"--stream=EV>"}, wantErr: `invalid --stream (PRESENCE_STREAM) "EV>": a stream name has no '.', '*', '>', '/' or '\'`},
		{name: "stream space", env: env("PRESENCE_STREAM", "a b"), wantErr: `invalid PRESENCE_STREAM "a b": contains whitespace or control character ' '`},

		// PRESENCE_INFLIGHT
		{name: "inflight env", env: env("PRESENCE_INFLIGHT", "64"), want: func(c *Config) { c.InFlight = 64 }},
		{name: "inflight flag beats env", args: []string{"--inflight=1"}, env: env("PRESENCE_INFLIGHT", "64"), want: func(c *Config) { c.InFlight = 1 }},
		{name: "inflight too many", env: env("PRESENCE_INFLIGHT", "65"), wantErr: `PRESENCE_INFLIGHT must be between 1 and 64, got 65`},
		// PRESENCE_SHARDS
		{name: "shards env", env: env("PRESENCE_SHARDS", "256"), want: func(c *Config) { c.Shards = 256 }},
		{name: "shards flag beats env", args: []string{"--shards=1"}, env: env("PRESENCE_SHARDS", "256"), want: func(c *Config) { c.Shards = 1 }},
		{name: "shards zero", env: env("PRESENCE_SHARDS", "0"), wantErr: `PRESENCE_SHARDS must be between 1 and 4194304, got 0`},
		{name: "query view off", env: env("PRESENCE_QUERY_VIEW", "false", "PRESENCE_OUTBOX_RETENTION", "0"), want: func(c *Config) { c.QueryView, c.OutboxRetention = false, 0 }},
		{name: "query view flag", args: []string{"--query-view=false"}, want: func(c *Config) { c.QueryView = false }},
		{name: "query view bad", env: env("PRESENCE_QUERY_VIEW", "maybe"), wantErr: `invalid PRESENCE_QUERY_VIEW "maybe": invalid syntax`},
		{name: "retention too short for the view", env: env("PRESENCE_OUTBOX_RETENTION", "500ms"), wantErr: `PRESENCE_OUTBOX_RETENTION must be at least 1s when PRESENCE_QUERY_VIEW is on, got 500ms`},
		{name: "grace and lease", env: env("PRESENCE_OFFLINE_GRACE", "5s", "PRESENCE_GATEWAY_LEASE", "30s", "PRESENCE_MAX_CONNECTIONS_PER_USER", "8"), want: func(c *Config) {
			c.OfflineGrace, c.GatewayLease, c.MaxConnectionsPerUser = 5*time.Second, 30*time.Second, 8
		}},
		{name: "grace negative", args: []string{"--offline-grace=-1s"}, wantErr: `--offline-grace (PRESENCE_OFFLINE_GRACE) must be between 0 and 10m, got -1s`},
		{name: "lease too short", env: env("PRESENCE_GATEWAY_LEASE", "500ms"), wantErr: `PRESENCE_GATEWAY_LEASE must be between 1s and 10m, got 500ms`},
		{name: "no connections", env: env("PRESENCE_MAX_CONNECTIONS_PER_USER", "0"), wantErr: `PRESENCE_MAX_CONNECTIONS_PER_USER must be between 1 and 10000, got 0`},
		{name: "retention negative", args: []string{"--outbox-retention=-1s"}, wantErr: `--outbox-retention (PRESENCE_OUTBOX_RETENTION) must be between 0 and 1h, got -1s`},
		{name: "inflight flag not a number", args: []string{"--inflight=x"}, wantErr: `invalid --inflight (PRESENCE_INFLIGHT) "x": invalid syntax`},

		// LOG_LEVEL
		{name: "log level env", env: env("LOG_LEVEL", "debug"), want: func(c *Config) { c.LogLevel = "debug" }},
		{name: "log level flag beats env", args: []string{"--log-level=error"}, env: env("LOG_LEVEL", "debug"), want: func(c *Config) { c.LogLevel = "error" }},
		{name: "log level invalid", env: env("LOG_LEVEL", "verbose"), wantErr: `invalid LOG_LEVEL "verbose": want debug, info, warn or error`},

		// LOG_FORMAT
		{name: "log format env", env: env("LOG_FORMAT", "text"), want: func(c *Config) { c.LogFormat = "text" }},
		{name: "log format flag beats env", args: []string{"--log-format=json"}, env: env("LOG_FORMAT", "text"), want: func(c *Config) { c.LogFormat = "json" }},
		{name: "log format invalid flag", args: []string{"--log-format=xml"}, wantErr: `invalid --log-format (LOG_FORMAT) "xml": want json or text`},

		// HTTP_ADDR
		{name: "http addr env", env: env("HTTP_ADDR", "127.0.0.1:9090"), want: func(c *Config) { c.HTTPAddr = "127.0.0.1:9090" }},
		{name: "http addr empty flag disables", args: []string{"--http-addr="}, env: env("HTTP_ADDR", ":9090"), want: func(c *Config) { c.HTTPAddr = "" }},
		{name: "http addr off env disables", env: env("HTTP_ADDR", "off"), want: func(c *Config) { c.HTTPAddr = "" }},
		{name: "http addr off flag disables", args: []string{"--http-addr=off"}, want: func(c *Config) { c.HTTPAddr = "" }},
		{name: "http addr no port", env: env("HTTP_ADDR", "localhost"), wantErr: `invalid HTTP_ADDR "localhost": address localhost: missing port in address`},
		{name: "http addr bad port", env: env("HTTP_ADDR", ":http"), wantErr: `invalid HTTP_ADDR ":http": port "http": want a number from 0 to 65535`},

		// STATUS_ADDR
		{name: "status addr off by default", want: func(c *Config) { c.StatusAddr = "" }},
		{name: "status addr env", env: env("STATUS_ADDR", "127.0.0.1:8081"), want: func(c *Config) { c.StatusAddr = "127.0.0.1:8081" }},
		{name: "status addr flag beats env", args: []string{"--status-addr=off"}, env: env("STATUS_ADDR", "127.0.0.1:8081"), want: func(c *Config) { c.StatusAddr = "" }},
		{name: "status addr no port", env: env("STATUS_ADDR", "localhost"), wantErr: `invalid STATUS_ADDR "localhost": address localhost: missing port in address`},
		{name: "status addr same as http addr", env: env("STATUS_ADDR", ":8080"), wantErr: `STATUS_ADDR and HTTP_ADDR are both ":8080": the status page must not share the health and metrics address`},
		{name: "status addr and http addr both any port", env: env("STATUS_ADDR", "127.0.0.1:0", "HTTP_ADDR", "127.0.0.1:0"), want: func(c *Config) { c.StatusAddr, c.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0" }},

		// PPROF_ENABLED
		{name: "pprof without status addr", env: env("PPROF_ENABLED", "true"), wantErr: `PPROF_ENABLED needs STATUS_ADDR: pprof is served only on the status address`},
		{name: "pprof env", env: env("PPROF_ENABLED", "true", "STATUS_ADDR", "127.0.0.1:8081"), want: func(c *Config) { c.Pprof, c.StatusAddr = true, "127.0.0.1:8081" }},
		{name: "pprof bare flag", args: []string{"--pprof", "--status-addr=127.0.0.1:0"}, want: func(c *Config) { c.Pprof, c.StatusAddr = true, "127.0.0.1:0" }},
		{name: "pprof flag beats env", args: []string{"--pprof=false"}, env: env("PPROF_ENABLED", "1"), want: func(c *Config) { c.Pprof = false }},
		{name: "pprof env invalid", env: env("PPROF_ENABLED", "yes"), wantErr: `invalid PPROF_ENABLED "yes": invalid syntax`},

		// Flags in general.
		{name: "unknown flag", args: []string{"--nope"}, wantErr: `parse flags: flag provided but not defined: -nope`},
		{name: "flag without value", args: []string{"--ttl"}, wantErr: `parse flags: flag needs an argument: -ttl`},
		{name: "positional argument", args: []string{"demo"}, wantErr: `unexpected argument "demo"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := tt.env
			if getenv == nil {
				getenv = env()
			}
			got, err := Load(tt.args, getenv)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Load() = %+v, want error %q", got, tt.wantErr)
				}
				if err.Error() != tt.wantErr {
					t.Fatalf("Load() error = %q\n                want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load() error = %v", err)
			}
			want := Default()
			tt.want(&want)
			if got != want {
				t.Fatalf("Load() = %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestLoadHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		t.Run(arg, func(t *testing.T) {
			_, err := Load([]string{"--ttl=5s", arg}, env())
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("Load(%q) error = %v, want flag.ErrHelp", arg, err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(c *Config)
		wantErr string
	}{
		{name: "default", mod: func(*Config) {}},
		{name: "zero value", mod: func(c *Config) { *c = Config{} }, wantErr: `invalid NATS_URL "": empty`},
		{name: "first problem wins", mod: func(c *Config) { c.MaxBatch = 0; c.InFlight = 0 }, wantErr: `PRESENCE_MAX_BATCH must be between 1 and 1000000, got 0`},
		{name: "inflight zero", mod: func(c *Config) { c.InFlight = 0 }, wantErr: `PRESENCE_INFLIGHT must be between 1 and 64, got 0`},
		{name: "ttl zero", mod: func(c *Config) { c.TTL = 0 }, wantErr: `PRESENCE_TTL must be between 100ms and 24h0m0s, got 0s`},
		{name: "redis url", mod: func(c *Config) { c.RedisURL = "http://h" }, wantErr: `invalid REDIS_URL "http://h": scheme "http": want redis or rediss`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Fatalf("Validate() = %v, want %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Fatalf("Validate() error spans lines: %q", err)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
		{"redis://:secret@h:6379/0", "redis://:xxxxx@h:6379/0"},
		{"redis://user:secret@h", "redis://user:xxxxx@h"},
		{"rediss://default:secret@redis.example.com:6380/3", "rediss://default:xxxxx@redis.example.com:6380/3"},
		{"rediss://u:sec/ret@h:6380/0", "rediss://u:xxxxx@h:6380/0"},
		{"redis://u:p@ss@h/0", "redis://u:xxxxx@h/0"},
		{"redis://h:6379/0?password=secret&dial_timeout=3s", "redis://h:6379/0?password=xxxxx&dial_timeout=3s"},
		{"redis://h/0?dial_timeout=3s&Sentinel_Password=secret", "redis://h/0?dial_timeout=3s&Sentinel_Password=xxxxx"},
		{"nats://tok@h", "nats://xxxxx@h"},
		{"nats://secrettoken@h:4222", "nats://xxxxx@h:4222"},
		{"nats://u:p@h1,nats://u:p@h2", "nats://u:xxxxx@h1,nats://u:xxxxx@h2"},
		{"nats://h1:4222, nats://u:secret@h2:4222", "nats://h1:4222, nats://u:xxxxx@h2:4222"},
		{"u:secret@h:4222", "u:xxxxx@h:4222"},
		{"nats://h:4222?token=secret", "nats://h:4222?token=xxxxx"},
		{"nats://h:4222?auth_token=secret#frag", "nats://h:4222?auth_token=xxxxx#frag"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := RedactURL(tt.in); got != tt.want {
				t.Fatalf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestLogValueMasksSecrets(t *testing.T) {
	c := Default()
	c.NATSURL = "nats://user:secret@n1:4222,nats://secret@n2:4222"
	c.RedisURL = "rediss://default:secret@r:6380/1?dial_timeout=3s"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var buf bytes.Buffer
		slog.New(h(&buf)).Info("starting", "config", c)
		out := buf.String()
		if strings.Contains(out, "secret") {
			t.Fatalf("log output contains the secret: %s", out)
		}
		for _, want := range []string{"user:xxxxx@n1:4222", "default:xxxxx@r:6380", "ttl", "key-prefix", "presence:"} {
			if !strings.Contains(out, want) {
				t.Errorf("log output lacks %q: %s", want, out)
			}
		}
	}
}

func TestUsage(t *testing.T) {
	var buf bytes.Buffer
	Usage(&buf)
	out := buf.String()
	for _, s := range Settings() {
		for _, want := range []string{"--" + s.Flag, s.Env, s.Default, s.Usage} {
			if !strings.Contains(out, want) {
				t.Errorf("Usage lacks %q", want)
			}
		}
	}
}

func TestRedisDB(t *testing.T) {
	tests := []struct {
		url  string
		want int
	}{
		{"redis://127.0.0.1:6379/0", 0},
		{"redis://127.0.0.1:6379", 0},
		{"redis://:p@127.0.0.1:6379/7", 7},
		{"rediss://h/15", 15},
		{"not a url", 0},
	}
	for _, tt := range tests {
		c := Default()
		c.RedisURL = tt.url
		if got := c.RedisDB(); got != tt.want {
			t.Errorf("RedisDB() for %q = %d, want %d", tt.url, got, tt.want)
		}
	}
	c := Default()
	c.RedisSentinelAddrs, c.RedisSentinelMaster, c.RedisSentinelDB = "s1:26379", "m", 4
	if got := c.RedisDB(); got != 4 {
		t.Errorf("RedisDB() with Sentinel = %d, want REDIS_SENTINEL_DB (4)", got)
	}
	if got, want := c.RedisTarget(), `master "m" via sentinels s1:26379`; got != want {
		t.Errorf("RedisTarget() = %q, want %q", got, want)
	}
}

func TestLevel(t *testing.T) {
	tests := []struct {
		in   string
		want slog.Level
	}{
		{"debug", slog.LevelDebug}, {"info", slog.LevelInfo}, {"warn", slog.LevelWarn}, {"error", slog.LevelError}, {"", slog.LevelInfo},
	}
	for _, tt := range tests {
		if got := (Config{LogLevel: tt.in}).Level(); got != tt.want {
			t.Errorf("Level() for %q = %v, want %v", tt.in, got, tt.want)
		}
	}
}
