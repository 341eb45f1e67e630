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
	"net"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

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
	RedisURL string
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
	set    func(c *Config, v string) error
	check  func(c Config, name func(env string) string) error
}

// Settings returns every setting in display order. It is the single source
// of truth for Load, Default and Usage. The returned slice is a fresh copy.
func Settings() []Setting {
	s := make([]Setting, len(settings))
	copy(s, settings)
	return s
}

var settings = []Setting{
	{
		Flag: "nats-url", Env: "NATS_URL", Default: "nats://127.0.0.1:4222",
		Usage: "NATS server URL, or a comma-separated list of them",
		set:   func(c *Config, v string) error { c.NATSURL = v; return nil },
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
		set:   func(c *Config, v string) error { c.NATSUser = v; return nil },
		check: func(Config, func(string) string) error { return nil }, // paired in nats-password
	},
	{
		Flag: "nats-password", Env: "NATS_PASSWORD", Default: "",
		Usage:  "NATS password, with --nats-user (prefer the variable: flags show in ps)",
		secret: true,
		set:    func(c *Config, v string) error { c.NATSPassword = v; return nil },
		check: func(c Config, name func(string) string) error {
			return checkPair(name, "NATS_USER", c.NATSUser, "NATS_PASSWORD", c.NATSPassword)
		},
	},
	{
		Flag: "nats-token", Env: "NATS_TOKEN", Default: "",
		Usage:  "NATS authentication token (prefer the variable: flags show in ps)",
		secret: true,
		set:    func(c *Config, v string) error { c.NATSToken = v; return nil },
		check:  func(Config, func(string) string) error { return nil }, // exclusivity in nats-creds-file
	},
	{
		Flag: "nats-nkey-seed-file", Env: "NATS_NKEY_SEED_FILE", Default: "",
		Usage: "file holding the NATS nkey user seed (SU...)",
		set:   func(c *Config, v string) error { c.NATSNkeySeedFile = v; return nil },
		check: func(c Config, name func(string) string) error {
			return checkReadable(name("NATS_NKEY_SEED_FILE"), c.NATSNkeySeedFile)
		},
	},
	{
		Flag: "nats-creds-file", Env: "NATS_CREDS_FILE", Default: "",
		Usage: "NATS credentials file (user JWT and seed, from nsc)",
		set:   func(c *Config, v string) error { c.NATSCredsFile = v; return nil },
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
		set:   func(c *Config, v string) error { c.NATSTLSCAFile = v; return nil },
		check: func(c Config, name func(string) string) error {
			_, err := loadCAs(name("NATS_TLS_CA_FILE"), c.NATSTLSCAFile)
			return err
		},
	},
	{
		Flag: "nats-tls-cert-file", Env: "NATS_TLS_CERT_FILE", Default: "",
		Usage: "PEM client certificate for NATS, with --nats-tls-key-file",
		set:   func(c *Config, v string) error { c.NATSTLSCertFile = v; return nil },
		check: func(c Config, name func(string) string) error {
			return checkReadable(name("NATS_TLS_CERT_FILE"), c.NATSTLSCertFile)
		},
	},
	{
		Flag: "nats-tls-key-file", Env: "NATS_TLS_KEY_FILE", Default: "",
		Usage: "PEM key of the NATS client certificate",
		set:   func(c *Config, v string) error { c.NATSTLSKeyFile = v; return nil },
		check: func(c Config, name func(string) string) error {
			_, err := loadKeyPair(name, natsTLS(c))
			return err
		},
	},
	{
		Flag: "redis-url", Env: "REDIS_URL", Default: "redis://127.0.0.1:6379/0",
		Usage: "Redis URL, redis://[user:password@]host:port/db or rediss:// for TLS",
		set:   func(c *Config, v string) error { c.RedisURL = v; return nil },
		check: func(c Config, name func(string) string) error {
			if err := checkRedisURL(c.RedisURL); err != nil {
				return fmt.Errorf("invalid %s %q: %w", name("REDIS_URL"), RedactURL(c.RedisURL), err)
			}
			return nil
		},
	},
	{
		Flag: "redis-username", Env: "REDIS_USERNAME", Default: "",
		Usage: "Redis ACL user; replaces the user in --redis-url",
		set:   func(c *Config, v string) error { c.RedisUsername = v; return nil },
		check: func(Config, func(string) string) error { return nil }, // checked in redis-password
	},
	{
		Flag: "redis-password", Env: "REDIS_PASSWORD", Default: "",
		Usage:  "Redis password; replaces the password in --redis-url (prefer the variable: flags show in ps)",
		secret: true,
		set:    func(c *Config, v string) error { c.RedisPassword = v; return nil },
		check: func(c Config, name func(string) string) error {
			if c.RedisUsername == "" || c.RedisPassword != "" {
				return nil
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
		Usage: "PEM CA certificates that sign the Redis server's certificate (default: system roots; needs rediss://)",
		set:   func(c *Config, v string) error { c.RedisTLSCAFile = v; return nil },
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
		Usage: "PEM client certificate for Redis, with --redis-tls-key-file (needs rediss://)",
		set:   func(c *Config, v string) error { c.RedisTLSCertFile = v; return nil },
		check: func(c Config, name func(string) string) error {
			if err := checkRediss(c, name, "REDIS_TLS_CERT_FILE", c.RedisTLSCertFile); err != nil {
				return err
			}
			return checkReadable(name("REDIS_TLS_CERT_FILE"), c.RedisTLSCertFile)
		},
	},
	{
		Flag: "redis-tls-key-file", Env: "REDIS_TLS_KEY_FILE", Default: "",
		Usage: "PEM key of the Redis client certificate (needs rediss://)",
		set:   func(c *Config, v string) error { c.RedisTLSKeyFile = v; return nil },
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
		set:   durationSetter(func(c *Config) *time.Duration { return &c.TTL }),
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
		set:   func(c *Config, v string) error { c.KeyPrefix = v; return nil },
		check: func(c Config, name func(string) string) error {
			if c.KeyPrefix == "" {
				return fmt.Errorf("%s must not be empty", name("PRESENCE_KEY_PREFIX"))
			}
			if r, ok := findSpaceOrControl(c.KeyPrefix); ok {
				return fmt.Errorf("invalid %s %q: contains whitespace or control character %q", name("PRESENCE_KEY_PREFIX"), c.KeyPrefix, r)
			}
			return nil
		},
	},
	{
		Flag: "subject-prefix", Env: "PRESENCE_SUBJECT_PREFIX", Default: "presence",
		Usage: "prefix of every NATS subject: dot-separated tokens, no wildcards",
		set:   func(c *Config, v string) error { c.SubjectPrefix = v; return nil },
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
		set:   func(c *Config, v string) error { c.QueueGroup = v; return nil },
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
		set:   durationSetter(func(c *Config) *time.Duration { return &c.ReconcileInterval }),
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
		set:   intSetter(func(c *Config) *int { return &c.MaxBatch }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("PRESENCE_MAX_BATCH"), c.MaxBatch, 1, MaxMaxBatch)
		},
	},
	{
		Flag: "connect-timeout", Env: "PRESENCE_CONNECT_TIMEOUT", Default: "5s",
		Usage: "bound on the first connection to NATS and Redis (> 0)",
		set:   durationSetter(func(c *Config) *time.Duration { return &c.ConnectTimeout }),
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
		set:   durationSetter(func(c *Config) *time.Duration { return &c.OutageThreshold }),
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
		set:   durationSetter(func(c *Config) *time.Duration { return &c.OutboxClaimAfter }),
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
		set:   func(c *Config, v string) error { c.Stream = v; return nil },
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
		set:   intSetter(func(c *Config) *int { return &c.InFlight }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("PRESENCE_INFLIGHT"), c.InFlight, 1, MaxInFlight)
		},
	},
	{
		Flag: "intake-mb", Env: "PRESENCE_INTAKE_MB", Default: "256",
		Usage: "MiB of received heartbeats and disconnects a replica holds before dropping (1 to 65536)",
		set:   intSetter(func(c *Config) *int { return &c.IntakeMB }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("PRESENCE_INTAKE_MB"), c.IntakeMB, 1, MaxIntakeMB)
		},
	},
	{
		Flag: "shards", Env: "PRESENCE_SHARDS", Default: "16384",
		Usage: "sessions shards in Redis when creating the data set: about peak users online / 64 (1 to 4194304)",
		set:   intSetter(func(c *Config) *int { return &c.Shards }),
		check: func(c Config, name func(string) string) error {
			return checkIntRange(name("PRESENCE_SHARDS"), c.Shards, 1, MaxShards)
		},
	},
	{
		Flag: "query-view", Env: "PRESENCE_QUERY_VIEW", Default: "true",
		Usage:  "answer online queries from an in-memory view of the sessions that follows the outbox (false: Redis MGET)",
		isBool: true,
		set:    boolSetter(func(c *Config) *bool { return &c.QueryView }),
		check:  func(Config, func(string) string) error { return nil },
	},
	{
		Flag: "outbox-retention", Env: "PRESENCE_OUTBOX_RETENTION", Default: "30s",
		Usage: "keep published outbox entries this long for the query views (0 to 1h; >= 1s with query-view)",
		set:   durationSetter(func(c *Config) *time.Duration { return &c.OutboxRetention }),
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
		Flag: "log-level", Env: "LOG_LEVEL", Default: "info",
		Usage: "debug, info, warn or error",
		set:   func(c *Config, v string) error { c.LogLevel = v; return nil },
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
		set:   func(c *Config, v string) error { c.LogFormat = v; return nil },
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
		set: func(c *Config, v string) error {
			// An empty variable reads as unset, so "off" is how the
			// environment disables the endpoint.
			if v == "off" {
				v = ""
			}
			c.HTTPAddr = v
			return nil
		},
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
		set: func(c *Config, v string) error {
			if v == "off" {
				v = ""
			}
			c.StatusAddr = v
			return nil
		},
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
		set:    boolSetter(func(c *Config) *bool { return &c.Pprof }),
		check: func(c Config, name func(string) string) error {
			if c.Pprof && c.StatusAddr == "" {
				return fmt.Errorf("%s needs %s: pprof is served only on the status address", name("PPROF_ENABLED"), name("STATUS_ADDR"))
			}
			return nil
		},
	},
}

