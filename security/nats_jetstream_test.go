package security_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

// TestNATSPermissionsJetStream runs the worker as "worker" of
// deploy/nats/presenced.conf, JetStream turned on in the server, with
// PRESENCE_STREAM=PRESENCE_EVENTS: the file's permissions let it create the
// stream (the JetStream API and its replies on _INBOX_presenced) and get a
// PubAck for each event, and the gateway's heartbeat ends up in the stream.
func TestNATSPermissionsJetStream(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte(gatewayPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("GATEWAY_PASSWORD", string(hash))
	t.Setenv("CONSUMER_PASSWORD", consumerPassword)
	t.Setenv("WORKER_PASSWORD", workerPassword)
	opts, err := server.ProcessConfigFile(natsConf)
	if err != nil {
		t.Fatalf("load %s: %v", natsConf, err)
	}
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.NoLog, opts.NoSigs = true, true
	opts.JetStream, opts.StoreDir = true, t.TempDir() // the file's commented jetstream block
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	url := srv.ClientURL()
	r := testenv.StartRedis(t)
	subjects := contract.Subjects{Prefix: "presence"}

	w := start(t, map[string]string{
		"NATS_URL": url, "NATS_USER": "worker", "NATS_PASSWORD": workerPassword,
		"REDIS_URL": r.URL(), "PRESENCE_STREAM": "PRESENCE_EVENTS",
	})
	w.waitStarted(t)
	w.waitLog(t, `"msg":"jetstream stream created"`)

	gw, _ := connectAs(t, url, "gateway", gatewayPassword)
	heartbeat(t, gw, subjects, "u-1")
	// The reset of the first start and u-1's online are in the stream, and
	// the worker acknowledged them (it logs an event once its PubAck came).
	w.waitLog(t, `"msg":"user became online"`)
	stored := func() uint64 {
		jsz, err := srv.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
		if err != nil {
			return 0
		}
		for _, a := range jsz.AccountDetails {
			for _, s := range a.Streams {
				if s.Name == "PRESENCE_EVENTS" {
					return s.State.Msgs
				}
			}
		}
		return 0
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return stored() == 2 }, "stream PRESENCE_EVENTS does not hold the reset and the online")
	if code := w.stop(t); code != 0 {
		t.Fatalf("presenced exit %d:\n%s", code, w.out)
	}
	if out := w.out.String(); strings.Contains(strings.ToLower(out), "permissions violation") || strings.Contains(out, "relay failed") {
		t.Fatalf("the worker hit a permissions violation or a failed publish:\n%s", out)
	}
}
