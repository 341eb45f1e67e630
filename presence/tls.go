package presence

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/presenced/presenced/config"
)

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
