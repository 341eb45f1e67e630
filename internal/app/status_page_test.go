package app

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/status"
)

// chromiumPath is Debian's chromium; the page test drives it headless.
const chromiumPath = "/usr/bin/chromium"

// pageApp is the worker as cmd/presenced wires it, with the status page,
// on real Redis and NATS, with HTTP on loopback ports.
type pageApp struct {
	app      *fx.App
	url      string // the status address, http://127.0.0.1:port ("" when off)
	health   string // the health and metrics address (HTTP_ADDR)
	page     *status.PageServer
	nc       *nats.Conn
	subjects contract.Subjects
}

// startPageApp starts it with the status page on a loopback port; opts
// change the configuration first.
func startPageApp(t *testing.T, opts ...func(*config.Config)) *pageApp {
	t.Helper()
	r := testenv.StartRedis(t)
	n := testenv.StartNATS(t)
	p := testenv.Prefix(t)
	cfg := config.Default()
	cfg.NATSURL, cfg.RedisURL = n.URL(), r.URL()
	cfg.KeyPrefix, cfg.SubjectPrefix = p+":", p
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.StatusAddr = "127.0.0.1:0"
	cfg.ReconcileInterval = 50 * time.Millisecond
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	var (
		srv  *status.Server
		page *status.PageServer
	)
	app := fx.New(
		Modules(cfg, log),
		fx.NopLogger,
		fx.Populate(&srv, &page),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := app.Start(ctx); err != nil {
		t.Fatalf("start app: %v", err)
	}
	t.Cleanup(func() { // a second Stop, after stop, does nothing
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = app.Stop(ctx)
	})
	a := &pageApp{app: app, health: "http://" + srv.Addr(), page: page, nc: n.Conn(t), subjects: contract.Subjects{Prefix: p}}
	if page.Addr() != "" {
		a.url = "http://" + page.Addr()
	}
	return a
}

// stop stops the app and fails the test unless it stopped cleanly within
// 10s: SSE streams must not hold the HTTP server's shutdown.
func (a *pageApp) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.app.Stop(ctx); err != nil {
		t.Fatalf("stop app with a status page client connected: %v", err)
	}
}

func (a *pageApp) send(t *testing.T, subject string, ids []string) {
	t.Helper()
	data, _ := json.Marshal(map[string]any{"userIds": ids})
	msg, err := a.nc.Request(subject, data, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	var reply contract.Reply
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Accepted != len(ids) {
		t.Fatalf("reply to %s: %s (%v), want %d accepted", subject, msg.Data, err, len(ids))
	}
}

func users(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("page-user-%d", i)
	}
	return ids
}

func TestPageInBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("chromium not found at %s: install it with `apt-get install -y chromium` (%v)", chromiumPath, err)
	}
	a := startPageApp(t)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(actx)
	defer cancelTab()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	// wait polls a JS condition in the page (a deadline, not a sleep).
	wait := func(what, cond string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
			body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("page: %s: %v\npage text:\n%s", what, err, body)
		}
	}
	const (
		online  = `document.getElementById("online").textContent`
		rowsFor = `document.querySelectorAll('#events tr[data-status="%s"]').length`
	)

	if err := chromedp.Do(ctx, chromedp.Navigate(a.url+"/")); err != nil {
		t.Fatalf("open %s: %v", a.url, err)
	}
	wait("stream connected and count 0", `document.getElementById("conn").dataset.state === "live" && `+online+` === "0"`)

	const n = 5
	ids := users(n)
	a.send(t, a.subjects.Heartbeat(), ids)
	wait(fmt.Sprintf("count %d", n), online+fmt.Sprintf(` === "%d"`, n))
	wait(fmt.Sprintf("%d online rows", n), fmt.Sprintf(rowsFor, "online")+fmt.Sprintf(" === %d", n))

	a.send(t, a.subjects.Disconnect(), ids)
	wait("count back to 0", online+` === "0"`)
	wait(fmt.Sprintf("%d offline rows", n), fmt.Sprintf(rowsFor, "offline")+fmt.Sprintf(" === %d", n))
	reasons, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll('#events tr[data-status="offline"] td:nth-child(4)')].map(td => td.textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reasons {
		if r != "disconnect" {
			t.Fatalf("offline reasons %v, want all disconnect", reasons)
		}
	}

	// The browser's stream is open: the app must still stop promptly.
	a.stop(t)
	wait("stream seen down", `document.getElementById("conn").dataset.state === "down"`)
}

