package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pemFiles writes a self-signed CA, a client certificate it signed and the
// client's key to dir, plus a second key that matches nothing, and returns
// their paths.
type pemFiles struct{ ca, cert, key, otherKey, garbage string }

func writePEMFiles(t *testing.T) pemFiles {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "presenced"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	f := pemFiles{
		ca: filepath.Join(dir, "ca.pem"), cert: filepath.Join(dir, "client.pem"), key: filepath.Join(dir, "client-key.pem"),
		otherKey: filepath.Join(dir, "other-key.pem"), garbage: filepath.Join(dir, "garbage.pem"),
	}
	writePEM(t, f.ca, "CERTIFICATE", caDER)
	writePEM(t, f.cert, "CERTIFICATE", der)
	writeKey(t, f.key, key)
	writeKey(t, f.otherKey, newKey(t))
	if err := os.WriteFile(f.garbage, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeKey(t *testing.T, path string, k *ecdsa.PrivateKey) {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "EC PRIVATE KEY", der)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// secret is the value every password and token takes in these tests; no
// error or log line may contain it.
const secret = "s3cr3t-Hunter2"

func TestLoadCredentialsAndTLS(t *testing.T) {
	f := writePEMFiles(t)
	dir := filepath.Dir(f.ca)
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		args    []string
		env     func(string) string
		want    func(c *Config)
		wantErr string
	}{
		// NATS authentication.
		{name: "nats user and password", env: env("NATS_USER", "worker", "NATS_PASSWORD", secret), want: func(c *Config) { c.NATSUser, c.NATSPassword = "worker", secret }},
		{name: "nats password flag", args: []string{"--nats-user=worker", "--nats-password=" + secret}, want: func(c *Config) { c.NATSUser, c.NATSPassword = "worker", secret }},
		{name: "nats user without password", env: env("NATS_USER", "worker"), wantErr: `NATS_USER is set without NATS_PASSWORD: set both or neither`},
		{name: "nats password without user", args: []string{"--nats-password", secret}, wantErr: `--nats-password (NATS_PASSWORD) is set without NATS_USER: set both or neither`},
		{name: "nats token", env: env("NATS_TOKEN", secret), want: func(c *Config) { c.NATSToken = secret }},
		{name: "nats token and user", env: env("NATS_TOKEN", secret, "NATS_USER", "u", "NATS_PASSWORD", secret), wantErr: `NATS_USER and NATS_TOKEN are mutually exclusive: set one NATS authentication method`},
		{name: "nats token and url credentials", env: env("NATS_TOKEN", secret, "NATS_URL", "nats://u:"+secret+"@h:4222"), wantErr: `credentials in NATS_URL and NATS_TOKEN are mutually exclusive: set one NATS authentication method`},
		{name: "nats url token and nkey", env: env("NATS_URL", "nats://h1:4222,"+secret+"@h2:4222", "NATS_NKEY_SEED_FILE", f.key), wantErr: `credentials in NATS_URL and NATS_NKEY_SEED_FILE are mutually exclusive: set one NATS authentication method`},
		{name: "nats nkey seed file", env: env("NATS_NKEY_SEED_FILE", f.key), want: func(c *Config) { c.NATSNkeySeedFile = f.key }},
		{name: "nats nkey seed file missing", env: env("NATS_NKEY_SEED_FILE", missing), wantErr: fmt.Sprintf(`invalid NATS_NKEY_SEED_FILE %q: no such file or directory`, missing)},
		{name: "nats creds file", args: []string{"--nats-creds-file", f.key}, want: func(c *Config) { c.NATSCredsFile = f.key }},
		{name: "nats creds file is a directory", args: []string{"--nats-creds-file", dir}, wantErr: fmt.Sprintf(`invalid --nats-creds-file (NATS_CREDS_FILE) %q: is a directory`, dir)},
		{name: "nats creds and nkey and token", args: []string{"--nats-creds-file", f.key}, env: env("NATS_NKEY_SEED_FILE", f.key, "NATS_TOKEN", secret),
			wantErr: `NATS_TOKEN, NATS_NKEY_SEED_FILE and --nats-creds-file (NATS_CREDS_FILE) are mutually exclusive: set one NATS authentication method`},

		// NATS TLS.
		{name: "nats tls", env: env("NATS_TLS_CA_FILE", f.ca, "NATS_TLS_CERT_FILE", f.cert, "NATS_TLS_KEY_FILE", f.key), want: func(c *Config) {
			c.NATSTLSCAFile, c.NATSTLSCertFile, c.NATSTLSKeyFile = f.ca, f.cert, f.key
		}},
		{name: "nats tls ca only", env: env("NATS_TLS_CA_FILE", f.ca), want: func(c *Config) { c.NATSTLSCAFile = f.ca }},
		{name: "nats tls ca not pem", env: env("NATS_TLS_CA_FILE", f.garbage), wantErr: fmt.Sprintf(`invalid NATS_TLS_CA_FILE %q: no PEM certificate in it`, f.garbage)},
		{name: "nats tls ca missing", args: []string{"--nats-tls-ca-file=" + missing}, wantErr: fmt.Sprintf(`invalid --nats-tls-ca-file (NATS_TLS_CA_FILE) %q: no such file or directory`, missing)},
		{name: "nats tls cert without key", env: env("NATS_TLS_CERT_FILE", f.cert), wantErr: `NATS_TLS_CERT_FILE is set without NATS_TLS_KEY_FILE: set both or neither`},
		{name: "nats tls key without cert", args: []string{"--nats-tls-key-file", f.key}, wantErr: `--nats-tls-key-file (NATS_TLS_KEY_FILE) is set without NATS_TLS_CERT_FILE: set both or neither`},
		{name: "nats tls cert missing", env: env("NATS_TLS_CERT_FILE", missing, "NATS_TLS_KEY_FILE", f.key), wantErr: fmt.Sprintf(`invalid NATS_TLS_CERT_FILE %q: no such file or directory`, missing)},
		{name: "nats tls key does not match", env: env("NATS_TLS_CERT_FILE", f.cert, "NATS_TLS_KEY_FILE", f.otherKey),
			wantErr: fmt.Sprintf(`invalid NATS_TLS_CERT_FILE %q and NATS_TLS_KEY_FILE %q: tls: private key does not match public key`, f.cert, f.otherKey)},

		// Redis credentials.
		{name: "redis username and password", env: env("REDIS_USERNAME", "presenced", "REDIS_PASSWORD", secret), want: func(c *Config) { c.RedisUsername, c.RedisPassword = "presenced", secret }},
		{name: "redis password alone", args: []string{"--redis-password", secret}, want: func(c *Config) { c.RedisPassword = secret }},
		{name: "redis username with url password", env: env("REDIS_USERNAME", "presenced", "REDIS_URL", "redis://:"+secret+"@h:6379/0"), want: func(c *Config) {
			c.RedisUsername, c.RedisURL = "presenced", "redis://:"+secret+"@h:6379/0"
		}},
		{name: "redis username without password", args: []string{"--redis-username=presenced"}, wantErr: `--redis-username (REDIS_USERNAME) is set without a password: set REDIS_PASSWORD or put the password in REDIS_URL`},
		{name: "redis url skip_verify", env: env("REDIS_URL", "rediss://u:"+secret+"@h:6380/0?skip_verify=true"), wantErr: `invalid REDIS_URL "rediss://u:xxxxx@h:6380/0?skip_verify=true": skip_verify is not supported: trust a private CA with REDIS_TLS_CA_FILE`},

		// Redis TLS.
		{name: "redis tls", env: env("REDIS_URL", "rediss://r:6380/0", "REDIS_TLS_CA_FILE", f.ca, "REDIS_TLS_CERT_FILE", f.cert, "REDIS_TLS_KEY_FILE", f.key), want: func(c *Config) {
			c.RedisURL, c.RedisTLSCAFile, c.RedisTLSCertFile, c.RedisTLSKeyFile = "rediss://r:6380/0", f.ca, f.cert, f.key
		}},
		{name: "redis tls needs rediss", env: env("REDIS_TLS_CA_FILE", f.ca), wantErr: `REDIS_TLS_CA_FILE is set but REDIS_URL is not rediss://: use rediss:// for TLS`},
		{name: "redis tls cert needs rediss", args: []string{"--redis-url=redis://r/0", "--redis-tls-cert-file", f.cert}, wantErr: `--redis-tls-cert-file (REDIS_TLS_CERT_FILE) is set but --redis-url (REDIS_URL) is not rediss://: use rediss:// for TLS`},
		{name: "redis tls with sentinel", env: env("REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m", "REDIS_SENTINEL_TLS", "true", "REDIS_TLS_CA_FILE", f.ca, "REDIS_TLS_CERT_FILE", f.cert, "REDIS_TLS_KEY_FILE", f.key), want: func(c *Config) {
			c.RedisSentinelAddrs, c.RedisSentinelMaster, c.RedisSentinelTLS, c.RedisTLSCAFile, c.RedisTLSCertFile, c.RedisTLSKeyFile = "s1:26379", "m", true, f.ca, f.cert, f.key
		}},
		{name: "redis tls files need sentinel tls", env: env("REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m", "REDIS_TLS_CA_FILE", f.ca), wantErr: `REDIS_TLS_CA_FILE is set but REDIS_SENTINEL_TLS is off: turn it on for TLS`},
		{name: "redis username with sentinel needs REDIS_PASSWORD", env: env("REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m", "REDIS_USERNAME", "presenced"), wantErr: `REDIS_USERNAME is set without REDIS_PASSWORD`},
		{name: "redis sentinel password", env: env("REDIS_SENTINEL_ADDRS", "s1:26379", "REDIS_SENTINEL_MASTER", "m", "REDIS_SENTINEL_PASSWORD", secret), want: func(c *Config) {
			c.RedisSentinelAddrs, c.RedisSentinelMaster, c.RedisSentinelPassword = "s1:26379", "m", secret
		}},
		{name: "redis sentinel password without sentinels", args: []string{"--redis-sentinel-password", secret}, wantErr: `--redis-sentinel-password (REDIS_SENTINEL_PASSWORD) is set without REDIS_SENTINEL_ADDRS`},
		{name: "redis tls ca not pem", env: env("REDIS_URL", "rediss://r/0", "REDIS_TLS_CA_FILE", f.key), wantErr: fmt.Sprintf(`invalid REDIS_TLS_CA_FILE %q: no PEM certificate in it`, f.key)},
		{name: "redis tls key without cert", env: env("REDIS_URL", "rediss://r/0", "REDIS_TLS_KEY_FILE", f.key), wantErr: `REDIS_TLS_KEY_FILE is set without REDIS_TLS_CERT_FILE: set both or neither`},
		{name: "redis tls key garbage", env: env("REDIS_URL", "rediss://r/0", "REDIS_TLS_CERT_FILE", f.cert, "REDIS_TLS_KEY_FILE", f.garbage),
			wantErr: fmt.Sprintf(`invalid REDIS_TLS_CERT_FILE %q and REDIS_TLS_KEY_FILE %q: tls: failed to find any PEM data in key input`, f.cert, f.garbage)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := tt.env
			if getenv == nil {
				getenv = env()
			}
			got, err := Load(tt.args, getenv)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Load() = %v, want error %q", got, tt.wantErr)
				}
				if err.Error() != tt.wantErr {
					t.Fatalf("Load() error = %q\n                want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error contains the secret: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load() error = %v", err)
			}
			want := Default()
			tt.want(&want)
			if got != want {
				t.Fatalf("Load() = %v\nwant %v", got, want)
			}
		})
	}
}

func TestUnreadableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any file")
	}
	path := filepath.Join(t.TempDir(), "seed")
	if err := os.WriteFile(path, []byte("SU..."), 0o000); err != nil {
		t.Fatal(err)
	}
	_, err := Load(nil, env("NATS_NKEY_SEED_FILE", path))
	if want := fmt.Sprintf(`invalid NATS_NKEY_SEED_FILE %q: permission denied`, path); err == nil || err.Error() != want {
		t.Fatalf("Load() error = %v, want %q", err, want)
	}
}

func TestTLSConfigs(t *testing.T) {
	f := writePEMFiles(t)
	c := Default()
	if tc, err := c.NATSTLS(); tc != nil || err != nil {
		t.Fatalf("NATSTLS() with no files = %v, %v; want nil, nil", tc, err)
	}
	if tc, err := c.RedisTLS(); tc != nil || err != nil {
		t.Fatalf("RedisTLS() with no files = %v, %v; want nil, nil", tc, err)
	}

	c.NATSTLSCAFile = f.ca
	tc, err := c.NATSTLS()
	if err != nil || tc.RootCAs == nil || len(tc.Certificates) != 0 {
		t.Fatalf("NATSTLS() with a CA = %+v, %v; want RootCAs and no certificate", tc, err)
	}
	c.NATSTLSCAFile, c.NATSTLSCertFile, c.NATSTLSKeyFile = "", f.cert, f.key
	tc, err = c.NATSTLS()
	if err != nil || tc.RootCAs != nil || len(tc.Certificates) != 1 {
		t.Fatalf("NATSTLS() with a client certificate = %+v, %v; want system roots and one certificate", tc, err)
	}

	c.RedisURL, c.RedisTLSCAFile, c.RedisTLSCertFile, c.RedisTLSKeyFile = "rediss://r/0", f.ca, f.cert, f.otherKey
	if _, err := c.RedisTLS(); err == nil || !strings.Contains(err.Error(), "REDIS_TLS_KEY_FILE") {
		t.Fatalf("RedisTLS() with a mismatched key: err = %v, want one naming REDIS_TLS_KEY_FILE", err)
	}
	c.RedisTLSKeyFile = f.key
	tc, err = c.RedisTLS()
	if err != nil || tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.MinVersion < 0x0303 {
		t.Fatalf("RedisTLS() = %+v, %v; want RootCAs, one certificate, TLS 1.2 or later", tc, err)
	}
}

