package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/metrics"
	"github.com/presenced/presenced/presence"
)

// presenceModule provides the Redis client, the Store, the query View and the
// ExpiryListener. It owns both Redis connections: it pings in OnStart
// (failing within PRESENCE_CONNECT_TIMEOUT) and closes them in OnStop.
var presenceModule = fx.Module("presence",
	fx.Provide(newRedisClient, newStore, newView, newExpiryListener),
)

// newRedisClient returns the main Redis client for cfg and ties it to lc.
func newRedisClient(lc fx.Lifecycle, cfg config.Config, m *metrics.Metrics, log *slog.Logger) (*redis.Client, error) {
	opts, err := RedisOptions(cfg)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout = cfg.ConnectTimeout
	opts.ClientName = "presenced"
	rdb := redis.NewClient(opts)
	rdb.AddHook(m.RedisHook())
	lc.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
			defer cancel()
			if err := rdb.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("connect to redis %s: %w", config.RedactURL(cfg.RedisURL), err)
			}
			log.With("component", "presence").Info("redis connected", "addr", opts.Addr, "db", opts.DB)
			return nil
		},
		OnStop: func(context.Context) error { return rdb.Close() },
	})
	return rdb, nil
}

// newStore returns the Store on rdb with cfg's settings.
func newStore(lc fx.Lifecycle, rdb *redis.Client, cfg config.Config) *presence.Store {
	s := presence.NewStore(rdb, presence.Options{Prefix: cfg.KeyPrefix, TTL: cfg.TTL, OutageThreshold: cfg.OutageThreshold, Shards: cfg.Shards, OutboxRetention: cfg.OutboxRetention,
		OfflineGrace: cfg.OfflineGrace, GatewayLease: cfg.GatewayLease, MaxConnections: cfg.MaxConnectionsPerUser})
	lc.Append(fx.Hook{OnStart: func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
		// A replica (or a demoted master) takes no writes: fail start-up.
		return s.Writable(ctx)
	}})
	return s
}

// newView returns the query View of store; with
// PRESENCE_QUERY_VIEW on it is built and followed from start to stop.
func newView(lc fx.Lifecycle, store *presence.Store, cfg config.Config, m *metrics.Metrics, log *slog.Logger) *presence.View {
	v := presence.NewView(store, log.With("component", "view"))
	if !cfg.QueryView {
		return v
	}
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

// newExpiryListener returns the listener on its own Redis
// connection (same URL as the main client, as the seed's duplicate()),
// closed on stop. The listener runs when the worker starts it.
func newExpiryListener(lc fx.Lifecycle, cfg config.Config, log *slog.Logger) (*presence.ExpiryListener, error) {
	opts, err := RedisOptions(cfg)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout = cfg.ConnectTimeout
	opts.ClientName = "presenced-expiry"
	sub := redis.NewClient(opts)
	lc.Append(fx.Hook{OnStop: func(context.Context) error { return sub.Close() }})
	return presence.NewExpiryListener(sub, presence.ExpiryOptions{
		DB:         opts.DB,
		UserPrefix: presence.NewKeys(cfg.KeyPrefix).UserPrefix(),
		Logger:     log.With("component", "expiry"),
	}), nil
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
func RedisOptions(cfg config.Config) (*redis.Options, error) {
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
