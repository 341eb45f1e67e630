// Package config holds the settings of presenced: one struct filled from
// environment variables (12-factor) and command-line flags of the same
// meaning, validated once at start.
//
// Precedence is flag, then environment variable, then default. Settings is the
// single table that Load, Default and Usage all read, so the flags, the
// variables, the defaults and the help text cannot drift apart.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limits enforced by Validate.
const (
	// MinTTL is the shortest PRESENCE_TTL accepted; short TTLs exist for tests.
	MinTTL = 100 * time.Millisecond
	// MaxTTL is the longest PRESENCE_TTL accepted.
	MaxTTL = 24 * time.Hour
	// MaxMaxBatch is the largest PRESENCE_MAX_BATCH accepted.
	MaxMaxBatch = 1_000_000
	// MaxInFlight is the largest PRESENCE_INFLIGHT accepted.
	MaxInFlight = 64
	// MaxIntakeMB is the largest PRESENCE_INTAKE_MB accepted.
	MaxIntakeMB = 1 << 16
	// MaxShards is the largest PRESENCE_SHARDS accepted.
	MaxShards = 1 << 22
)

// Config is the effective configuration of one presenced process. The zero
// value is not valid: start from Default or Load.
type Config struct {
	// NATSURL is the NATS server URL, or a comma-separated list of them
	// (NATS_URL, --nats-url). Default "nats://127.0.0.1:4222".
	NATSURL string
	// NATSUser and NATSPassword authenticate to NATS with a user and a
	// password (NATS_USER, --nats-user; NATS_PASSWORD, --nats-password).
	// Default empty; set both or neither. NATSPassword is a secret.
	NATSUser     string
	NATSPassword string
	// NATSToken authenticates to NATS with a token (NATS_TOKEN,
	// --nats-token). Default empty. A secret.
	NATSToken string
	// NATSNkeySeedFile is a file holding an nkey user seed ("SU...") to
	// authenticate to NATS with (NATS_NKEY_SEED_FILE, --nats-nkey-seed-file).
	// Default empty; must be readable.
	NATSNkeySeedFile string
	// NATSCredsFile is a NATS credentials file (user JWT and nkey seed,
	// as written by nsc) (NATS_CREDS_FILE, --nats-creds-file). Default
	// empty; must be readable. It is read again on every reconnect.
	//
	// At most one NATS authentication method is set: NATSUser with
	// NATSPassword, NATSToken, NATSNkeySeedFile, NATSCredsFile, or
	// credentials in NATSURL.
	NATSCredsFile string
	// NATSTLSCAFile is a PEM file of the CAs that sign the NATS server's
	// certificate, instead of the system roots (NATS_TLS_CA_FILE,
	// --nats-tls-ca-file). Default empty. Setting any NATS_TLS_* file makes
	// the connection use TLS whatever the URL's scheme.
	NATSTLSCAFile string
	// NATSTLSCertFile and NATSTLSKeyFile are the PEM client certificate and
	// its key, for servers that verify clients (NATS_TLS_CERT_FILE,
	// --nats-tls-cert-file; NATS_TLS_KEY_FILE, --nats-tls-key-file).
	// Default empty; set both or neither.
	NATSTLSCertFile string
	NATSTLSKeyFile  string
	// RedisURL is the Redis URL, redis:// or rediss:// (REDIS_URL,
	// --redis-url). Default "redis://127.0.0.1:6379/0". It may carry
	// user:password; the skip_verify parameter is refused.
	//
	// REDIS_URL is the single-server topology. Exactly one topology is
	// used: REDIS_URL, Sentinel (RedisSentinelAddrs) or Redis Cluster
	// (RedisClusterAddrs); setting REDIS_URL beside another is an error.
	RedisURL string
	// RedisSentinelAddrs is a comma-separated list of Redis Sentinel
	// addresses, host:port (REDIS_SENTINEL_ADDRS, --redis-sentinel-addrs).
	// Default empty. With it, presenced asks the sentinels for the master
	// named RedisSentinelMaster and follows it across failovers.
	RedisSentinelAddrs string
	// RedisSentinelMaster is the name the sentinels monitor the master
	// under (REDIS_SENTINEL_MASTER, --redis-sentinel-master). Default
	// empty; set with RedisSentinelAddrs.
	RedisSentinelMaster string
	// RedisSentinelPassword authenticates to the sentinels (their
	// requirepass) (REDIS_SENTINEL_PASSWORD, --redis-sentinel-password).
	// Default empty. The Redis servers take RedisUsername and
	// RedisPassword. A secret.
	RedisSentinelPassword string
	// RedisSentinelDB is the database number on the master the sentinels
	// name (REDIS_SENTINEL_DB, --redis-sentinel-db). Default 0.
	RedisSentinelDB int
	// RedisSentinelTLS turns on TLS to the sentinels and to the servers
	// they name, as rediss:// does for REDIS_URL (REDIS_SENTINEL_TLS,
	// --redis-sentinel-tls); the REDIS_TLS_* files apply to both. Default
	// false. Each server's certificate must name the address the sentinels
	// announce for it.
	RedisSentinelTLS bool
	// RedisClusterAddrs is a comma-separated list of Redis Cluster seed
	// nodes, host:port (REDIS_CLUSTER_ADDRS, --redis-cluster-addrs).
	// Default empty. With it, the presence data is split into
	// RedisClusterPartitions partitions spread over the cluster's masters
	// (see presence.Cluster).
	RedisClusterAddrs string
	// RedisClusterPartitions is the number of partitions of the presence
	// data on a Redis Cluster (REDIS_CLUSTER_PARTITIONS,
	// --redis-cluster-partitions). Default 12. Every replica must use the
	// same count for the life of the data: start-up refuses another.
	RedisClusterPartitions int
	// RedisClusterTLS turns on TLS to the cluster's nodes
	// (REDIS_CLUSTER_TLS, --redis-cluster-tls); the REDIS_TLS_* files
	// apply. Default false. Each node's certificate must name the address
	// the cluster announces for it.
	RedisClusterTLS bool
	// RedisUsername is the Redis ACL user; it replaces the user in RedisURL
	// (REDIS_USERNAME, --redis-username). Default empty: the URL's, else
	// "default". A password must be set too, here or in the URL.
	RedisUsername string
	// RedisPassword is the Redis password; it replaces the password in
	// RedisURL (REDIS_PASSWORD, --redis-password). Default empty: the
	// URL's. A secret.
	RedisPassword string
	// RedisTLSCAFile is a PEM file of the CAs that sign the Redis server's
	// certificate, instead of the system roots (REDIS_TLS_CA_FILE,
	// --redis-tls-ca-file). Default empty. The REDIS_TLS_* files need a
	// rediss:// RedisURL.
	RedisTLSCAFile string
	// RedisTLSCertFile and RedisTLSKeyFile are the PEM client certificate
	// and its key, for servers with tls-auth-clients (REDIS_TLS_CERT_FILE,
	// --redis-tls-cert-file; REDIS_TLS_KEY_FILE, --redis-tls-key-file).
	// Default empty; set both or neither.
	RedisTLSCertFile string
	RedisTLSKeyFile  string
	// TTL is how long a user stays online after the last heartbeat
	// (PRESENCE_TTL, --ttl). Default 60s; between 100ms and 24h.
	TTL time.Duration
	// KeyPrefix prefixes every Redis key; a user's key is
	// KeyPrefix+"user:"+id (PRESENCE_KEY_PREFIX, --key-prefix). Default
	// "presence:"; non-empty, without whitespace or control characters.
	KeyPrefix string
	// SubjectPrefix prefixes every NATS subject (PRESENCE_SUBJECT_PREFIX,
	// --subject-prefix). Default "presence"; dot-separated tokens without
	// wildcards, whitespace or empty tokens.
	SubjectPrefix string
	// QueueGroup is the NATS queue group the replicas share
	// (PRESENCE_QUEUE_GROUP, --queue-group). Default "presenced"; non-empty,
	// without whitespace.
	QueueGroup string
	// ReconcileInterval is how often a replica sweeps the deadline index
	// (PRESENCE_RECONCILE_INTERVAL, --reconcile-interval). Default 200ms;
	// greater than zero and at most TTL.
	ReconcileInterval time.Duration
	// MaxBatch is the largest number of user ids accepted in one message
	// (PRESENCE_MAX_BATCH, --max-batch). Default 10000; 1 to 1000000.
	MaxBatch int
	// ConnectTimeout bounds the first connection to NATS and Redis
	// (PRESENCE_CONNECT_TIMEOUT, --connect-timeout). Default 5s; greater
	// than zero.
	ConnectTimeout time.Duration
	// OutageThreshold: if no replica swept for longer than this, users whose
	// deadline fell in the gap get one TTL of grace
	// (PRESENCE_OUTAGE_THRESHOLD, --outage-threshold). Default 5s; greater
	// than ReconcileInterval.
	OutageThreshold time.Duration
	// OutboxClaimAfter: outbox entries pending this long on a dead replica
	// are reclaimed by another (PRESENCE_OUTBOX_CLAIM_AFTER,
	// --outbox-claim-after). Default 15s; greater than zero.
	OutboxClaimAfter time.Duration
	// Stream is the name of a JetStream stream the events are published
	// to, each acknowledged by the stream (a PubAck) before its outbox
	// entry is (PRESENCE_STREAM, --stream). Default empty: core NATS
	// publish and flush. presenced creates the stream on the event subjects
	// (<prefix>.online, .offline, .reset) with a duplicate window of twice
	// OutboxClaimAfter, or verifies an existing one: it must capture the
	// three event subjects and none of the heartbeat, disconnect or query
	// subjects, with a duplicate window of at least twice OutboxClaimAfter.
	// A JetStream stream name: no whitespace, '.', '*', '>', '/' or '\\'.
	Stream string
	// InFlight is the number of Redis batches in flight per replica
	// (PRESENCE_INFLIGHT, --inflight). Default 8; 1 to 64.
	InFlight int
	// IntakeMB bounds, in MiB, the heartbeat and disconnect messages a
	// replica has received and not yet decoded (payload, subject, reply and
	// 256 bytes per message) (PRESENCE_INTAKE_MB, --intake-mb). Beyond it
	// messages are dropped, counted and answered "overloaded". Default 256
	// (about a million single-id heartbeats); 1 to 65536.
	IntakeMB int
	// Shards is the number of sessions shards in Redis, fixed when the data
	// set is created (the first write to an empty Redis; later the value
	// recorded in Redis wins) (PRESENCE_SHARDS, --shards). About the peak
	// of users online divided by 64 keeps memory per user lowest. Default
	// 16384 (up to about 1M online); 1 to 4194304.
	Shards int
	// QueryView makes the query service answer online queries from an
	// in-memory view of the open sessions, kept by following the outbox
	// (PRESENCE_QUERY_VIEW, --query-view); off asks Redis (MGET) every time.
	// Default true. The view costs each replica about 32 bytes per user
	// online (a table of 16-byte slots at most 3/4 full).
	QueryView bool
	// OutboxRetention keeps published outbox entries this long so that the
	// query views can follow them; a view further behind reads the sessions
	// again (PRESENCE_OUTBOX_RETENTION, --outbox-retention). Default 30s;
	// 0 to 1h, and at least 1s with QueryView.
	OutboxRetention time.Duration
	// OfflineGrace holds the offline of a user whose last connection ended
	// by a disconnect or a lost gateway this long; a connection within it
	// continues the session with no events (PRESENCE_OFFLINE_GRACE,
	// --offline-grace). Default 0s (none); 0 to 10m.
	OfflineGrace time.Duration
	// GatewayLease is how long a gateway's lease lasts after its last lease
	// heartbeat; when it lapses, the gateway's connections end
	// (PRESENCE_GATEWAY_LEASE, --gateway-lease). Default 15s; 1s to 10m.
	GatewayLease time.Duration
	// MaxConnectionsPerUser is the most live connections one user may have;
	// a new one beyond it is rejected (PRESENCE_MAX_CONNECTIONS_PER_USER,
	// --max-connections-per-user). Default 64; 1 to 10000.
	MaxConnectionsPerUser int
	// LogLevel is debug, info, warn or error (LOG_LEVEL, --log-level).
	// Default "info".
	LogLevel string
	// LogFormat is json or text (LOG_FORMAT, --log-format). Default "json".
	LogFormat string
	// HTTPAddr is the listen address of the health and metrics endpoint
	// (HTTP_ADDR, --http-addr): /healthz, /readyz and /metrics, nothing
	// else. Default ":8080"; empty disables it (write "off" in the variable
	// or the flag, which Load turns into "").
	HTTPAddr string
	// StatusAddr is the listen address of the status page (/, /events: user
	// ids, without authentication) and, with Pprof, of /debug/pprof
	// (STATUS_ADDR, --status-addr). Default "off" (empty, as for HTTPAddr):
	// served only where the operator asks, such as 127.0.0.1:8081.
	StatusAddr string
	// Pprof mounts net/http/pprof on the status address, except
	// /debug/pprof/cmdline, which would show secrets given as flags
	// (PPROF_ENABLED, --pprof). Default false; needs StatusAddr.
	Pprof bool
}

