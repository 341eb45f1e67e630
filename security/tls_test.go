package security_test

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

// TestTLS runs a real worker through a nats-server and a redis-server that
// both require TLS and a client certificate signed by the test CA:
// heartbeat -> online. Then it checks that the certificates are what makes
// it work: without the client certificate, or trusting another CA, the
// worker fails to start (exit 1) and says which server refused it.
func TestTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	n := testenv.StartNATS(t, testenv.WithServerOptions(func(o *server.Options) {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: p.ServerCert, KeyFile: p.ServerKey, CaFile: p.CA, Verify: true})
		if err != nil {
			t.Errorf("server TLS config: %v", err)
			return
		}
		o.TLS, o.TLSVerify, o.TLSConfig, o.TLSTimeout = true, true, tc, 2
	}))
	r := startTLSRedis(t, p)

	nc, err := nats.Connect(n.URL(), nats.Secure(p.clientTLS(t)))
	if err != nil {
		t.Fatalf("test client over TLS: %v", err)
	}
	t.Cleanup(nc.Close)
	if _, err := nats.Connect(n.URL()); err == nil {
		t.Fatal("nats-server accepted a plain-text client")
	}
	prefix := testenv.Prefix(t)
	subjects := contract.Subjects{Prefix: prefix}
	online := testenv.Collect(t, nc, subjects.Online())

	env := func(mod func(map[string]string)) map[string]string {
		e := map[string]string{
			// nats:// on purpose: the NATS_TLS_* files alone turn TLS on.
			"NATS_URL":                n.URL(),
			"NATS_TLS_CA_FILE":        p.CA,
			"NATS_TLS_CERT_FILE":      p.ClientCert,
			"NATS_TLS_KEY_FILE":       p.ClientKey,
			"REDIS_URL":               "rediss://" + r.Addr + "/0",
			"REDIS_TLS_CA_FILE":       p.CA,
			"REDIS_TLS_CERT_FILE":     p.ClientCert,
			"REDIS_TLS_KEY_FILE":      p.ClientKey,
			"PRESENCE_SUBJECT_PREFIX": prefix, "PRESENCE_KEY_PREFIX": prefix + ":",
		}
		if mod != nil {
			mod(e)
		}
		return e
	}

	w := start(t, env(nil))
	w.waitStarted(t)
	heartbeat(t, nc, subjects, "tls-1")
	waitEvent(t, online, "tls-1", "online")
	if code := w.stop(t); code != 0 {
		t.Fatalf("presenced exit %d:\n%s", code, w.out)
	}

	for _, tc := range []struct {
		name string
		mod  func(map[string]string)
		// want matches the start-up failure. With TLS 1.3 the client
		// learns that the server wants a certificate either from the alert
		// or from the connection closing, whichever it reads first.
		want string
	}{
		{"nats without client certificate", func(e map[string]string) { delete(e, "NATS_TLS_CERT_FILE"); delete(e, "NATS_TLS_KEY_FILE") },
			`connect to nats: .*tls.*(certificate required|connection closed by remote)`},
		{"nats trusting another CA", func(e map[string]string) { e["NATS_TLS_CA_FILE"] = p.OtherCA },
			`connect to nats: .*tls.*certificate signed by unknown authority`},
		{"redis without client certificate", func(e map[string]string) { delete(e, "REDIS_TLS_CERT_FILE"); delete(e, "REDIS_TLS_KEY_FILE") },
			`connect to redis rediss://\S+: .*(certificate required|connection reset|broken pipe|EOF)`},
		{"redis trusting another CA", func(e map[string]string) { e["REDIS_TLS_CA_FILE"] = p.OtherCA },
			`connect to redis rediss://.*tls.*certificate signed by unknown authority`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := run(t, 30*time.Second, env(tc.mod))
			failure := ""
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, `"msg":"start-up failed"`) {
					failure = l
				}
			}
			re := regexp.MustCompile(tc.want)
			if code != 1 || !re.MatchString(failure) {
				t.Fatalf("exit %d, want 1 with a start-up failure matching %q:\n%s", code, re, out)
			}
		})
	}
}
