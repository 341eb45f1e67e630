package presence

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/metrics"
)

// Module provides the Redis client, the Store and the ExpiryListener. It
// owns both Redis connections: it pings in OnStart (failing within
// PRESENCE_CONNECT_TIMEOUT) and closes them in OnStop.
var Module = fx.Module("presence",
	fx.Provide(NewClient, NewStoreFromConfig, NewExpiryListenerFromConfig),
)

// NewClient returns the main Redis client for cfg and ties it to lc.
func NewClient(lc fx.Lifecycle, cfg config.Config, m *metrics.Metrics, log *slog.Logger) (*redis.Client, error) {
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

// NewStoreFromConfig returns the Store on rdb with cfg's settings.
func NewStoreFromConfig(lc fx.Lifecycle, rdb *redis.Client, cfg config.Config) *Store {
	s := NewStore(rdb, Options{Prefix: cfg.KeyPrefix, TTL: cfg.TTL, OutageThreshold: cfg.OutageThreshold, Shards: cfg.Shards})
	lc.Append(fx.Hook{OnStart: func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
		return s.Ping(ctx)
	}})
	return s
}

// NewExpiryListenerFromConfig returns the listener on its own Redis
// connection (same URL as the main client, as the seed's duplicate()),
// closed on stop. The listener runs when the worker starts it.
func NewExpiryListenerFromConfig(lc fx.Lifecycle, cfg config.Config, log *slog.Logger) (*ExpiryListener, error) {
	opts, err := RedisOptions(cfg)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout = cfg.ConnectTimeout
	opts.ClientName = "presenced-expiry"
	sub := redis.NewClient(opts)
	lc.Append(fx.Hook{OnStop: func(context.Context) error { return sub.Close() }})
	return NewExpiryListener(sub, ExpiryOptions{
		DB:         opts.DB,
		UserPrefix: NewKeys(cfg.KeyPrefix).UserPrefix(),
		Logger:     log.With("component", "expiry"),
	}), nil
}
