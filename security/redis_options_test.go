package security_test

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/app"
)

const optSecret = "optPwSECRETf6"

func TestRedisOptions(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	tests := []struct {
		name          string
		mod           func(c *config.Config)
		user, pass    string
		addr          string
		db            int
		tls           bool // TLSConfig set
		roots, client bool // RootCAs, a client certificate
		wantErr       string
	}{
		{name: "default", mod: func(*config.Config) {}, addr: "127.0.0.1:6379"},
		{name: "url credentials", mod: func(c *config.Config) { c.RedisURL = "redis://app:" + optSecret + "@r:6380/2" }, user: "app", pass: optSecret, addr: "r:6380", db: 2},
		{name: "variables replace url credentials", mod: func(c *config.Config) {
			c.RedisURL, c.RedisUsername, c.RedisPassword = "redis://app:old@r:6380/2", "presenced", optSecret
		}, user: "presenced", pass: optSecret, addr: "r:6380", db: 2},
		{name: "password alone keeps the url user", mod: func(c *config.Config) {
			c.RedisURL, c.RedisPassword = "redis://app:old@r/0", optSecret
		}, user: "app", pass: optSecret, addr: "r:6379"},
		{name: "username with the url password", mod: func(c *config.Config) {
			c.RedisURL, c.RedisUsername = "redis://:"+optSecret+"@r/0", "presenced"
		}, user: "presenced", pass: optSecret, addr: "r:6379"},
		{name: "rediss, system roots", mod: func(c *config.Config) { c.RedisURL = "rediss://redis.example.com:6380/0" }, addr: "redis.example.com:6380", tls: true},
		{name: "rediss with ca and client certificate", mod: func(c *config.Config) {
			c.RedisURL = "rediss://redis.example.com:6380/0"
			c.RedisTLSCAFile, c.RedisTLSCertFile, c.RedisTLSKeyFile = p.CA, p.ClientCert, p.ClientKey
		}, addr: "redis.example.com:6380", tls: true, roots: true, client: true},
		{name: "tls files with redis://", mod: func(c *config.Config) { c.RedisTLSCAFile = p.CA },
			wantErr: "REDIS_TLS_* files are set but REDIS_URL is not rediss://: use rediss:// for TLS"},
		{name: "skip_verify", mod: func(c *config.Config) { c.RedisURL = "rediss://u:" + optSecret + "@r/0?skip_verify=true" },
			wantErr: `invalid REDIS_URL "rediss://u:xxxxx@r/0?skip_verify=true": skip_verify is not supported: trust a private CA with REDIS_TLS_CA_FILE`},
		{name: "not a url", mod: func(c *config.Config) { c.RedisURL = "redis://u:" + optSecret + "@r/0%zz" },
			wantErr: `invalid REDIS_URL "redis://u:xxxxx@r/0%zz": not a URL`},
		{name: "unknown parameter", mod: func(c *config.Config) { c.RedisURL = "redis://u:" + optSecret + "@r/0?password=" + optSecret },
			wantErr: `invalid REDIS_URL "redis://u:xxxxx@r/0?password=xxxxx": redis: unexpected option: password`},
		{name: "key does not match", mod: func(c *config.Config) {
			c.RedisURL, c.RedisTLSCertFile, c.RedisTLSKeyFile = "rediss://r/0", p.ClientCert, p.ServerKey
		}, wantErr: `invalid REDIS_TLS_CERT_FILE "` + p.ClientCert + `" and REDIS_TLS_KEY_FILE "` + p.ServerKey + `": tls: private key does not match public key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			tt.mod(&cfg)
			o, err := app.RedisOptions(cfg)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), optSecret) {
					t.Fatalf("error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.Username != tt.user || o.Password != tt.pass || o.Addr != tt.addr || o.DB != tt.db {
				t.Errorf("user %q password %q addr %q db %d; want %q %q %q %d", o.Username, o.Password, o.Addr, o.DB, tt.user, tt.pass, tt.addr, tt.db)
			}
			if got := o.TLSConfig != nil; got != tt.tls {
				t.Fatalf("TLS = %v, want %v", got, tt.tls)
			}
			if o.TLSConfig != nil {
				host := tt.addr[:strings.LastIndex(tt.addr, ":")]
				if o.TLSConfig.ServerName != host || o.TLSConfig.InsecureSkipVerify || o.TLSConfig.MinVersion < 0x0303 {
					t.Errorf("TLS server name %q, skip verify %v, min version %x; want %q, false, TLS 1.2+", o.TLSConfig.ServerName, o.TLSConfig.InsecureSkipVerify, o.TLSConfig.MinVersion, host)
				}
				if got := o.TLSConfig.RootCAs != nil; got != tt.roots {
					t.Errorf("RootCAs set = %v, want %v", got, tt.roots)
				}
				if got := len(o.TLSConfig.Certificates) == 1; got != tt.client {
					t.Errorf("client certificate = %v, want %v", got, tt.client)
				}
			}
			// The handshake is HELLO and CLIENT SETNAME only, as the ACL
			// in deploy/redis/users.acl expects.
			if !o.DisableIdentity || o.MaintNotificationsConfig == nil || o.MaintNotificationsConfig.Mode != maintnotifications.ModeDisabled {
				t.Errorf("DisableIdentity %v, maintenance notifications %+v; want CLIENT SETINFO and MAINT_NOTIFICATIONS off", o.DisableIdentity, o.MaintNotificationsConfig)
			}
			o2, _ := app.RedisOptions(cfg)
			if o2 == o || (o.TLSConfig != nil && o2.TLSConfig == o.TLSConfig) {
				t.Error("RedisOptions returned shared options; want fresh ones per call")
			}
		})
	}
}