// TestSecretsMasked sets every secret, in the URLs and in their own
// settings, and checks that neither the log record, String, GoString nor
// %+v shows them, while every setting is still listed by its flag name.
func TestSecretsMasked(t *testing.T) {
	c := Default()
	c.NATSURL = "nats://n1:4222"
	c.NATSUser, c.NATSPassword = "worker", secret
	c.RedisURL = "rediss://presenced:" + secret + "@r:6380/0"
	c.RedisUsername, c.RedisPassword = "presenced", secret
	withToken := Default()
	withToken.NATSToken = secret
	sentinel := Default()
	sentinel.RedisSentinelAddrs, sentinel.RedisSentinelMaster, sentinel.RedisSentinelPassword = "s1:26379", "mymaster", secret
	sentinel.RedisUsername, sentinel.RedisPassword = "presenced", secret
	if err := sentinel.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Config{c, withToken, sentinel} {
		var buf bytes.Buffer
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("starting", "config", c)
		var rec struct{ Config map[string]any }
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		for _, s := range Settings() {
			if _, ok := rec.Config[s.Flag]; !ok {
				t.Errorf("the logged config lacks %s", s.Flag)
			}
		}
		if len(rec.Config) != len(Settings()) {
			t.Errorf("the logged config has %d settings, want %d", len(rec.Config), len(Settings()))
		}
		for _, out := range []string{buf.String(), c.String(), fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
			if strings.Contains(out, secret) {
				t.Fatalf("output contains the secret: %s", out)
			}
		}
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("starting", "config", c)
	for _, want := range []string{"config.nats-password=xxxxx", "config.redis-password=xxxxx", "config.nats-user=worker", `config.nats-token=""`, "presenced:xxxxx@r:6380"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %s: %s", want, buf.String())
		}
	}
}

// TestSecretSettingsMarked guards the list of settings whose values are
// masked: a new password or token setting must be marked secret.
func TestSecretSettingsMarked(t *testing.T) {
	var got []string
	for _, s := range settings {
		if s.secret {
			got = append(got, s.Env)
		}
	}
	if want := []string{"NATS_PASSWORD", "NATS_TOKEN", "REDIS_SENTINEL_PASSWORD", "REDIS_PASSWORD"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("secret settings = %v, want %v", got, want)
	}
}
