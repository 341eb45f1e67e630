package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go/micro"
	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/presence"
)

// Module provides the *Bus and runs the query service. It owns the NATS
// connection: connects in OnStart (failing within PRESENCE_CONNECT_TIMEOUT)
// and drains it in OnStop; the query service starts after the connection
// and stops before it drains.
var Module = fx.Module("bus",
	fx.Provide(NewFromConfig),
	fx.Invoke(StartQueryFromConfig),
)

// NewFromConfig returns a Bus for cfg (credentials and TLS included) tied to lc.
func NewFromConfig(lc fx.Lifecycle, cfg config.Config, log *slog.Logger) (*Bus, error) {
	extra, err := NATSOptions(cfg)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	b := New(Options{
		URL:            cfg.NATSURL,
		Name:           "presenced@" + host,
		ConnectTimeout: cfg.ConnectTimeout,
		Extra:          extra,
		Stream:         StreamOptions{Name: cfg.Stream, Subjects: SubjectsFromConfig(cfg), Duplicates: 2 * cfg.OutboxClaimAfter},
		Logger:         log.With("component", "bus"),
	})
	lc.Append(fx.Hook{OnStart: func(ctx context.Context) error { return StreamSettingError(b.Start(ctx), cfg) }, OnStop: b.Stop})
	return b, nil
}

// StreamSettingError adds to an error about the stream the settings that
// decide what the stream must be; other errors it returns as they are.
func StreamSettingError(err error, cfg config.Config) error {
	switch {
	case errors.Is(err, ErrStreamDuplicates):
		return fmt.Errorf("PRESENCE_STREAM: %w: the duplicate window must be at least twice PRESENCE_OUTBOX_CLAIM_AFTER (%s); raise it (nats stream edit %s --dupe-window) or lower PRESENCE_OUTBOX_CLAIM_AFTER",
			err, cfg.OutboxClaimAfter, cfg.Stream)
	case errors.Is(err, ErrStreamSubjects):
		return fmt.Errorf("PRESENCE_STREAM: %w (PRESENCE_SUBJECT_PREFIX %q)", err, cfg.SubjectPrefix)
	case errors.Is(err, ErrStreamConfig):
		return fmt.Errorf("PRESENCE_STREAM: %w", err)
	}
	return err
}

// ServiceVersion is the semantic version the query service reports
// (micro's $SRV.INFO); the composition root supplies the build's.
type ServiceVersion string

// QueryDeps are StartQueryFromConfig's dependencies.
type QueryDeps struct {
	fx.In
	Lifecycle fx.Lifecycle
	Config    config.Config
	Bus       *Bus
	Store     *presence.Store
	View      *presence.View
	Logger    *slog.Logger
	Version   ServiceVersion `optional:"true"`
}

// StartQueryFromConfig runs the query service (presence.query.*) on b for
// the lifetime of the application, answering online queries from view when
// PRESENCE_QUERY_VIEW is on.
func StartQueryFromConfig(d QueryDeps) {
	lc, cfg, b, store, view, log := d.Lifecycle, d.Config, d.Bus, d.Store, d.View, d.Logger
	var svc micro.Service
	var qs QueryStore = store
	if cfg.QueryView {
		qs = view
	}
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			var err error
			svc, err = StartQueryService(b.Conn(), qs, QueryOptions{
				Subjects: SubjectsFromConfig(cfg),
				Queue:    cfg.QueueGroup,
				MaxIDs:   cfg.MaxBatch,
				Version:  string(d.Version),
				Logger:   log.With("component", "query"),
			})
			return err
		},
		OnStop: func(context.Context) error {
			if svc == nil {
				return nil
			}
			return svc.Stop()
		},
	})
}

// SubjectsFromConfig returns the subjects under cfg's prefix.
func SubjectsFromConfig(cfg config.Config) contract.Subjects {
	return contract.Subjects{Prefix: cfg.SubjectPrefix}
}