// Default returns the configuration with every setting at its default.
func Default() Config {
	var c Config
	for _, s := range settings {
		if err := s.field.set(&c, s.Default); err != nil {
			panic(fmt.Sprintf("config: default of %s: %v", s.Env, err)) // a bug in the table, caught by the tests
		}
	}
	return c
}

// Load builds the configuration from command-line flags (args, without the
// program name) and environment variables (read through getenv, usually
// os.Getenv), then validates it.
//
// A flag beats its variable, which beats the default; a variable overridden
// by its flag is not read, so an invalid value there is not an error. Empty
// variables count as unset. Errors name the variable, and the flag when the
// value came from one. Flags may be written -name or --name. Load prints
// nothing: for -h or --help it returns flag.ErrHelp and the caller prints
// Usage. Positional arguments are an error, so a caller with subcommands
// passes only the arguments after the subcommand.
func Load(args []string, getenv func(string) string) (Config, error) {
	fs := flag.NewFlagSet("presenced", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	values := make(map[string]*flagValue, len(settings))
	for _, s := range settings {
		v := &flagValue{isBool: s.isBool}
		values[s.Flag] = v
		fs.Var(v, s.Flag, s.Usage)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Config{}, flag.ErrHelp
		}
		return Config{}, fmt.Errorf("parse flags: %w", err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	c := Default()
	fromFlag := make(map[string]string, len(settings)) // env name -> flag name
	for _, s := range settings {
		if v := values[s.Flag]; v.set {
			if err := s.field.set(&c, v.value); err != nil {
				shown := v.value
				if s.secret {
					shown = mask
				}
				return Config{}, fmt.Errorf("invalid --%s (%s) %q: %w", s.Flag, s.Env, shown, err)
			}
			fromFlag[s.Env] = s.Flag
			continue
		}
		if v := getenv(s.Env); v != "" {
			if err := s.field.set(&c, v); err != nil {
				shown := v
				switch {
				case s.secret:
					shown = mask
				case s.Env == "NATS_URL" || s.Env == "REDIS_URL":
					shown = RedactURL(v)
				}
				return Config{}, fmt.Errorf("invalid %s %q: %w", s.Env, shown, err)
			}
		}
	}
	name := func(env string) string {
		if f, ok := fromFlag[env]; ok {
			return "--" + f + " (" + env + ")"
		}
		return env
	}
	// Validate sees only values: REDIS_URL given at its default beside
	// another topology is caught here.
	if _, ok := fromFlag["REDIS_URL"]; ok || getenv("REDIS_URL") != "" {
		if err := checkTopology(c, name, true); err != nil {
			return Config{}, err
		}
	}
	if err := c.validate(name); err != nil {
		return Config{}, err
	}
	return c, nil
}

// flagValue records a flag's raw value; Load parses it after flag parsing so
// that the error can name both the flag and the variable.
type flagValue struct {
	value  string
	set    bool
	isBool bool
}

func (v *flagValue) String() string   { return v.value }
func (v *flagValue) IsBoolFlag() bool { return v.isBool }
func (v *flagValue) Set(s string) error {
	v.value, v.set = s, true
	return nil
}

// Validate reports the first invalid setting, in Settings order, as a
// one-line error naming its environment variable; nil if all are valid.
func (c Config) Validate() error {
	return c.validate(func(env string) string { return env })
}

func (c Config) validate(name func(env string) string) error {
	for _, s := range settings {
		if err := s.check(c, name); err != nil {
			return err
		}
	}
	return nil
}

// RedisDB returns the database number of the presence keys, as used in
// keyspace notification channels (__keyevent@<db>__:expired):
// RedisSentinelDB with Sentinel, else the one in RedisURL. It returns 0 when
// the URL names no database or does not parse; Validate rejects the latter.
func (c Config) RedisDB() int {
	if c.Cluster() {
		return 0 // a cluster has database 0 only
	}
	if c.Sentinel() {
		return c.RedisSentinelDB
	}
	o, err := redis.ParseURL(c.RedisURL)
	if err != nil {
		return 0
	}
	return o.DB
}

// Cluster reports whether Redis is a Redis Cluster (RedisClusterAddrs is
// set).
func (c Config) Cluster() bool { return c.RedisClusterAddrs != "" }

// ClusterAddrs returns the addresses in RedisClusterAddrs, trimmed; nil
// when it is empty.
func (c Config) ClusterAddrs() []string { return splitAddrs(c.RedisClusterAddrs) }

// Sentinel reports whether Redis is reached through Sentinel
// (RedisSentinelAddrs is set).
func (c Config) Sentinel() bool { return c.RedisSentinelAddrs != "" }

// SentinelAddrs returns the addresses in RedisSentinelAddrs, trimmed; nil
// when it is empty.
func (c Config) SentinelAddrs() []string { return splitAddrs(c.RedisSentinelAddrs) }

// RedisTarget describes the Redis presenced uses, for logs and errors,
// without secrets: REDIS_URL redacted, or the master's name and its
// sentinels.
func (c Config) RedisTarget() string {
	if c.Sentinel() {
		return fmt.Sprintf("master %q via sentinels %s", c.RedisSentinelMaster, strings.Join(c.SentinelAddrs(), ","))
	}
	if c.Cluster() {
		return "cluster via " + strings.Join(c.ClusterAddrs(), ",")
	}
	return RedactURL(c.RedisURL)
}

// Level returns LogLevel as a slog.Level; slog.LevelInfo if it is not one
// of the values Validate accepts.
func (c Config) Level() slog.Level {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
