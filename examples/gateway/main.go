// Command gateway simulates a websocket gateway in front of presenced: it
// holds the connections of --users users (ids <id-prefix>0 ..
// <id-prefix>N-1), --connections-per-user on average (1.3: three users in
// ten have two connections), and reports them through client.Gateway under
// --gateway-id: it takes the gateway's lease, heartbeats every connection
// every --interval (at most half of presenced's TTL) in requests of at
// most --batch connections, and renews the lease every third of --lease
// (presenced's PRESENCE_GATEWAY_LEASE). On SIGINT or SIGTERM it
// disconnects every connection, so its users go offline at once, ends the
// lease and exits. Killed without that chance, its users go offline when
// the lease lapses (reason gateway_lost); started again under the same
// --gateway-id, it ends the previous process's connections at once.
//
//	go run ./examples/gateway --nats-url nats://127.0.0.1:4222 --users 50000 --interval 20s --connections-per-user 1.3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/client"
)

// connectors is how many Connect calls run at once while the gateway
// opens its connections; the Gateway batches those that wait together.
const connectors = 64

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("gateway failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	var (
		url       = flag.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL (env NATS_URL)")
		prefix    = flag.String("prefix", client.DefaultPrefix, "presenced's subject prefix")
		users     = flag.Int("users", 1000, "number of simulated users")
		perUser   = flag.Float64("connections-per-user", 1, "connections per user on average (at least 1; 1.3: three users in ten have two)")
		gatewayID = flag.String("gateway-id", defaultGatewayID(), "the gateway's id, stable across its restarts (default: the host name)")
		idPrefix  = flag.String("id-prefix", "user-", "user ids are this followed by 0..users-1")
		interval  = flag.Duration("interval", 20*time.Second, "heartbeat period, at most half of presenced's TTL (a third leaves room for one lost round)")
		lease     = flag.Duration("lease", client.DefaultGatewayLease, "presenced's PRESENCE_GATEWAY_LEASE; the lease is renewed every third of it")
		batch     = flag.Int("batch", client.DefaultBatchSize, "most connections per request (presenced's PRESENCE_MAX_BATCH or less)")
		timeout   = flag.Duration("timeout", 5*time.Second, "timeout of each request")
		retries   = flag.Int("retries", client.DefaultRetries, "times a failed request is sent again (error reply marked retry, timeout, no responders); negative: never")
	)
	flag.Parse()
	if *users <= 0 || *interval <= 0 || *perUser < 1 {
		return errors.New("--users and --interval must be positive, --connections-per-user at least 1")
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	nc, err := nats.Connect(*url, nats.Name("presenced example gateway"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", *url, err)
	}
	defer nc.Close()
	c := client.New(nc, client.WithPrefix(*prefix), client.WithTimeout(*timeout), client.WithBatchSize(*batch),
		client.WithRetries(*retries), client.WithLogger(log))

	gw := client.NewGateway(c, *gatewayID, client.WithLease(*lease), client.WithHeartbeatInterval(*interval))
	if err := gw.Start(ctx); err != nil {
		return fmt.Errorf("take the lease of gateway %q: %w", *gatewayID, err)
	}
	log.Info("gateway started", "nats", nc.ConnectedUrlRedacted(), "gateway_id", gw.ID(), "instance_id", gw.InstanceID(),
		"users", *users, "connections_per_user", *perUser, "interval", *interval)

	start := time.Now()
	failed := connectAll(ctx, gw, *users, *perUser, *idPrefix, log)
	if ctx.Err() == nil {
		log.Info("connections open", "connections", gw.Connections(), "not_confirmed", failed, "took", time.Since(start).Round(time.Millisecond))
	}
	<-ctx.Done()
	return shutdown(gw, *timeout, log)
}

// connectAll opens the users' connections, connectors at a time, and
// returns how many Connect calls failed (those not rejected are kept and
// sent again by the next heartbeat round).
func connectAll(ctx context.Context, gw *client.Gateway, users int, perUser float64, idPrefix string, log *slog.Logger) int64 {
	type conn struct{ user, id string }
	work := make(chan conn)
	var (
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	for range connectors {
		wg.Go(func() {
			for cn := range work {
				if err := gw.Connect(ctx, cn.user, cn.id); err != nil && ctx.Err() == nil {
					if failed.Add(1) == 1 {
						log.Warn("connect failed", "user_id", cn.user, "connection_id", cn.id, "err", err)
					}
				}
			}
		})
	}
feed:
	for i := range users {
		user := fmt.Sprintf("%s%d", idPrefix, i)
		for j := range connections(i, perUser) {
			select {
			case work <- conn{user, fmt.Sprintf("c%d", j)}:
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(work)
	wg.Wait()
	return failed.Load()
}

// connections is how many connections user i has: the users' counts add up
// to users*perUser (rounded), spread evenly.
func connections(i int, perUser float64) int {
	return int(math.Floor(float64(i+1)*perUser) - math.Floor(float64(i)*perUser))
}

// shutdown disconnects every connection and ends the lease: the users go
// offline at once.
func shutdown(gw *client.Gateway, timeout time.Duration, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
	defer cancel()
	n := gw.Connections()
	if err := gw.Close(ctx); err != nil {
		return fmt.Errorf("close gateway (%d connections): %w", n, err)
	}
	log.Info("disconnected every connection and ended the lease", "connections", n)
	return nil
}

// defaultGatewayID is the host name, or "gateway" without one.
func defaultGatewayID() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "gateway"
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
