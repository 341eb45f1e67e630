package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/query"
	"github.com/presenced/presenced/worker"
)

// presenceModule provides the Redis client and the presence backend: the
// Store, the query View and the ExpiryListener on one server or Sentinel,
// the Cluster and its ClusterExpiry on a Redis Cluster. It owns the Redis
// connections: it pings in OnStart (failing within
// PRESENCE_CONNECT_TIMEOUT) and closes them in OnStop.
var presenceModule = fx.Module("presence",
	fx.Provide(newRedisClient, newBackend),
)

// expirySource is the expiry fast path as the worker and the metrics use
// it (presence.ExpiryListener, presence.ClusterExpiry).
type expirySource interface {
	worker.ExpirySource
	Reconnects() int64
	Dropped() int64
}

// backend is the presence store as the worker and the query service use
// it, whatever the Redis topology.
type backend struct {
	store  worker.Store
	parts  func(consumer string) []worker.Partition
	query  query.Store
	expiry expirySource
	// mirrorFailures counts failed writes of the seed's keys on a cluster
	// (nil elsewhere: the scripts write them).
	mirrorFailures func() int64
}

// newBackend builds the backend for cfg's topology on rdb. The store's
// OnStart hook fails start-up unless Redis takes writes (a master; on a
// cluster every master, with this replica's partition count).
func newBackend(lc fx.Lifecycle, rdb redis.UniversalClient, cfg config.Config, m *metrics.Metrics, log *slog.Logger) (*backend, error) {
	opts := presence.Options{Prefix: cfg.KeyPrefix, TTL: cfg.TTL, OutageThreshold: cfg.OutageThreshold, Shards: cfg.Shards, OutboxRetention: cfg.OutboxRetention,
		OfflineGrace: cfg.OfflineGrace, GatewayLease: cfg.GatewayLease, MaxConnections: cfg.MaxConnectionsPerUser}
	writable := func(f func(context.Context) error) {
		lc.Append(fx.Hook{OnStart: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
			defer cancel()
			return f(ctx)
		}})
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		c := presence.NewCluster(cc, opts, cfg.RedisClusterPartitions, log.With("component", "presence"))
		writable(c.Writable)
		exp, err := newClusterExpiry(lc, cc, cfg, log)
		if err != nil {
			return nil, err
		}
		if cfg.QueryView {
			log.With("component", "presence").Info("the query view is not used on a Redis Cluster: queries read Redis")
		}
		return &backend{store: c, query: c, expiry: exp, mirrorFailures: c.MirrorFailures, parts: func(consumer string) []worker.Partition {
			obs := c.Outboxes(consumer)
			parts := make([]worker.Partition, len(obs))
			for i, o := range obs {
				parts[i] = worker.Partition{Outbox: o, Loss: c.Partitions()[i]}
			}
			return parts
		}}, nil
	}
	s := presence.NewStore(rdb, opts)
	writable(s.Writable)
	exp, err := newExpiryListener(lc, cfg, log)
	if err != nil {
		return nil, err
	}
	var qs query.Store = s
	if cfg.QueryView {
		qs = newView(lc, s, m, log)
	}
	return &backend{store: s, query: qs, expiry: exp, parts: func(consumer string) []worker.Partition {
		return []worker.Partition{{Outbox: s.Outbox(consumer), Loss: s}}
	}}, nil
}

// newRedisClient returns the main Redis client for cfg (a
// *redis.ClusterClient on a cluster) and ties it to lc.
func newRedisClient(lc fx.Lifecycle, cfg config.Config, m *metrics.Metrics, log *slog.Logger) (redis.UniversalClient, error) {
	var rdb redis.UniversalClient
	var err error
	if cfg.Cluster() {
		rdb, err = NewRedisClusterClient(cfg, "presenced")
	} else {
		rdb, err = NewRedisClient(cfg, "presenced")
	}
	if err != nil {
		return nil, err
	}
	rdb.AddHook(m.RedisHook())
	lc.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
			defer cancel()
			if err := rdb.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("connect to redis %s: %w", cfg.RedisTarget(), err)
			}
			log.With("component", "presence").Info("redis connected", "redis", cfg.RedisTarget(), "db", cfg.RedisDB())
			return nil
		},
		OnStop: func(context.Context) error { return rdb.Close() },
	})
	return rdb, nil
}

