package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nkeys"
	"go.uber.org/fx"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/query"
)

// busModule provides the *Bus and runs the query service. It owns the NATS
// connection: connects in OnStart (failing within PRESENCE_CONNECT_TIMEOUT)
// and drains it in OnStop; the query service starts after the connection
// and stops before it drains.
var busModule = fx.Module("bus",
	fx.Provide(newBus),
	fx.Invoke(startQuery),
)

// newBus returns a Bus for cfg (credentials and TLS included) tied to lc.
func newBus(lc fx.Lifecycle, cfg config.Config, log *slog.Logger) (*bus.Bus, error) {
	extra, err := NATSOptions(cfg)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	b := bus.New(bus.Options{
		URL:            cfg.NATSURL,
		Name:           "presenced@" + host,
		ConnectTimeout: cfg.ConnectTimeout,
		Extra:          extra,
		Stream:         bus.StreamOptions{Name: cfg.Stream, Subjects: SubjectsFromConfig(cfg), Duplicates: 2 * cfg.OutboxClaimAfter},
		Logger:         log.With("component", "bus"),
	})
	lc.Append(fx.Hook{OnStart: func(ctx context.Context) error { return StreamSettingError(b.Start(ctx), cfg) }, OnStop: b.Stop})
	return b, nil
}

// StreamSettingError adds to an error about the stream the settings that
// decide what the stream must be; other errors it returns as they are.
func StreamSettingError(err error, cfg config.Config) error {
	switch {
	case errors.Is(err, bus.ErrStreamDuplicates):
		return fmt.Errorf("PRESENCE_STREAM: %w: the duplicate window must be at least twice PRESENCE_OUTBOX_CLAIM_AFTER (%s); raise it (nats stream edit %s --dupe-window) or lower PRESENCE_OUTBOX_CLAIM_AFTER",
			err, cfg.OutboxClaimAfter, cfg.Stream)
	case errors.Is(err, bus.ErrStreamSubjects):
		return fmt.Errorf("PRESENCE_STREAM: %w (PRESENCE_SUBJECT_PREFIX %q)", err, cfg.SubjectPrefix)
	case errors.Is(err, bus.ErrStreamConfig):
		return fmt.Errorf("PRESENCE_STREAM: %w", err)
	}
	return err
}

// ServiceVersion is the semantic version the query service reports
// (micro's $SRV.INFO); the composition root supplies the build's.
type ServiceVersion string

// queryDeps are startQuery's dependencies.
type queryDeps struct {
	fx.In
	Lifecycle fx.Lifecycle
	Config    config.Config
	Bus       *bus.Bus
	Backend   *backend
	Logger    *slog.Logger
	Version   ServiceVersion `optional:"true"`
}

// startQuery runs the query service (presence.query.*) on b for
// the lifetime of the application, answering online queries from view when
// PRESENCE_QUERY_VIEW is on.
func startQuery(d queryDeps) {
	lc, cfg, b, log := d.Lifecycle, d.Config, d.Bus, d.Logger
	var svc micro.Service
	qs := d.Backend.query
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			var err error
			svc, err = query.Start(b.Conn(), qs, query.Options{
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

// NATSOptions returns the nats options that authenticate and secure the
// connection as cfg says, for Options.Extra: a user and password
// (NATS_USER, NATS_PASSWORD), a token (NATS_TOKEN), an nkey seed file
// (NATS_NKEY_SEED_FILE) or a credentials file (NATS_CREDS_FILE), and TLS
// from the NATS_TLS_* files. It returns no options when none is set, so the
// URL's own credentials, if any, apply.
//
// cfg must be valid (config.Load or Validate): with several authentication
// methods set, the first in the order above wins. NATSOptions reads every
// file now, so a file that is not what its variable says fails start-up
// with an error naming the variable; the credentials file is read again on
// every reconnect, so a rotated file takes effect then. Errors never contain
// a password, token, seed or key.
func NATSOptions(cfg config.Config) ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case cfg.NATSUser != "":
		opts = append(opts, nats.UserInfo(cfg.NATSUser, cfg.NATSPassword))
	case cfg.NATSToken != "":
		opts = append(opts, nats.Token(cfg.NATSToken))
	case cfg.NATSNkeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NATSNkeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("invalid NATS_NKEY_SEED_FILE %q: %w", cfg.NATSNkeySeedFile, err)
		}
		opts = append(opts, o)
	case cfg.NATSCredsFile != "":
		if err := checkCredsFile(cfg.NATSCredsFile); err != nil {
			return nil, fmt.Errorf("invalid NATS_CREDS_FILE %q: %w", cfg.NATSCredsFile, err)
		}
		opts = append(opts, nats.UserCredentials(cfg.NATSCredsFile))
	}
	tc, err := cfg.NATSTLS()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		// nats.go sets ServerName from the URL being dialled.
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

// checkCredsFile checks that path holds a user JWT and a user nkey seed, as
// nats.UserCredentials reads them at connect time, so that a wrong file
// fails at start rather than as an authorization error on every reconnect.
func checkCredsFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	defer clear(b)
	tok, err := nkeys.ParseDecoratedJWT(b)
	if err != nil {
		return fmt.Errorf("no user JWT: %w", err)
	}
	if _, err := jwt.DecodeUserClaims(tok); err != nil {
		return fmt.Errorf("no user JWT: %w", err)
	}
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return fmt.Errorf("no user nkey seed: %w", err)
	}
	kp.Wipe()
	return nil
}
