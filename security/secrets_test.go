package security_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

// Secrets of the secrets tests: distinct, so a failure says which leaked.
const (
	natsPasswordSecret = "natsPwSECRETa1"
	natsTokenSecret    = "natsTokSECRETb2"
	redisPasswordSec   = "redisPwSECRETc3"
	redisURLSecret     = "redisUrlSECRETd4"
	wrongSecret        = "wrongSECRETe5"
)

var allSecrets = []string{natsPasswordSecret, natsTokenSecret, redisPasswordSec, redisURLSecret, wrongSecret}

// TestSecretsNotInHelp: --help with every secret set in the environment
// lists the settings and their defaults, nothing from the environment.
func TestSecretsNotInHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"help"}, {"--nats-password", natsPasswordSecret, "-h"}} {
		code, out := run(t, 30*time.Second, map[string]string{
			"NATS_URL": "nats://" + natsTokenSecret + "@127.0.0.1:1", "NATS_PASSWORD": natsPasswordSecret, "NATS_TOKEN": natsTokenSecret,
			"REDIS_URL": "redis://u:" + redisURLSecret + "@127.0.0.1:1/0", "REDIS_PASSWORD": redisPasswordSec,
		}, args...)
		if code != 0 || !strings.Contains(out, "NATS_PASSWORD") || !strings.Contains(out, "REDIS_TLS_CA_FILE") {
			t.Fatalf("%v: exit %d, want 0 and the settings table:\n%s", args, code, out)
		}
		assertNoSecrets(t, "--help", out, allSecrets...)
	}
}

// TestSecretsNotInSettingsErrors: invalid settings exit 2 with one line
// naming the variable, never the secret next to it.
func TestSecretsNotInSettingsErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{name: "redis url bad port", env: map[string]string{"REDIS_URL": "redis://u:" + redisURLSecret + "@h:port/0"}, args: []string{"--nats-user=w", "--nats-password=" + natsPasswordSecret}, want: "REDIS_URL"},
		{name: "redis url bad escape", args: []string{"--redis-url", "redis://u:" + redisURLSecret + "@h:6379/0%zz"}, want: "--redis-url (REDIS_URL)"},
		{name: "redis url skip_verify", env: map[string]string{"REDIS_URL": "rediss://u:" + redisURLSecret + "@h:6380/0?skip_verify=true", "REDIS_PASSWORD": redisPasswordSec}, want: "skip_verify"},
		{name: "nats url token and NATS_TOKEN", env: map[string]string{"NATS_URL": "nats://" + natsTokenSecret + "@h:4222", "NATS_TOKEN": natsTokenSecret}, want: "NATS_TOKEN"},
		{name: "nats password without user", args: []string{"--nats-password", natsPasswordSecret}, want: "--nats-password (NATS_PASSWORD)"},
		{name: "nats token and user", env: map[string]string{"NATS_TOKEN": natsTokenSecret, "NATS_USER": "w", "NATS_PASSWORD": natsPasswordSecret}, want: "mutually exclusive"},
		{name: "nats bad url", env: map[string]string{"NATS_URL": "nats://u:" + natsPasswordSecret + "@h:port"}, want: "NATS_URL"},
		{name: "redis user without password", env: map[string]string{"REDIS_USERNAME": "presenced", "NATS_TOKEN": natsTokenSecret}, want: "REDIS_USERNAME"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := run(t, 30*time.Second, tt.env, tt.args...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if code != 2 || len(lines) != 1 || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want 2 and one line naming %s:\n%s", code, tt.want, out)
			}
			assertNoSecrets(t, "the error", out, allSecrets...)
		})
	}
}