// newView returns the query View of store, built and followed from start
// to stop.
func newView(lc fx.Lifecycle, store *presence.Store, m *metrics.Metrics, log *slog.Logger) *presence.View {
	v := presence.NewView(store, log.With("component", "view"))
	m.ObserveView(metrics.ViewSources{
		Users:     func() int64 { return int64(v.Len()) },
		FromView:  func() int64 { return v.Stats().FromView },
		FromRedis: func() int64 { return v.Stats().FromRedis },
		Builds:    func() int64 { return v.Stats().Builds },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			go func() {
				defer close(done)
				v.Run(ctx)
			}()
			return nil
		},
		OnStop: func(stop context.Context) error {
			cancel()
			select {
			case <-done:
				return nil
			case <-stop.Done():
				return stop.Err()
			}
		},
	})
	return v
}

// newExpiryListener returns the listener on its own Redis client (same
// settings as the main client, as the seed's duplicate(); with Sentinel a
// failover client of its own, and the sentinels asked for the master, so
// that its subscription follows the master too), closed on stop. The
// listener runs when the worker starts it.
func newExpiryListener(lc fx.Lifecycle, cfg config.Config, log *slog.Logger) (*presence.ExpiryListener, error) {
	sub, err := NewRedisClient(cfg, "presenced-expiry")
	if err != nil {
		return nil, err
	}
	opts := presence.ExpiryOptions{
		DB:         cfg.RedisDB(),
		UserPrefix: presence.NewKeys(cfg.KeyPrefix).UserPrefix(),
		Logger:     log.With("component", "expiry"),
	}
	closeAll := sub.Close
	if cfg.Sentinel() {
		sm, err := NewSentinelMaster(cfg)
		if err != nil {
			_ = sub.Close()
			return nil, err
		}
		opts.MasterAddr = sm.Addr
		closeAll = func() error { return errors.Join(sub.Close(), sm.Close()) }
	}
	lc.Append(fx.Hook{OnStop: func(context.Context) error { return closeAll() }})
	return presence.NewExpiryListener(sub, opts), nil
}

// newClusterExpiry returns the cluster's expiry fast path: a listener on
// every master, each on a client of its own with the cluster's settings,
// closed when it leaves its node.
func newClusterExpiry(lc fx.Lifecycle, rdb *redis.ClusterClient, cfg config.Config, log *slog.Logger) (*presence.ClusterExpiry, error) {
	co, err := RedisClusterOptions(cfg)
	if err != nil {
		return nil, err
	}
	node := func(addr string) *redis.Client {
		return redis.NewClient(&redis.Options{
			Addr: addr, ClientName: "presenced-expiry", Username: co.Username, Password: co.Password, TLSConfig: co.TLSConfig,
			DialTimeout: cfg.ConnectTimeout, DisableIdentity: true,
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		})
	}
	return presence.NewClusterExpiry(rdb, node, presence.ExpiryOptions{
		KeyID:  presence.ClusterKeyID(cfg.KeyPrefix),
		Logger: log.With("component", "expiry"),
	}), nil
}