func durationSetter(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		*field(c) = d
		return nil
	}
}

func boolSetter(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.Unwrap(err) // strconv.ErrSyntax: the value is already in the message
		}
		*field(c) = b
		return nil
	}
}

func intSetter(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return errors.Unwrap(err) // strconv.ErrSyntax or ErrRange: the value is already in the message
		}
		*field(c) = n
		return nil
	}
}

// Default returns the configuration with every setting at its default.
func Default() Config {
	var c Config
	for _, s := range settings {
		if err := s.set(&c, s.Default); err != nil {
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
			if err := s.set(&c, v.value); err != nil {
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
			if err := s.set(&c, v); err != nil {
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

// RedisDB returns the database number in RedisURL, as used in keyspace
// notification channels (__keyevent@<db>__:expired). It returns 0 when the
// URL names no database or does not parse; Validate rejects the latter.
func (c Config) RedisDB() int {
	o, err := redis.ParseURL(c.RedisURL)
	if err != nil {
		return 0
	}
	return o.DB
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

// LogValue implements slog.LogValuer: every setting as a group, keyed by its
// flag name, with secrets in URLs masked by RedactURL and passwords and
// tokens replaced by xxxxx (left empty when unset). File names are shown;
// the files' contents never are.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("nats-url", RedactURL(c.NATSURL)),
		slog.String("nats-user", c.NATSUser),
		slog.String("nats-password", maskSecret(c.NATSPassword)),
		slog.String("nats-token", maskSecret(c.NATSToken)),
		slog.String("nats-nkey-seed-file", c.NATSNkeySeedFile),
		slog.String("nats-creds-file", c.NATSCredsFile),
		slog.String("nats-tls-ca-file", c.NATSTLSCAFile),
		slog.String("nats-tls-cert-file", c.NATSTLSCertFile),
		slog.String("nats-tls-key-file", c.NATSTLSKeyFile),
		slog.String("redis-url", RedactURL(c.RedisURL)),
		slog.String("redis-username", c.RedisUsername),
		slog.String("redis-password", maskSecret(c.RedisPassword)),
		slog.String("redis-tls-ca-file", c.RedisTLSCAFile),
		slog.String("redis-tls-cert-file", c.RedisTLSCertFile),
		slog.String("redis-tls-key-file", c.RedisTLSKeyFile),
		slog.Duration("ttl", c.TTL),
		slog.String("key-prefix", c.KeyPrefix),
		slog.String("subject-prefix", c.SubjectPrefix),
		slog.String("queue-group", c.QueueGroup),
		slog.Duration("reconcile-interval", c.ReconcileInterval),
		slog.Int("max-batch", c.MaxBatch),
		slog.Duration("connect-timeout", c.ConnectTimeout),
		slog.Duration("outage-threshold", c.OutageThreshold),
		slog.Duration("outbox-claim-after", c.OutboxClaimAfter),
		slog.String("stream", c.Stream),
		slog.Int("inflight", c.InFlight),
		slog.Int("intake-mb", c.IntakeMB),
		slog.Int("shards", c.Shards),
		slog.Bool("query-view", c.QueryView),
		slog.Duration("outbox-retention", c.OutboxRetention),
		slog.String("log-level", c.LogLevel),
		slog.String("log-format", c.LogFormat),
		slog.String("http-addr", c.HTTPAddr),
		slog.String("status-addr", c.StatusAddr),
		slog.Bool("pprof", c.Pprof),
	)
}

// String returns the settings as LogValue shows them, secrets masked, so
// that printing a Config with %v or %+v cannot leak a password.
func (c Config) String() string { return c.LogValue().String() }

// GoString is String, for %#v.
func (c Config) GoString() string { return c.String() }

// Usage writes a table of every setting (flag, environment variable,
// default, meaning) to w, for --help.
func Usage(w io.Writer) {
	fmt.Fprintln(w, "Settings (a flag beats its environment variable, which beats the default):")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FLAG\tENVIRONMENT\tDEFAULT\tMEANING")
	for _, s := range settings {
		def := s.Default
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(tw, "--%s\t%s\t%s\t%s\n", s.Flag, s.Env, def, s.Usage)
	}
	tw.Flush()
}

const mask = "xxxxx"

// RedactURL masks the secrets in a URL or a comma-separated list of URLs,
// for logs and error messages: a password becomes xxxxx (user:xxxxx@), a
// user-only userinfo (a NATS token) becomes xxxxx, and the value of any query
// parameter whose name suggests a secret (password, token, secret, key, auth,
// jwt, cred...) becomes xxxxx. It does not require the URL to parse, and
// leaves the rest of the text as it was.
func RedactURL(u string) string {
	if !strings.Contains(u, ",") {
		return redactOne(u)
	}
	parts := strings.Split(u, ",")
	for i, p := range parts {
		parts[i] = redactOne(p)
	}
	return strings.Join(parts, ",")
}

func redactOne(u string) string {
	query := ""
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u, query = u[:i], u[i:]
	}
	start := 0
	if i := strings.Index(u, "://"); i >= 0 {
		start = i + len("://")
	}
	// The last @ before the query ends the userinfo, so a password holding
	// '/' or '@' is masked whole.
	if at := strings.LastIndexByte(u[start:], '@'); at > 0 {
		userinfo := u[start : start+at]
		if user, _, ok := strings.Cut(userinfo, ":"); ok {
			userinfo = user + ":" + mask
		} else {
			userinfo = mask
		}
		u = u[:start] + userinfo + u[start+at:]
	}
	return u + redactQuery(query)
}

func redactQuery(q string) string {
	if q == "" {
		return ""
	}
	frag := ""
	if i := strings.IndexByte(q, '#'); i >= 0 {
		q, frag = q[:i], q[i:]
	}
	params := strings.Split(q[1:], "&")
	for i, p := range params {
		k, _, ok := strings.Cut(p, "=")
		if ok && secretParam(k) {
			params[i] = k + "=" + mask
		}
	}
	return "?" + strings.Join(params, "&") + frag
}

func secretParam(k string) bool {
	k = strings.ToLower(k)
	if uk, err := url.QueryUnescape(k); err == nil {
		k = uk
	}
	for _, s := range []string{"pass", "pwd", "secret", "token", "key", "auth", "jwt", "cred", "sig"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

func checkNATSURL(list string) error {
	if strings.TrimSpace(list) == "" {
		return errors.New("empty")
	}
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			return errors.New("empty entry in list")
		}
		s := raw
		if !strings.Contains(s, "://") {
			s = "nats://" + s // as nats.go does
		}
		u, err := url.Parse(s)
		if err != nil {
			return errors.New("not a URL") // url.Error would repeat the secret
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("scheme %q: want nats, tls, ws or wss", u.Scheme)
		}
		if u.Hostname() == "" {
			return fmt.Errorf("%q has no host", RedactURL(raw))
		}
	}
	return nil
}

func checkRedisURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL") // url.Error would repeat the secret
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return fmt.Errorf("scheme %q: want redis or rediss", u.Scheme)
	}
	if u.Hostname() == "" {
		return errors.New("no host")
	}
	o, err := redis.ParseURL(s)
	if err != nil {
		return err
	}
	if o.TLSConfig != nil && o.TLSConfig.InsecureSkipVerify {
		return errors.New("skip_verify is not supported: trust a private CA with REDIS_TLS_CA_FILE")
	}
	return nil
}

func checkSubjectPrefix(p string) error {
	if p == "" {
		return errors.New("empty")
	}
	if r, ok := findSpaceOrControl(p); ok {
		return fmt.Errorf("contains whitespace or control character %q", r)
	}
	if strings.ContainsAny(p, "*>") {
		return errors.New("contains a wildcard (* or >)")
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" {
			return errors.New("empty token (leading, trailing or double dot)")
		}
	}
	return nil
}

func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	return nil
}

func checkIntRange(name string, v, lo, hi int) error {
	if v < lo || v > hi {
		return fmt.Errorf("%s must be between %d and %d, got %d", name, lo, hi, v)
	}
	return nil
}

func findSpaceOrControl(s string) (rune, bool) {
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar {
			return r, true
		}
	}
	return 0, false
}