// TestSecretsNotInLogs runs the worker at debug level, JSON logs, with
// secrets in flags and in the environment: refused by NATS, refused by
// Redis, and accepted by both (heartbeat -> online, SIGTERM -> exit 0).
// Nothing it prints contains a secret; the logged config shows them masked.
func TestSecretsNotInLogs(t *testing.T) {
	t.Parallel()
	userNATS := testenv.StartNATS(t, testenv.WithServerOptions(func(o *server.Options) {
		o.Username, o.Password = "worker", natsPasswordSecret
	}))
	tokenNATS := testenv.StartNATS(t, testenv.WithServerOptions(func(o *server.Options) {
		o.Authorization = natsTokenSecret
	}))
	r := testenv.StartRedis(t, testenv.WithPassword(redisPasswordSec))
	plainRedis := "redis://" + r.Addr + "/0"

	t.Run("nats refuses", func(t *testing.T) {
		code, out := run(t, 30*time.Second, map[string]string{"NATS_URL": userNATS.URL(), "REDIS_URL": plainRedis, "REDIS_PASSWORD": redisPasswordSec},
			"--nats-user", "worker", "--nats-password", wrongSecret)
		if code != 1 || !strings.Contains(strings.ToLower(out), "authorization violation") {
			t.Fatalf("exit %d, want 1 with an authorization violation:\n%s", code, out)
		}
		assertNoSecrets(t, "output", out, allSecrets...)
	})
	t.Run("nats refuses a token in the url", func(t *testing.T) {
		u := strings.Replace(tokenNATS.URL(), "nats://", "nats://"+wrongSecret+"@", 1)
		code, out := run(t, 30*time.Second, map[string]string{"NATS_URL": u, "REDIS_URL": plainRedis, "REDIS_PASSWORD": redisPasswordSec})
		if code != 1 || !strings.Contains(strings.ToLower(out), "authorization violation") {
			t.Fatalf("exit %d, want 1 with an authorization violation:\n%s", code, out)
		}
		assertNoSecrets(t, "output", out, allSecrets...)
	})
	t.Run("redis refuses", func(t *testing.T) {
		code, out := run(t, 30*time.Second, map[string]string{"NATS_URL": tokenNATS.URL(), "NATS_TOKEN": natsTokenSecret,
			"REDIS_URL": "redis://:" + wrongSecret + "@" + r.Addr + "/0"})
		if code != 1 || !strings.Contains(out, "WRONGPASS") {
			t.Fatalf("exit %d, want 1 with WRONGPASS:\n%s", code, out)
		}
		assertNoSecrets(t, "output", out, allSecrets...)
	})

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		// client connects the test's own client to the server in use.
		client func() *nats.Conn
		want   []string // in the logged config
	}{
		{
			name: "accepted, secrets in flags",
			client: func() *nats.Conn {
				return connect(t, userNATS.URL(), nats.UserInfo("worker", natsPasswordSecret))
			},
			env:  map[string]string{"NATS_URL": userNATS.URL(), "REDIS_URL": plainRedis},
			args: []string{"--nats-user", "worker", "--nats-password", natsPasswordSecret, "--redis-password", redisPasswordSec},
			want: []string{`"nats-password":"xxxxx"`, `"redis-password":"xxxxx"`},
		},
		{
			name: "accepted, secrets in the environment",
			client: func() *nats.Conn {
				return connect(t, tokenNATS.URL(), nats.Token(natsTokenSecret))
			},
			env: map[string]string{"NATS_URL": tokenNATS.URL(), "NATS_TOKEN": natsTokenSecret,
				"REDIS_URL": "redis://default:" + redisPasswordSec + "@" + r.Addr + "/0"},
			want: []string{`"nats-token":"xxxxx"`, `default:xxxxx@`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := tc.client()
			p := testenv.Prefix(t)
			subjects := contract.Subjects{Prefix: p}
			online := testenv.Collect(t, conn, subjects.Online())
			env := map[string]string{"PRESENCE_SUBJECT_PREFIX": p, "PRESENCE_KEY_PREFIX": p + ":"}
			for k, v := range tc.env {
				env[k] = v
			}
			w := start(t, env, tc.args...)
			w.waitStarted(t)
			heartbeat(t, conn, subjects, "s-1")
			waitEvent(t, online, "s-1", "online")
			if code := w.stop(t); code != 0 {
				t.Fatalf("exit %d:\n%s", code, w.out)
			}
			out := w.out.String()
			if !strings.Contains(out, `"level":"DEBUG"`) {
				t.Fatalf("no debug lines: the test would prove less than it says:\n%s", out)
			}
			for _, want := range tc.want {
				if !strings.Contains(out, want) {
					t.Errorf("logs lack %s", want)
				}
			}
			assertNoSecrets(t, "output", out, allSecrets...)
		})
	}
}

// connect connects a test client, closed when the test ends.
func connect(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}
