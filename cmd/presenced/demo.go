package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/fx"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/localredis"
	"github.com/presenced/presenced/status"
)

// runDemo runs the worker against an embedded NATS server and a local
// redis-server (or REDIS_URL), with simulated users that come online,
// heartbeat and drop off, some through two simulated gateways (one of
// which crashes now and then), and prints the events live.
func runDemo(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("presenced demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	users := fs.Int("users", 12, "simulated users")
	ttl := fs.Duration("ttl", 4*time.Second, "presence TTL (short, so expiries show quickly)")
	crashEvery := fs.Duration("crash-every", 12*time.Second, "gateway gw-2 crashes about this often (0: never)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *users < 1 || *ttl < config.MinTTL || *crashEvery < 0 {
		fmt.Fprintf(stderr, "presenced demo: --users must be >= 1, --ttl >= %v and --crash-every >= 0\n", config.MinTTL)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if err := demo(ctx, getenv, stdout, stderr, *users, *ttl, *crashEvery); err != nil {
		fmt.Fprintf(stderr, "presenced demo: %v\n", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer, users int, ttl, crashEvery time.Duration) error {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	if err != nil {
		return fmt.Errorf("embedded nats: %w", err)
	}
	ns.Start()
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	if !ns.ReadyForConnections(5 * time.Second) {
		return errors.New("embedded nats did not start")
	}
	redisURL := getenv("REDIS_URL")
	if redisURL == "" {
		startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		rs, err := localredis.Start(startCtx)
		cancel()
		if err != nil {
			return err
		}
		defer rs.Stop()
		redisURL = rs.URL()
		fmt.Fprintf(stdout, "started redis-server on %s (temporary, removed on exit)\n", rs.Addr)
	}

	cfg := config.Default()
	cfg.NATSURL = ns.ClientURL()
	cfg.RedisURL = redisURL
	cfg.TTL = ttl
	cfg.GatewayLease = demoLease // short, so a crashed gateway's users go offline within seconds
	cfg.ReconcileInterval = 100 * time.Millisecond
	cfg.OutageThreshold = 2 * time.Second
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.StatusAddr = "127.0.0.1:0" // the status page shows user ids: loopback only
	cfg.LogLevel = "warn"
	if lvl := getenv("LOG_LEVEL"); lvl != "" {
		cfg.LogLevel = lvl
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := NewLogger(cfg, stderr)
	var (
		srv  *status.Server
		page *status.PageServer
	)
	app := fx.New(App(cfg, log, fx.Populate(&srv, &page)), fx.NopLogger)
	startCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := app.Start(startCtx); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = app.Stop(stopCtx)
	}()
	fmt.Fprintf(stdout, "presenced demo: NATS %s, Redis %s, TTL %v, gateway lease %v, %d simulated users; status page http://%s/ , metrics http://%s/metrics. Ctrl-C to stop.\n",
		cfg.NATSURL, config.RedactURL(redisURL), ttl, cfg.GatewayLease, users, page.Addr(), srv.Addr())
	fmt.Fprintf(stdout, "users 1, 5, 9... send plain heartbeats; the others connect through gateways gw-1 and gw-2 (users 2, 6, 10... on both, 3, 7, 11... on gw-1, 4, 8, 12... on gw-2); gw-2 crashes about every %v.\n", crashEvery)

	nc, err := nats.Connect(cfg.NATSURL, nats.Name("presenced-demo"))
	if err != nil {
		return fmt.Errorf("demo client: %w", err)
	}
	defer nc.Close()
	subjects := contract.Subjects{Prefix: cfg.SubjectPrefix}
	p := &printer{w: stdout}
	for _, subj := range []string{subjects.Online(), subjects.Offline()} {
		if _, err := nc.Subscribe(subj, p.handle); err != nil {
			return fmt.Errorf("subscribe %s: %w", subj, err)
		}
	}
	if err := nc.Flush(); err != nil {
		return err
	}

	c := client.New(nc, client.WithPrefix(cfg.SubjectPrefix))
	gws := &demoGateways{c: c, ttl: ttl, p: p, conns: map[string]map[string]int{}}
	for i := range gws.gws {
		if err := gws.start(ctx, i); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	for i := range users {
		id := fmt.Sprintf("user-%02d", i+1)
		switch i % 4 {
		case 0:
			wg.Go(func() { simulateUser(ctx, nc, subjects, id, ttl) })
		case 1:
			wg.Go(func() { gws.simulate(ctx, id, 0, 1) })
		case 2:
			wg.Go(func() { gws.simulate(ctx, id, 0) })
		case 3:
			wg.Go(func() { gws.simulate(ctx, id, 1) })
		}
	}
	if crashEvery > 0 {
		wg.Go(func() { gws.crashLoop(ctx, crashEvery) })
	}
	<-ctx.Done()
	wg.Wait()
	gws.shutdown()
	_ = nc.Flush()
	on, off := p.counts()
	fmt.Fprintf(stdout, "demo stopped: %d online events, %d offline events, %d users online at the end\n", on, off, on-off)
	return nil
}

// simulateUser plays one user: online for a few seconds with heartbeats
// every TTL/3, then either a disconnect or silence (the key expires), a
// pause, and again.
func simulateUser(ctx context.Context, nc *nats.Conn, subjects contract.Subjects, id string, ttl time.Duration) {
	payload := []byte(fmt.Sprintf(`{"userId":%q}`, id))
	wait := func(d time.Duration) bool { return sleepCtx(ctx, d) }
	if !wait(time.Duration(rand.Int64N(int64(2 * time.Second)))) {
		return
	}
	for {
		session := time.Duration(1+rand.IntN(3)) * ttl
		for end := time.Now().Add(session); time.Now().Before(end); {
			_ = nc.Publish(subjects.Heartbeat(), payload)
			if !wait(ttl / 3) {
				return
			}
		}
		if rand.IntN(2) == 0 {
			_ = nc.Publish(subjects.Disconnect(), payload)
		}
		if !wait(ttl + time.Duration(rand.Int64N(int64(2*ttl)))) {
			return
		}
	}
}

// printer prints each event with running counts.
type printer struct {
	mu      sync.Mutex
	w       io.Writer
	on, off atomic.Int64
}

func (p *printer) handle(m *nats.Msg) {
	var ev contract.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return
	}
	mark := "🟢"
	if ev.Status == contract.StatusOffline {
		mark = "🔴"
		p.off.Add(1)
	} else {
		p.on.Add(1)
	}
	on, off := p.counts()
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%s %s %-7s %-8s %-12s v=%d   online now: %d (events: %d online, %d offline)\n",
		ev.At.Local().Format("15:04:05.000"), mark, ev.Status, ev.UserID, ev.Reason, ev.Version, on-off, on, off)
}

func (p *printer) counts() (int64, int64) { return p.on.Load(), p.off.Load() }

// note prints a line between the events.
func (p *printer) note(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, time.Now().Format("15:04:05.000")+" "+format+"\n", args...)
}
