package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Setting describes one configuration setting: its flag (without dashes),
// its environment variable, its default as it would be written in either,
// and a one-line meaning. Settings returns the table.
type Setting struct {
	Flag    string
	Env     string
	Default string
	Usage   string

	isBool bool
	secret bool // the value never appears in errors or logs
	url    bool // logged with RedactURL (a URL may carry a password)
	field  field
	check  func(c Config, name func(env string) string) error
}

// Settings returns every setting in display order. It is the single source
// of truth for Load, Default and Usage. The returned slice is a fresh copy.
func Settings() []Setting {
	s := make([]Setting, len(settings))
	copy(s, settings)
	return s
}

// defaultRedisURL is REDIS_URL's default: a REDIS_URL with another value
// was set, so it may not be combined with another Redis topology.
const defaultRedisURL = "redis://127.0.0.1:6379/0"

var settings = []Setting{
	{
		Flag: "nats-url", Env: "NATS_URL", Default: "nats://127.0.0.1:4222", url: true,
		Usage: "NATS server URL, or a comma-separated list of them",
		field: stringField(func(c *Config) *string { return &c.NATSURL }),
		check: func(c Config, name func(string) string) error {
			if err := checkNATSURL(c.NATSURL); err != nil {
				return fmt.Errorf("invalid %s %q: %w", name("NATS_URL"), RedactURL(c.NATSURL), err)
			}
			return nil
		},
	},
	{
		Flag: "nats-user", Env: "NATS_USER", Default: "",
		Usage: "NATS user, with --nats-password",
		field: stringField(func(c *Config) *string { return &c.NATSUser }),
		check: func(Config, func(string) string) error { return nil }, // paired in nats-password
	},
	{
		Flag: "nats-password", Env: "NATS_PASSWORD", Default: "",
		Usage:  "NATS password, with --nats-user (prefer the variable: flags show in ps)",
		secret: true,
		field:  stringField(func(c *Config) *string { return &c.NATSPassword }),
		check: func(c Config, name func(string) string) error {
			return checkPair(name, "NATS_USER", c.NATSUser, "NATS_PASSWORD", c.NATSPassword)
		},
	},
	{
		Flag: "nats-token", Env: "NATS_TOKEN", Default: "",
		Usage:  "NATS authentication token (prefer the variable: flags show in ps)",
		secret: true,
		field:  stringField(func(c *Config) *string { return &c.NATSToken }),
		check:  func(Config, func(string) string) error { return nil }, // exclusivity in nats-creds-file
	},
	{
		Flag: "nats-nkey-seed-file", Env: "NATS_NKEY_SEED_FILE", Default: "",
		Usage: "file holding the NATS nkey user seed (SU...)",
		field: stringField(func(c *Config) *string { return &c.NATSNkeySeedFile }),
		check: func(c Config, name func(string) string) error {
			return checkReadable(name("NATS_NKEY_SEED_FILE"), c.NATSNkeySeedFile)
		},
	},
	{
		Flag: "nats-creds-file", Env: "NATS_CREDS_FILE", Default: "",
		Usage: "NATS credentials file (user JWT and seed, from nsc)",
		field: stringField(func(c *Config) *string { return &c.NATSCredsFile }),
		check: func(c Config, name func(string) string) error {
			if err := checkReadable(name("NATS_CREDS_FILE"), c.NATSCredsFile); err != nil {
				return err
			}
			return checkNATSAuth(c, name)
		},
	},
	{
		Flag: "nats-tls-ca-file", Env: "NATS_TLS_CA_FILE", Default: "",
		Usage: "PEM CA certificates that sign the NATS server's certificate (default: system roots)",
		field: stringField(func(c *Config) *string { return &c.NATSTLSCAFile }),
		check: func(c Config, name func(string) string) error {
			_, err := loadCAs(name("NATS_TLS_CA_FILE"), c.NATSTLSCAFile)
			return err
		},
	},
	{
		Flag: "nats-tls-cert-file", Env: "NATS_TLS_CERT_FILE", Default: "",
		Usage: "PEM client certificate for NATS, with --nats-tls-key-file",
		field: stringField(func(c *Config) *string { return &c.NATSTLSCertFile }),
		check: func(c Config, name func(string) string) error {
			return checkReadable(name("NATS_TLS_CERT_FILE"), c.NATSTLSCertFile)
		},
	},
	{
		Flag: "nats-tls-key-file", Env: "NATS_TLS_KEY_FILE", Default: "",
		Usage: "PEM key of the NATS client certificate",
		field: stringField(func(c *Config) *string { return &c.NATSTLSKeyFile }),
		check: func(c Config, name func(string) string) error {
			_, err := loadKeyPair(name, natsTLS(c))
			return err
		},
	},
	{
		Flag: "redis-url", Env: "REDIS_URL", url: true, Default: defaultRedisURL,
		Usage: "Redis URL of one server, redis://[user:password@]host:port/db or rediss:// for TLS",
		field: stringField(func(c *Config) *string { return &c.RedisURL }),
		check: func(c Config, name func(string) string) error {
			if err := checkRedisURL(c.RedisURL); err != nil {
				return fmt.Errorf("invalid %s %q: %w", name("REDIS_URL"), RedactURL(c.RedisURL), err)
			}
			return checkTopology(c, name, c.RedisURL != defaultRedisURL)
		},
	},
	{
		Flag: "redis-sentinel-addrs", Env: "REDIS_SENTINEL_ADDRS", Default: "",
		Usage: "Redis Sentinel addresses, host:port,host:port (instead of --redis-url), with --redis-sentinel-master",
		field: stringField(func(c *Config) *string { return &c.RedisSentinelAddrs }),
		check: func(c Config, name func(string) string) error {
			if err := checkAddrs(c.RedisSentinelAddrs); err != nil {
				return fmt.Errorf("invalid %s %q: %w", name("REDIS_SENTINEL_ADDRS"), c.RedisSentinelAddrs, err)
			}
			return nil
		},
	},
	{
		Flag: "redis-sentinel-master", Env: "REDIS_SENTINEL_MASTER", Default: "",
		Usage: "name of the master the sentinels monitor, with --redis-sentinel-addrs",
		field: stringField(func(c *Config) *string { return &c.RedisSentinelMaster }),
		check: func(c Config, name func(string) string) error {
			if r, ok := findSpaceOrControl(c.RedisSentinelMaster); ok {
				return fmt.Errorf("invalid %s %q: contains whitespace or control character %q", name("REDIS_SENTINEL_MASTER"), c.RedisSentinelMaster, r)
			}
			return checkPair(name, "REDIS_SENTINEL_ADDRS", c.RedisSentinelAddrs, "REDIS_SENTINEL_MASTER", c.RedisSentinelMaster)
		},
	},
	{
		Flag: "redis-sentinel-password", Env: "REDIS_SENTINEL_PASSWORD", Default: "",
		Usage:  "password of the sentinels (their requirepass; prefer the variable: flags show in ps)",
		secret: true,
		field:  stringField(func(c *Config) *string { return &c.RedisSentinelPassword }),
		check: func(c Config, name func(string) string) error {
			return checkSentinelOnly(c, name, "REDIS_SENTINEL_PASSWORD", c.RedisSentinelPassword != "")
		},
	},
	{
		Flag: "redis-sentinel-db", Env: "REDIS_SENTINEL_DB", Default: "0",
		Usage: "database number on the master the sentinels name",
		field: intField(func(c *Config) *int { return &c.RedisSentinelDB }),
		check: func(c Config, name func(string) string) error {
			if c.RedisSentinelDB < 0 {
				return fmt.Errorf("%s must be 0 or more, got %d", name("REDIS_SENTINEL_DB"), c.RedisSentinelDB)
			}
			return checkSentinelOnly(c, name, "REDIS_SENTINEL_DB", c.RedisSentinelDB != 0)
		},
	},
	{
		Flag: "redis-sentinel-tls", Env: "REDIS_SENTINEL_TLS", Default: "false",
		Usage:  "use TLS to the sentinels and the servers they name (the --redis-tls-* files apply)",
		isBool: true,
		field:  boolField(func(c *Config) *bool { return &c.RedisSentinelTLS }),
		check: func(c Config, name func(string) string) error {
			return checkSentinelOnly(c, name, "REDIS_SENTINEL_TLS", c.RedisSentinelTLS)
		},
	},
	{
		Flag: "redis-cluster-addrs", Env: "REDIS_CLUSTER_ADDRS", Default: "",
		Usage: "Redis Cluster seed nodes, host:port,host:port",
		field: stringField(func(c *Config) *string { return &c.RedisClusterAddrs }),
		check: func(c Config, name func(string) string) error {
			if err := checkAddrs(c.RedisClusterAddrs); err != nil {
				return fmt.Errorf("invalid %s %q: %w", name("REDIS_CLUSTER_ADDRS"), c.RedisClusterAddrs, err)
			}
			return nil
		},
	},
	{
		Flag: "redis-cluster-partitions", Env: "REDIS_CLUSTER_PARTITIONS", Default: "12",
		Usage: "partitions of the presence data on a Redis Cluster, the same on every replica for the life of the data (1 to 1024)",
		field: intField(func(c *Config) *int { return &c.RedisClusterPartitions }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("REDIS_CLUSTER_PARTITIONS"), c.RedisClusterPartitions, 1, 1024)
		},
	},
	{
		Flag: "redis-cluster-tls", Env: "REDIS_CLUSTER_TLS", Default: "false",
		Usage:  "use TLS to the cluster's nodes (the --redis-tls-* files apply)",
		isBool: true,
		field:  boolField(func(c *Config) *bool { return &c.RedisClusterTLS }),
		check: func(c Config, name func(string) string) error {
			if c.RedisClusterTLS && !c.Cluster() {
				return fmt.Errorf("%s is set without %s", name("REDIS_CLUSTER_TLS"), name("REDIS_CLUSTER_ADDRS"))
			}
			return nil
		},
	},
	{
		Flag: "redis-username", Env: "REDIS_USERNAME", Default: "",
		Usage: "Redis ACL user; replaces the user in --redis-url",
		field: stringField(func(c *Config) *string { return &c.RedisUsername }),
		check: func(Config, func(string) string) error { return nil }, // checked in redis-password
	},
	{
		Flag: "redis-password", Env: "REDIS_PASSWORD", Default: "",
		Usage:  "Redis password; replaces the password in --redis-url (prefer the variable: flags show in ps)",
		secret: true,
		field:  stringField(func(c *Config) *string { return &c.RedisPassword }),
		check: func(c Config, name func(string) string) error {
			if c.RedisUsername == "" || c.RedisPassword != "" {
				return nil
			}
			if c.Sentinel() {
				return fmt.Errorf("%s is set without %s", name("REDIS_USERNAME"), name("REDIS_PASSWORD"))
			}
			if u, err := url.Parse(c.RedisURL); err == nil && u.User != nil {
				if _, ok := u.User.Password(); ok {
					return nil
				}
			}
			return fmt.Errorf("%s is set without a password: set %s or put the password in %s",
				name("REDIS_USERNAME"), name("REDIS_PASSWORD"), name("REDIS_URL"))
		},
	},
	{
		Flag: "redis-tls-ca-file", Env: "REDIS_TLS_CA_FILE", Default: "",
		Usage: "PEM CA certificates that sign the Redis server's certificate (default: system roots; needs rediss:// or --redis-sentinel-tls)",
		field: stringField(func(c *Config) *string { return &c.RedisTLSCAFile }),
		check: func(c Config, name func(string) string) error {
			if err := checkRediss(c, name, "REDIS_TLS_CA_FILE", c.RedisTLSCAFile); err != nil {
				return err
			}
			_, err := loadCAs(name("REDIS_TLS_CA_FILE"), c.RedisTLSCAFile)
			return err
		},
	},
	{
		Flag: "redis-tls-cert-file", Env: "REDIS_TLS_CERT_FILE", Default: "",
		Usage: "PEM client certificate for Redis, with --redis-tls-key-file (needs rediss:// or --redis-sentinel-tls)",
		field: stringField(func(c *Config) *string { return &c.RedisTLSCertFile }),
		check: func(c Config, name func(string) string) error {
			if err := checkRediss(c, name, "REDIS_TLS_CERT_FILE", c.RedisTLSCertFile); err != nil {
				return err
			}
			return checkReadable(name("REDIS_TLS_CERT_FILE"), c.RedisTLSCertFile)
		},
	},
	{
		Flag: "redis-tls-key-file", Env: "REDIS_TLS_KEY_FILE", Default: "",
		Usage: "PEM key of the Redis client certificate (needs rediss:// or --redis-sentinel-tls)",
		field: stringField(func(c *Config) *string { return &c.RedisTLSKeyFile }),
		check: func(c Config, name func(string) string) error {
			if err := checkRediss(c, name, "REDIS_TLS_KEY_FILE", c.RedisTLSKeyFile); err != nil {
				return err
			}
			_, err := loadKeyPair(name, redisTLS(c))
			return err
		},
	},
	{
		Flag: "ttl", Env: "PRESENCE_TTL", Default: "60s",
		Usage: "how long a user stays online after the last heartbeat (100ms to 24h)",
		field: durationField(func(c *Config) *time.Duration { return &c.TTL }),
		check: func(c Config, name func(string) string) error {
			if c.TTL < MinTTL || c.TTL > MaxTTL {
				return fmt.Errorf("%s must be between %s and %s, got %s", name("PRESENCE_TTL"), MinTTL, MaxTTL, c.TTL)
			}
			return nil
		},
	},
	{
		Flag: "key-prefix", Env: "PRESENCE_KEY_PREFIX", Default: "presence:",
		Usage: `prefix of every Redis key; a user's key is <prefix>user:<id>`,
		field: stringField(func(c *Config) *string { return &c.KeyPrefix }),
		check: func(c Config, name func(string) string) error {
			if c.KeyPrefix == "" {
				return fmt.Errorf("%s must not be empty", name("PRESENCE_KEY_PREFIX"))
			}
			if r, ok := findSpaceOrControl(c.KeyPrefix); ok {
				return fmt.Errorf("invalid %s %q: contains whitespace or control character %q", name("PRESENCE_KEY_PREFIX"), c.KeyPrefix, r)
			}
			if c.Cluster() && strings.ContainsAny(c.KeyPrefix, "{}") {
				// A hash tag in the prefix would put every partition, and
				// every user's key, in one hash slot: on one master.
				return fmt.Errorf("invalid %s %q with %s: must not contain { or } (presenced puts each partition's hash tag after the prefix)",
					name("PRESENCE_KEY_PREFIX"), c.KeyPrefix, name("REDIS_CLUSTER_ADDRS"))
			}
			return nil
		},
	},
	{
		Flag: "subject-prefix", Env: "PRESENCE_SUBJECT_PREFIX", Default: "presence",
		Usage: "prefix of every NATS subject: dot-separated tokens, no wildcards",
		field: stringField(func(c *Config) *string { return &c.SubjectPrefix }),
		check: func(c Config, name func(string) string) error {
			if err := checkSubjectPrefix(c.SubjectPrefix); err != nil {
				return fmt.Errorf("invalid %s %q: %w", name("PRESENCE_SUBJECT_PREFIX"), c.SubjectPrefix, err)
			}
			return nil
		},
	},
	{
		Flag: "queue-group", Env: "PRESENCE_QUEUE_GROUP", Default: "presenced",
		Usage: "NATS queue group shared by the replicas",
		field: stringField(func(c *Config) *string { return &c.QueueGroup }),
		check: func(c Config, name func(string) string) error {
			if c.QueueGroup == "" {
				return fmt.Errorf("%s must not be empty", name("PRESENCE_QUEUE_GROUP"))
			}
			if r, ok := findSpaceOrControl(c.QueueGroup); ok {
				return fmt.Errorf("invalid %s %q: contains whitespace or control character %q", name("PRESENCE_QUEUE_GROUP"), c.QueueGroup, r)
			}
			return nil
		},
	},
	{
		Flag: "reconcile-interval", Env: "PRESENCE_RECONCILE_INTERVAL", Default: "200ms",
		Usage: "how often a replica sweeps for expired users (> 0, <= ttl)",
		field: durationField(func(c *Config) *time.Duration { return &c.ReconcileInterval }),
		check: func(c Config, name func(string) string) error {
			if c.ReconcileInterval <= 0 || c.ReconcileInterval > c.TTL {
				return fmt.Errorf("%s must be greater than 0 and at most %s (%s), got %s",
					name("PRESENCE_RECONCILE_INTERVAL"), name("PRESENCE_TTL"), c.TTL, c.ReconcileInterval)
			}
			return nil
		},
	},
	{
		Flag: "max-batch", Env: "PRESENCE_MAX_BATCH", Default: "10000",
		Usage: "most user ids accepted in one message (1 to 1000000)",
		field: intField(func(c *Config) *int { return &c.MaxBatch }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("PRESENCE_MAX_BATCH"), c.MaxBatch, 1, MaxMaxBatch)
		},
	},
	{
		Flag: "connect-timeout", Env: "PRESENCE_CONNECT_TIMEOUT", Default: "5s",
		Usage: "bound on the first connection to NATS and Redis (> 0)",
		field: durationField(func(c *Config) *time.Duration { return &c.ConnectTimeout }),
		check: func(c Config, name func(string) string) error {
			if c.ConnectTimeout <= 0 {
				return fmt.Errorf("%s must be greater than 0, got %s", name("PRESENCE_CONNECT_TIMEOUT"), c.ConnectTimeout)
			}
			return nil
		},
	},
	{
		Flag: "outage-threshold", Env: "PRESENCE_OUTAGE_THRESHOLD", Default: "5s",
		Usage: "after a sweep gap longer than this, users due in the gap get one ttl of grace (> reconcile-interval)",
		field: durationField(func(c *Config) *time.Duration { return &c.OutageThreshold }),
		check: func(c Config, name func(string) string) error {
			if c.OutageThreshold <= c.ReconcileInterval {
				return fmt.Errorf("%s must be greater than %s (%s), got %s",
					name("PRESENCE_OUTAGE_THRESHOLD"), name("PRESENCE_RECONCILE_INTERVAL"), c.ReconcileInterval, c.OutageThreshold)
			}
			return nil
		},
	},
	{
		Flag: "outbox-claim-after", Env: "PRESENCE_OUTBOX_CLAIM_AFTER", Default: "15s",
		Usage: "outbox entries pending this long on a dead replica are reclaimed (> 0)",
		field: durationField(func(c *Config) *time.Duration { return &c.OutboxClaimAfter }),
		check: func(c Config, name func(string) string) error {
			if c.OutboxClaimAfter <= 0 {
				return fmt.Errorf("%s must be greater than 0, got %s", name("PRESENCE_OUTBOX_CLAIM_AFTER"), c.OutboxClaimAfter)
			}
			return nil
		},
	},
	{
		Flag: "stream", Env: "PRESENCE_STREAM", Default: "",
		Usage: "JetStream stream to publish events to, each confirmed by a PubAck before its outbox entry is acknowledged (empty: core NATS)",
		field: stringField(func(c *Config) *string { return &c.Stream }),
		check: func(c Config, name func(string) string) error {
			if c.Stream == "" {
				return nil
			}
			if r, ok := findSpaceOrControl(c.Stream); ok {
				return fmt.Errorf("invalid %s %q: contains whitespace or control character %q", name("PRESENCE_STREAM"), c.Stream, r)
			}
			if strings.ContainsAny(c.Stream, ".*>/\\") {
				return fmt.Errorf("invalid %s %q: a stream name has no '.', '*', '>', '/' or '\\'", name("PRESENCE_STREAM"), c.Stream)
			}
			return nil
		},
	},
	{
		Flag: "inflight", Env: "PRESENCE_INFLIGHT", Default: "8",
		Usage: "Redis batches in flight per replica (1 to 64)",
		field: intField(func(c *Config) *int { return &c.InFlight }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("PRESENCE_INFLIGHT"), c.InFlight, 1, MaxInFlight)
		},
	},
	{
		Flag: "intake-mb", Env: "PRESENCE_INTAKE_MB", Default: "256",
		Usage: "MiB of received heartbeats and disconnects a replica holds before dropping (1 to 65536)",
		field: intField(func(c *Config) *int { return &c.IntakeMB }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("PRESENCE_INTAKE_MB"), c.IntakeMB, 1, MaxIntakeMB)
		},
	},
	{
		Flag: "shards", Env: "PRESENCE_SHARDS", Default: "16384",
		Usage: "sessions shards in Redis when creating the data set: about peak users online / 64 (1 to 4194304)",
		field: intField(func(c *Config) *int { return &c.Shards }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("PRESENCE_SHARDS"), c.Shards, 1, MaxShards)
		},
	},
	{
		Flag: "query-view", Env: "PRESENCE_QUERY_VIEW", Default: "true",
		Usage:  "answer online queries from an in-memory view of the sessions that follows the outbox (false: Redis MGET; not used on a Redis Cluster, where queries read Redis)",
		isBool: true,
		field:  boolField(func(c *Config) *bool { return &c.QueryView }),
		check:  func(Config, func(string) string) error { return nil },
	},
	{
		Flag: "outbox-retention", Env: "PRESENCE_OUTBOX_RETENTION", Default: "30s",
		Usage: "keep published outbox entries this long for the query views (0 to 1h; >= 1s with query-view)",
		field: durationField(func(c *Config) *time.Duration { return &c.OutboxRetention }),
		check: func(c Config, name func(string) string) error {
			if c.OutboxRetention < 0 || c.OutboxRetention > time.Hour {
				return fmt.Errorf("%s must be between 0 and 1h, got %s", name("PRESENCE_OUTBOX_RETENTION"), c.OutboxRetention)
			}
			if c.QueryView && c.OutboxRetention < time.Second {
				return fmt.Errorf("%s must be at least 1s when %s is on, got %s", name("PRESENCE_OUTBOX_RETENTION"), name("PRESENCE_QUERY_VIEW"), c.OutboxRetention)
			}
			return nil
		},
	},
	{
		Flag: "offline-grace", Env: "PRESENCE_OFFLINE_GRACE", Default: "0s",
		Usage: "hold the offline of a user whose last connection ended by disconnect or gateway loss this long; a connection within it continues the session silently (0 to 10m)",
		field: durationField(func(c *Config) *time.Duration { return &c.OfflineGrace }),
		check: func(c Config, name func(string) string) error {
			if c.OfflineGrace < 0 || c.OfflineGrace > 10*time.Minute {
				return fmt.Errorf("%s must be between 0 and 10m, got %s", name("PRESENCE_OFFLINE_GRACE"), c.OfflineGrace)
			}
			return nil
		},
	},
	{
		Flag: "gateway-lease", Env: "PRESENCE_GATEWAY_LEASE", Default: "15s",
		Usage: "how long a gateway's lease lasts after its last lease heartbeat; its connections end when it lapses (1s to 10m)",
		field: durationField(func(c *Config) *time.Duration { return &c.GatewayLease }),
		check: func(c Config, name func(string) string) error {
			if c.GatewayLease < time.Second || c.GatewayLease > 10*time.Minute {
				return fmt.Errorf("%s must be between 1s and 10m, got %s", name("PRESENCE_GATEWAY_LEASE"), c.GatewayLease)
			}
			return nil
		},
	},
	{
		Flag: "max-connections-per-user", Env: "PRESENCE_MAX_CONNECTIONS_PER_USER", Default: "64",
		Usage: "most live connections one user may have; a new one beyond it is rejected (1 to 10000)",
		field: intField(func(c *Config) *int { return &c.MaxConnectionsPerUser }),
		check: func(c Config, name func(string) string) error {
			if c.MaxConnectionsPerUser < 1 || c.MaxConnectionsPerUser > 10000 {
				return fmt.Errorf("%s must be between 1 and 10000, got %d", name("PRESENCE_MAX_CONNECTIONS_PER_USER"), c.MaxConnectionsPerUser)
			}
			return nil
		},
	},
	{
		Flag: "log-level", Env: "LOG_LEVEL", Default: "info",
		Usage: "debug, info, warn or error",
		field: stringField(func(c *Config) *string { return &c.LogLevel }),
		check: func(c Config, name func(string) string) error {
			switch c.LogLevel {
			case "debug", "info", "warn", "error":
				return nil
			}
			return fmt.Errorf("invalid %s %q: want debug, info, warn or error", name("LOG_LEVEL"), c.LogLevel)
		},
	},
	{
		Flag: "log-format", Env: "LOG_FORMAT", Default: "json",
		Usage: "json or text",
		field: stringField(func(c *Config) *string { return &c.LogFormat }),
		check: func(c Config, name func(string) string) error {
			switch c.LogFormat {
			case "json", "text":
				return nil
			}
			return fmt.Errorf("invalid %s %q: want json or text", name("LOG_FORMAT"), c.LogFormat)
		},
	},
	{
		Flag: "http-addr", Env: "HTTP_ADDR", Default: ":8080",
		Usage: `listen address for health and metrics; "off" or empty disables`,
		field: offStringField(func(c *Config) *string { return &c.HTTPAddr }),
		check: func(c Config, name func(string) string) error {
			if c.HTTPAddr == "" {
				return nil
			}
			if err := checkListenAddr(c.HTTPAddr); err != nil {
				return fmt.Errorf("invalid %s %q: %w", name("HTTP_ADDR"), c.HTTPAddr, err)
			}
			return nil
		},
	},
	{
		Flag: "status-addr", Env: "STATUS_ADDR", Default: "off",
		Usage: `listen address for the status page (user ids, no authentication) and pprof, e.g. 127.0.0.1:8081; "off" or empty disables`,
		field: offStringField(func(c *Config) *string { return &c.StatusAddr }),
		check: func(c Config, name func(string) string) error {
			if c.StatusAddr == "" {
				return nil
			}
			if err := checkListenAddr(c.StatusAddr); err != nil {
				return fmt.Errorf("invalid %s %q: %w", name("STATUS_ADDR"), c.StatusAddr, err)
			}
			if _, port, _ := net.SplitHostPort(c.StatusAddr); c.StatusAddr == c.HTTPAddr && port != "0" {
				return fmt.Errorf("%s and %s are both %q: the status page must not share the health and metrics address", name("STATUS_ADDR"), name("HTTP_ADDR"), c.StatusAddr)
			}
			return nil
		},
	},
	{
		Flag: "pprof", Env: "PPROF_ENABLED", Default: "false",
		Usage:  "serve net/http/pprof (not cmdline) on the status address",
		isBool: true,
		field:  boolField(func(c *Config) *bool { return &c.Pprof }),
		check: func(c Config, name func(string) string) error {
			if c.Pprof && c.StatusAddr == "" {
				return fmt.Errorf("%s needs %s: pprof is served only on the status address", name("PPROF_ENABLED"), name("STATUS_ADDR"))
			}
			return nil
		},
	},
}
