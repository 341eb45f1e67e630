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

// Module provides the Redis client, the Store, the query View and the
// ExpiryListener. It owns both Redis connections: it pings in OnStart
// (failing within PRESENCE_CONNECT_TIMEOUT) and closes them in OnStop.
var Module = fx.Module("presence",
	fx.Provide(NewClient, NewStoreFromConfig, NewViewFromConfig, NewExpiryListenerFromConfig),
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
	s := NewStore(rdb, Options{Prefix: cfg.KeyPrefix, TTL: cfg.TTL, OutageThreshold: cfg.OutageThreshold, Shards: cfg.Shards, OutboxRetention: cfg.OutboxRetention})
	lc.Append(fx.Hook{OnStart: func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
		// A replica (or a demoted master) takes no writes: fail start-up.
		return s.Writable(ctx)
	}})
	return s
}

// NewViewFromConfig returns the query View of store; with
// PRESENCE_QUERY_VIEW on it is built and followed from start to stop.
func NewViewFromConfig(lc fx.Lifecycle, store *Store, cfg config.Config, m *metrics.Metrics, log *slog.Logger) *View {
	v := NewView(store, log.With("component", "view"))
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
