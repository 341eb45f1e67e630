package bus

import (
	"fmt"
	"os"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/presenced/presenced/config"
)

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
