package security_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"golang.org/x/crypto/bcrypt"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/query"
)

const natsConf = "../deploy/nats/presenced.conf"

// Passwords of the three users. The gateway's reaches nats-server as a
// bcrypt hash, the others in plain text: both forms the file documents.
const (
	gatewayPassword  = "gatewayPw7e1"
	consumerPassword = "consumerPw93c"
	workerPassword   = "workerPw5a2"
)

// startConfNATS runs an embedded nats-server from deploy/nats/presenced.conf
// on a random port of 127.0.0.1 and returns its URL.
func startConfNATS(t *testing.T) string {
	t.Helper()
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
	return srv.ClientURL()
}

// asyncErrs collects a connection's asynchronous errors (permission
// violations arrive that way).
type asyncErrs chan error

func (e asyncErrs) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	select {
	case e <- err:
	default:
	}
}

// want waits for a permissions violation naming subject.
func (e asyncErrs) want(t *testing.T, subject string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case err := <-e:
			msg := strings.ToLower(err.Error())
			if strings.Contains(msg, "permissions violation") && strings.Contains(err.Error(), `"`+subject+`"`) {
				return
			}
			t.Logf("other async error: %v", err)
		case <-timeout:
			t.Fatalf("no permissions violation for %s", subject)
		}
	}
}

func connectAs(t *testing.T, url, user, password string) (*nats.Conn, asyncErrs) {
	t.Helper()
	errs := make(asyncErrs, 64)
	nc, err := nats.Connect(url, nats.UserInfo(user, password), nats.ErrorHandler(errs.handler), nats.Name(user))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// TestNATSPermissions loads deploy/nats/presenced.conf and checks each
// role: the gateway and the consumer are refused what is not theirs, and a
// real presenced worker logged in as "worker" serves heartbeats,
// disconnects and queries end to end.
func TestNATSPermissions(t *testing.T) {
	url := startConfNATS(t)
	r := testenv.StartRedis(t)
	subjects := contract.Subjects{Prefix: "presence"}

	// Wrong passwords are refused (and the plain-text password of a bcrypt
	// user is what the client sends).
	if _, err := nats.Connect(url, nats.UserInfo("gateway", "wrong")); err == nil {
		t.Fatal("gateway connected with a wrong password")
	}
	if _, err := nats.Connect(url, nats.UserInfo("worker", gatewayPassword)); err == nil {
		t.Fatal("worker connected with the gateway's password")
	}

	gw, gwErrs := connectAs(t, url, "gateway", gatewayPassword)
	cons, consErrs := connectAs(t, url, "consumer", consumerPassword)
	online := testenv.Collect(t, cons, subjects.Online())
	offline := testenv.Collect(t, cons, subjects.Offline())
	reset := testenv.Collect(t, cons, subjects.Reset())

	w := start(t, map[string]string{
		"NATS_URL": url, "NATS_USER": "worker", "NATS_PASSWORD": workerPassword,
		"REDIS_URL": r.URL(),
	})
	w.waitStarted(t)

	// The query service on the worker's account and user, as presenced
	// runs it: its subscriptions ($SRV.*, presence.query.*) and replies must
	// be allowed too.
	wnc, wErrs := connectAs(t, url, "worker", workerPassword)
	rdb := r.Client(t)
	store := presence.NewStore(rdb, presence.Options{Prefix: "presence:", TTL: time.Minute})
	svc, err := query.Start(wnc, store, query.Options{Subjects: subjects})
	if err != nil {
		t.Fatalf("start the query service as worker: %v", err)
	}
	t.Cleanup(func() { _ = svc.Stop() })

	// The gateway cannot forge events, read events or query; the consumer
	// cannot send heartbeats, read heartbeats or forge events.
	forged := []byte(`{"userId":"forged","status":"offline","reason":"disconnect","version":1}`)
	if err := gw.Publish(subjects.Offline(), forged); err != nil {
		t.Fatal(err)
	}
	gwErrs.want(t, subjects.Offline())
	if _, err := gw.Subscribe(subjects.Online(), func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	gwErrs.want(t, subjects.Online())
	if err := gw.Publish(subjects.Query(contract.QueryCount), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	gwErrs.want(t, subjects.Query(contract.QueryCount))

	if err := cons.Publish(subjects.Heartbeat(), []byte(`{"userIds":["intruder"]}`)); err != nil {
		t.Fatal(err)
	}
	consErrs.want(t, subjects.Heartbeat())
	if _, err := cons.Subscribe(subjects.Heartbeat(), func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	consErrs.want(t, subjects.Heartbeat())
	if err := cons.Publish(subjects.Online(), forged); err != nil {
		t.Fatal(err)
	}
	consErrs.want(t, subjects.Online())
	for _, nc := range []*nats.Conn{gw, cons} {
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}

	// The gateway's heartbeat: the worker replies (allow_responses, the
	// gateway's _INBOX) and publishes online, which the consumer receives.
	heartbeat(t, gw, subjects, "u-1")
	waitEvent(t, online, "u-1", "online")
	// Everything refused above was sent and flushed before this heartbeat:
	// had the server let any of it through, it would be here by now.
	if n := offline.Len(); n != 0 {
		t.Fatalf("the consumer received %d offline events, want none (the forged one was refused)", n)
	}
	if n := online.Len(); n != 1 {
		t.Fatalf("the consumer received %d online events, want only u-1's", n)
	}
	if n, err := rdb.Exists(context.Background(), "presence:user:intruder").Result(); err != nil || n != 0 {
		t.Fatalf("the consumer's heartbeat was stored: EXISTS = %d, %v", n, err)
	}
	// The gateway's lease messages reach the worker and are answered.
	lease := map[string]string{"gatewayId": "gw-1", "instanceId": "i-1"}
	send(t, gw, subjects.GatewayHeartbeat(), lease)
	send(t, gw, subjects.GatewayDisconnect(), lease)

	// The consumer's queries and service discovery reach the worker's
	// query service and are answered.
	for _, subj := range []string{subjects.Query(contract.QueryCount), "$SRV.PING.presence", "$SRV.INFO"} {
		msg, err := cons.Request(subj, []byte(`{}`), 10*time.Second)
		if err != nil {
			t.Fatalf("consumer request %s: %v", subj, err)
		}
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			t.Fatalf("consumer request %s: error %s %s", subj, code, msg.Header.Get(micro.ErrorHeader))
		}
	}
	msg, err := cons.Request(subjects.Query(contract.QueryCount), []byte(`{}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var count contract.CountReply
	if err := json.Unmarshal(msg.Data, &count); err != nil || count.Online != 1 {
		t.Fatalf("count reply %s (%v), want 1 online", msg.Data, err)
	}

	// The gateway's disconnect: offline reaches the consumer.
	disconnect(t, gw, subjects, "u-1")
	waitEvent(t, offline, "u-1", "offline")

	if n := reset.Len(); n > 1 {
		t.Fatalf("%d reset notices", n)
	}
	select {
	case err := <-wErrs:
		t.Fatalf("the worker user's connection got an async error: %v", err)
	default:
	}
	if code := w.stop(t); code != 0 {
		t.Fatalf("presenced exit %d:\n%s", code, w.out)
	}
	if out := w.out.String(); strings.Contains(strings.ToLower(out), "permissions violation") {
		t.Fatalf("the worker hit a permissions violation:\n%s", out)
	}
	assertNoSecrets(t, "presenced output", w.out.String(), workerPassword)
}
