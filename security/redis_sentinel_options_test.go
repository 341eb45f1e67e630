package security_test

import (
	"slices"
	"testing"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/app"
)

// TestRedisFailoverOptions: with Sentinel, the sentinels get
// REDIS_SENTINEL_PASSWORD, the servers REDIS_USERNAME, REDIS_PASSWORD and
// REDIS_SENTINEL_DB, and REDIS_SENTINEL_TLS one TLS configuration (the
// REDIS_TLS_* files, TLS 1.2 or later, verified against the dialed host)
// for both.
func TestRedisFailoverOptions(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	cfg := config.Default()
	cfg.RedisSentinelAddrs, cfg.RedisSentinelMaster, cfg.RedisSentinelPassword, cfg.RedisSentinelDB = "s1:26379, s2:26379", "pm", "sentinelPW", 3
	cfg.RedisUsername, cfg.RedisPassword = "presenced", optSecret
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	fo, err := app.RedisFailoverOptions(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if fo.MasterName != "pm" || !slices.Equal(fo.SentinelAddrs, []string{"s1:26379", "s2:26379"}) || fo.SentinelPassword != "sentinelPW" || fo.SentinelUsername != "" ||
		fo.Username != "presenced" || fo.Password != optSecret || fo.DB != 3 || fo.TLSConfig != nil || !fo.DisableIdentity {
		t.Fatalf("failover options %+v", fo)
	}
	cfg.RedisSentinelTLS, cfg.RedisTLSCAFile, cfg.RedisTLSCertFile, cfg.RedisTLSKeyFile = true, p.CA, p.ClientCert, p.ClientKey
	if fo, err = app.RedisFailoverOptions(cfg); err != nil {
		t.Fatal(err)
	}
	if tc := fo.TLSConfig; tc == nil || tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.ServerName != "" || tc.InsecureSkipVerify || tc.MinVersion < 0x0303 {
		t.Fatalf("TLS %+v: want the CA, the client certificate, no fixed server name, TLS 1.2+", tc)
	}
	cfg.RedisTLSCAFile, cfg.RedisTLSCertFile, cfg.RedisTLSKeyFile = "", "", ""
	if fo, err = app.RedisFailoverOptions(cfg); err != nil || fo.TLSConfig == nil || fo.TLSConfig.RootCAs != nil {
		t.Fatalf("REDIS_SENTINEL_TLS alone: %+v, %v; want TLS with the system roots", fo.TLSConfig, err)
	}
	if _, err := app.RedisFailoverOptions(config.Default()); err == nil {
		t.Fatal("failover options without REDIS_SENTINEL_ADDRS")
	}
}