// sseReader reads Server-Sent Events from a response body.
type sseReader struct{ sc *bufio.Scanner }

type sseMsg struct {
	event string
	data  struct {
		Online      *int64           `json:"online"`
		OnlineRate  float64          `json:"onlineRate"`
		OfflineRate float64          `json:"offlineRate"`
		Events      []contract.Event `json:"events"`
	}
}

// next returns the next event; ok is false at the end of the stream.
func (r *sseReader) next(t *testing.T) (sseMsg, bool) {
	t.Helper()
	var m sseMsg
	for r.sc.Scan() {
		line := r.sc.Text()
		switch {
		case line == "" && m.event != "":
			return m, true
		case strings.HasPrefix(line, "event: "):
			m.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &m.data); err != nil {
				t.Fatalf("decode %q: %v", line, err)
			}
		}
	}
	return m, false
}

func TestPageStreamAndShutdown(t *testing.T) {
	a := startPageApp(t)

	res, err := http.Get(a.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %s %s", res.Status, res.Header.Get("Content-Type"))
	}
	for _, path := range []string{"/healthz", "/metrics"} { // served on the health address
		res, err := http.Get(a.health + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("GET %s: %s", path, res.Status)
		}
	}

	// The client has no timeout: only the server's shutdown ends the stream.
	res, err = http.Get(a.url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("GET /events: Content-Type %q", ct)
	}
	sse := &sseReader{sc: bufio.NewScanner(res.Body)}
	m, ok := sse.next(t)
	if !ok || m.event != "snapshot" || len(m.data.Events) != 0 {
		t.Fatalf("first message %+v (ok %v), want an empty snapshot", m, ok)
	}

	// A probe from `presenced check` is not shown.
	probe := nats.NewMsg(a.subjects.Online())
	probe.Header.Set(contract.ProbeHeader, "check")
	if err := a.nc.PublishMsg(probe); err != nil {
		t.Fatal(err)
	}
	a.send(t, a.subjects.Heartbeat(), []string{"sse-1", "sse-2"})
	var got []contract.Event
	var count int64
	deadline := time.Now().Add(20 * time.Second)
	for (len(got) < 2 || count != 2) && time.Now().Before(deadline) {
		m, ok := sse.next(t)
		if !ok {
			t.Fatal("stream ended early")
		}
		got = append(got, m.data.Events...)
		if m.data.Online != nil {
			count = *m.data.Online
		}
	}
	if len(got) != 2 || count != 2 {
		t.Fatalf("events %+v, count %d; want sse-1 and sse-2 online, count 2", got, count)
	}
	for _, ev := range got {
		if ev.Status != "online" || ev.Reason != "heartbeat" || !strings.HasPrefix(ev.UserID, "sse-") {
			t.Fatalf("event %+v, want an online heartbeat of sse-*", ev)
		}
	}

	// A second client gets the recent events in its snapshot.
	res2, err := http.Get(a.url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res2.Body.Close()
	m, ok = (&sseReader{sc: bufio.NewScanner(res2.Body)}).next(t)
	if !ok || m.event != "snapshot" || len(m.data.Events) != 2 || m.data.Online == nil || *m.data.Online != 2 {
		t.Fatalf("second client's snapshot %+v (ok %v), want the 2 events and count 2", m, ok)
	}

	// Both streams are open: stopping must still be prompt, and end them.
	a.stop(t)
	for {
		if _, ok := sse.next(t); !ok {
			break
		}
	}
}
