package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"strings"
)

// The checks and loaders of the credential and TLS settings. Errors name the
// variable (and the flag when the value came from one) and the file, never a
// secret or a file's contents.

// NATSTLS returns the TLS client configuration built from NATSTLSCAFile,
// NATSTLSCertFile and NATSTLSKeyFile, or nil when none is set. It reads the
// files on every call; errors name the variable. The caller may modify the
// result.
func (c Config) NATSTLS() (*tls.Config, error) { return buildTLS(envName, natsTLS(c)) }

// RedisTLS returns the TLS client configuration built from RedisTLSCAFile,
// RedisTLSCertFile and RedisTLSKeyFile, or nil when none is set. It reads
// the files on every call; errors name the variable. The caller may modify
// the result.
func (c Config) RedisTLS() (*tls.Config, error) { return buildTLS(envName, redisTLS(c)) }

func envName(env string) string { return env }

// tlsFiles are the three files of one TLS client configuration and the
// variables that name them.
type tlsFiles struct {
	ca, cert, key          string
	caEnv, certEnv, keyEnv string
}

func natsTLS(c Config) tlsFiles {
	return tlsFiles{c.NATSTLSCAFile, c.NATSTLSCertFile, c.NATSTLSKeyFile, "NATS_TLS_CA_FILE", "NATS_TLS_CERT_FILE", "NATS_TLS_KEY_FILE"}
}

func redisTLS(c Config) tlsFiles {
	return tlsFiles{c.RedisTLSCAFile, c.RedisTLSCertFile, c.RedisTLSKeyFile, "REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"}
}

func buildTLS(name func(string) string, f tlsFiles) (*tls.Config, error) {
	if f.ca == "" && f.cert == "" && f.key == "" {
		return nil, nil
	}
	roots, err := loadCAs(name(f.caEnv), f.ca)
	if err != nil {
		return nil, err
	}
	pair, err := loadKeyPair(name, f)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	if pair != nil {
		tc.Certificates = []tls.Certificate{*pair}
	}
	return tc, nil
}

// loadCAs reads a PEM bundle of CA certificates; nil for an empty path.
func loadCAs(name, path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	b, err := readFile(name, path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("invalid %s %q: no PEM certificate in it", name, path)
	}
	return pool, nil
}

// loadKeyPair reads the client certificate and key of f; nil when neither
// is set, an error when only one is.
func loadKeyPair(name func(string) string, f tlsFiles) (*tls.Certificate, error) {
	if err := checkPair(name, f.certEnv, f.cert, f.keyEnv, f.key); err != nil {
		return nil, err
	}
	if f.cert == "" {
		return nil, nil
	}
	certPEM, err := readFile(name(f.certEnv), f.cert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(name(f.keyEnv), f.key)
	if err != nil {
		return nil, err
	}
	// crypto/tls errors describe the problem without quoting the key.
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("invalid %s %q and %s %q: %w", name(f.certEnv), f.cert, name(f.keyEnv), f.key, err)
	}
	return &pair, nil
}

// checkPair fails when exactly one of two settings that go together is set.
func checkPair(name func(string) string, envA, a, envB, b string) error {
	switch {
	case a != "" && b == "":
		return fmt.Errorf("%s is set without %s: set both or neither", name(envA), name(envB))
	case a == "" && b != "":
		return fmt.Errorf("%s is set without %s: set both or neither", name(envB), name(envA))
	}
	return nil
}

// checkReadable fails unless path is empty or a file this process can read.
func checkReadable(name, path string) error {
	if path == "" {
		return nil
	}
	f, err := openFile(name, path)
	if err != nil {
		return err
	}
	return f.Close()
}

func openFile(name, path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("invalid %s %q: %w", name, path, pathErr(err))
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("invalid %s %q: %w", name, path, pathErr(err))
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("invalid %s %q: is a directory", name, path)
	}
	return f, nil
}

func readFile(name, path string) ([]byte, error) {
	f, err := openFile(name, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("invalid %s %q: %w", name, path, pathErr(err))
	}
	return b, nil
}

// pathErr drops the operation and path an *fs.PathError repeats ("open /x:
// no such file or directory"): the message already names the file.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkNATSAuth fails when more than one NATS authentication method is set.
func checkNATSAuth(c Config, name func(string) string) error {
	var set []string
	if natsURLHasCredentials(c.NATSURL) {
		set = append(set, "credentials in "+name("NATS_URL"))
	}
	if c.NATSUser != "" || c.NATSPassword != "" {
		set = append(set, name("NATS_USER"))
	}
	if c.NATSToken != "" {
		set = append(set, name("NATS_TOKEN"))
	}
	if c.NATSNkeySeedFile != "" {
		set = append(set, name("NATS_NKEY_SEED_FILE"))
	}
	if c.NATSCredsFile != "" {
		set = append(set, name("NATS_CREDS_FILE"))
	}
	return exclusive(set, "set one NATS authentication method")
}

// exclusive fails, naming the settings and saying what to do, when more
// than one of set (the names of the settings given) is set.
func exclusive(set []string, do string) error {
	if len(set) < 2 {
		return nil
	}
	list := strings.Join(set[:len(set)-1], ", ") + " and " + set[len(set)-1]
	return fmt.Errorf("%s are mutually exclusive: %s", list, do)
}

// natsURLHasCredentials reports whether an entry of the NATS URL list
// carries a user, password or token.
func natsURLHasCredentials(list string) bool {
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			return true
		}
	}
	return false
}

// checkRediss fails when a TLS file is set for a plain redis:// URL, or
// for Sentinel without REDIS_SENTINEL_TLS or a cluster without
// REDIS_CLUSTER_TLS, where it would silently not be used.
func checkRediss(c Config, name func(string) string, env, v string) error {
	switch {
	case v == "":
		return nil
	case c.Sentinel() && !c.RedisSentinelTLS:
		return fmt.Errorf("%s is set but %s is off: turn it on for TLS", name(env), name("REDIS_SENTINEL_TLS"))
	case c.Cluster() && !c.RedisClusterTLS:
		return fmt.Errorf("%s is set but %s is off: turn it on for TLS", name(env), name("REDIS_CLUSTER_TLS"))
	case c.Sentinel() || c.Cluster() || strings.HasPrefix(c.RedisURL, "rediss://"):
		return nil
	}
	return fmt.Errorf("%s is set but %s is not rediss://: use rediss:// for TLS", name(env), name("REDIS_URL"))
}

func maskSecret(s string) string {
	if s == "" {
		return ""
	}
	return mask
}