// NewRedisClusterClient returns a new client of cfg's Redis Cluster, named
// name, each dial bounded by PRESENCE_CONNECT_TIMEOUT; the caller closes
// it. It follows the cluster's topology (MOVED, ASK, failovers).
func NewRedisClusterClient(cfg config.Config, name string) (*redis.ClusterClient, error) {
	co, err := RedisClusterOptions(cfg)
	if err != nil {
		return nil, err
	}
	co.DialTimeout, co.ClientName = cfg.ConnectTimeout, name
	// Each partition's relay holds a connection to its master in a
	// blocking read; the pool of a node must hold them all (a node may
	// serve every partition after failovers) beside the default's share.
	// So may, at once, the sweep, lapse and re-announce steps, which run
	// every partition concurrently.
	co.PoolSize = 3*cfg.RedisClusterPartitions + 10*runtime.GOMAXPROCS(0)
	return redis.NewClusterClient(co), nil
}

// ClusterStateReload is how often a cluster client reloads the slot map
// (CLUSTER SLOTS). go-redis reloads it on MOVED, but not when a master
// dies: until the next reload, commands for its slots keep going to the
// dead address after its replica has taken over. Its default is a minute.
const ClusterStateReload = time.Second

// RedisClusterOptions returns fresh cluster client options for cfg's
// REDIS_CLUSTER_ADDRS: the seed nodes, REDIS_USERNAME and REDIS_PASSWORD,
// and with REDIS_CLUSTER_TLS, TLS with the REDIS_TLS_* files and the
// dialed host as the server name. It fails when cfg does not use a
// cluster.
func RedisClusterOptions(cfg config.Config) (*redis.ClusterOptions, error) {
	if !cfg.Cluster() {
		return nil, errors.New("REDIS_CLUSTER_ADDRS is not set")
	}
	co := &redis.ClusterOptions{
		Addrs:                      cfg.ClusterAddrs(),
		ClusterStateReloadInterval: ClusterStateReload,
		// The calls that run on every partition are bounded per partition
		// (presence.PartitionTimeout), so that a hung master fails its own
		// partitions' calls only: go-redis applies a context's deadline to
		// the socket only with this on.
		ContextTimeoutEnabled:    true,
		Username:                 cfg.RedisUsername,
		Password:                 cfg.RedisPassword,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	tc, err := switchedTLS(cfg, cfg.RedisClusterTLS, "REDIS_CLUSTER_TLS")
	if err != nil {
		return nil, err
	}
	co.TLSConfig = tc
	return co, nil
}

// switchedTLS is the TLS configuration of a topology without a URL, whose
// TLS is turned on by a switch (on, named setting): with it on, TLS 1.2 or
// later with the REDIS_TLS_* files when set; nil with it off, and an error
// when the files are set but the switch is off (they would silently not
// be used).
func switchedTLS(cfg config.Config, on bool, setting string) (*tls.Config, error) {
	tc, err := cfg.RedisTLS()
	if err != nil {
		return nil, err
	}
	switch {
	case tc != nil && !on:
		return nil, fmt.Errorf("REDIS_TLS_* files are set but %s is off: turn it on for TLS", setting)
	case on && tc == nil:
		return &tls.Config{MinVersion: tls.VersionTLS12}, nil
	}
	return tc, nil
}

// SentinelMaster asks the sentinels of a Sentinel configuration for the
// master's address.
type SentinelMaster struct {
	name    string
	addrs   []string
	clients []*redis.SentinelClient
	timeout time.Duration
	next    atomic.Int32 // the sentinel to ask first: the last that answered
}

// NewSentinelMaster returns a SentinelMaster of cfg's sentinels (with
// REDIS_SENTINEL_PASSWORD and REDIS_SENTINEL_TLS, as the failover client
// reaches them), each question bounded by PRESENCE_CONNECT_TIMEOUT. It does
// no I/O until Addr; Close closes its connections.
func NewSentinelMaster(cfg config.Config) (*SentinelMaster, error) {
	fo, err := RedisFailoverOptions(cfg)
	if err != nil {
		return nil, err
	}
	sm := &SentinelMaster{name: fo.MasterName, addrs: fo.SentinelAddrs, timeout: cfg.ConnectTimeout}
	for _, a := range fo.SentinelAddrs {
		sm.clients = append(sm.clients, redis.NewSentinelClient(SentinelOptions(cfg, fo, a, "presenced-expiry")))
	}
	return sm, nil
}

// SentinelOptions returns the options of a client of the sentinel at addr
// of fo (RedisFailoverOptions), named name: the sentinels' user, password
// and TLS, one connection, each dial bounded by PRESENCE_CONNECT_TIMEOUT, no
// retries, and a context's deadline bounding its replies.
func SentinelOptions(cfg config.Config, fo *redis.FailoverOptions, addr, name string) *redis.Options {
	return &redis.Options{
		Addr:                     addr,
		ClientName:               name,
		Username:                 fo.SentinelUsername,
		Password:                 fo.SentinelPassword,
		TLSConfig:                fo.TLSConfig,
		DialTimeout:              cfg.ConnectTimeout,
		MaxRetries:               -1,
		PoolSize:                 1,
		ContextTimeoutEnabled:    true,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// Addr returns the address (host:port) of the master as the first sentinel
// that answers names it, starting with the one that answered last.
func (sm *SentinelMaster) Addr(ctx context.Context) (string, error) {
	var errs []error
	first := int(sm.next.Load())
	for i := range sm.clients {
		k := (first + i) % len(sm.clients)
		qctx, cancel := context.WithTimeout(ctx, sm.timeout)
		a, err := sm.clients[k].GetMasterAddrByName(qctx, sm.name).Result()
		cancel()
		if err == nil && len(a) == 2 {
			sm.next.Store(int32(k))
			return net.JoinHostPort(a[0], a[1]), nil
		}
		if err == nil {
			err = fmt.Errorf("unexpected reply %q", a)
		}
		errs = append(errs, fmt.Errorf("sentinel %s: %w", sm.addrs[k], err))
		if ctx.Err() != nil {
			break
		}
	}
	return "", fmt.Errorf("no sentinel names master %q: %w", sm.name, errors.Join(errs...))
}

// Close closes the connections to the sentinels.
func (sm *SentinelMaster) Close() error {
	var errs []error
	for _, c := range sm.clients {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// NewRedisClient returns a new client of cfg's Redis, named name (CLIENT
// SETNAME), each dial bounded by PRESENCE_CONNECT_TIMEOUT; the caller
// closes it. For REDIS_URL it is a client of that server. With Sentinel it
// is a failover client (redis.NewFailoverClient, still a *redis.Client):
// every new connection asks the sentinels for the master's address, and
// when the sentinels announce a new master (+switch-master) the client
// closes its idle connections to any other address. A connection to a
// master that died or was demoted fails, and the next one goes to the
// master the sentinels name; a subscription (PSUBSCRIBE) reconnects the
// same way when its connection fails, but is not closed by the
// announcement (the expiry listener checks its server itself, see
// presence.ExpiryOptions.MasterAddr).
func NewRedisClient(cfg config.Config, name string) (*redis.Client, error) {
	if cfg.Sentinel() {
		fo, err := RedisFailoverOptions(cfg)
		if err != nil {
			return nil, err
		}
		fo.DialTimeout, fo.ClientName = cfg.ConnectTimeout, name
		return redis.NewFailoverClient(fo), nil
	}
	opts, err := RedisOptions(cfg)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout, opts.ClientName = cfg.ConnectTimeout, name
	return redis.NewClient(opts), nil
}

// RedisFailoverOptions returns fresh failover client options for cfg's
// Sentinel settings: the sentinels of REDIS_SENTINEL_ADDRS, authenticated
// with REDIS_SENTINEL_PASSWORD, the master named REDIS_SENTINEL_MASTER,
// and the servers' user, password, database and TLS of RedisOptions (TLS,
// with REDIS_SENTINEL_TLS, to the sentinels as well: go-redis has one TLS
// configuration for both). It fails when cfg does not use Sentinel.
func RedisFailoverOptions(cfg config.Config) (*redis.FailoverOptions, error) {
	if !cfg.Sentinel() {
		return nil, errors.New("REDIS_SENTINEL_ADDRS is not set")
	}
	o, err := RedisOptions(cfg)
	if err != nil {
		return nil, err
	}
	return &redis.FailoverOptions{
		MasterName:       cfg.RedisSentinelMaster,
		SentinelAddrs:    cfg.SentinelAddrs(),
		SentinelPassword: cfg.RedisSentinelPassword,
		Username:         o.Username,
		Password:         o.Password,
		DB:               o.DB,
		TLSConfig:        o.TLSConfig,
		DisableIdentity:  o.DisableIdentity,
	}, nil
}

// RedisOptions returns fresh client options for cfg: the address, database
// and parameters of REDIS_URL; the user and password of the URL unless
// REDIS_USERNAME or REDIS_PASSWORD replace them; for a rediss:// URL, TLS
// (1.2 or later, the URL's host as server name) trusting REDIS_TLS_CA_FILE
// instead of the system roots when set, and presenting the client
// certificate REDIS_TLS_CERT_FILE/REDIS_TLS_KEY_FILE when set. It reads the
// files now. Errors name the variable and never contain the password.
//
// The connection handshake is kept to HELLO and CLIENT SETNAME: go-redis's
// CLIENT SETINFO (library identity) and CLIENT MAINT_NOTIFICATIONS are
// turned off, so the worker's Redis ACL needs no other CLIENT subcommand and
// is the same on Redis 7.0 (which has neither) and later versions; see
// docs/security.md.
//
// With Sentinel the options are those of a connection to a server the
// sentinels name, with Addr empty (the caller fills in the master's
// address): REDIS_SENTINEL_DB, REDIS_USERNAME, REDIS_PASSWORD and, with
// REDIS_SENTINEL_TLS, TLS with the files above and the dialed host as the
// server name.
func RedisOptions(cfg config.Config) (*redis.Options, error) {
	if cfg.Sentinel() {
		return sentinelServerOptions(cfg)
	}
	// url.Parse errors quote the whole URL, password included.
	if _, err := url.Parse(cfg.RedisURL); err != nil {
		return nil, fmt.Errorf("invalid REDIS_URL %q: not a URL", config.RedactURL(cfg.RedisURL))
	}
	opts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("invalid REDIS_URL %q: %w", config.RedactURL(cfg.RedisURL), err)
	}
	if cfg.RedisUsername != "" {
		opts.Username = cfg.RedisUsername
	}
	if cfg.RedisPassword != "" {
		opts.Password = cfg.RedisPassword
	}
	tc, err := cfg.RedisTLS()
	if err != nil {
		return nil, err
	}
	switch {
	case opts.TLSConfig != nil && opts.TLSConfig.InsecureSkipVerify:
		return nil, fmt.Errorf("invalid REDIS_URL %q: skip_verify is not supported: trust a private CA with REDIS_TLS_CA_FILE", config.RedactURL(cfg.RedisURL))
	case tc != nil && opts.TLSConfig == nil:
		return nil, errors.New("REDIS_TLS_* files are set but REDIS_URL is not rediss://: use rediss:// for TLS")
	case tc != nil:
		opts.TLSConfig.RootCAs = tc.RootCAs
		opts.TLSConfig.Certificates = tc.Certificates
	}
	opts.DisableIdentity = true
	opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return opts, nil
}

// sentinelServerOptions is RedisOptions for a server of a Sentinel set.
func sentinelServerOptions(cfg config.Config) (*redis.Options, error) {
	opts := &redis.Options{
		DB:                       cfg.RedisSentinelDB,
		Username:                 cfg.RedisUsername,
		Password:                 cfg.RedisPassword,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	tc, err := switchedTLS(cfg, cfg.RedisSentinelTLS, "REDIS_SENTINEL_TLS")
	if err != nil {
		return nil, err
	}
	opts.TLSConfig = tc
	return opts, nil
}
