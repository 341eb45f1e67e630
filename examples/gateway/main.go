// Command gateway simulates a websocket gateway in front of presenced: it
// holds --users connections (ids <id-prefix>0 .. <id-prefix>N-1) and
// heartbeats all of them every --interval, which should be about a third of
// presenced's TTL so one lost heartbeat does not make anyone offline. The
// client splits each round into requests of at most --batch ids. On SIGINT
// or SIGTERM it disconnects every user, so they go offline at once instead
// of when their TTL runs out, and exits.
//
//	go run ./examples/gateway --nats-url nats://127.0.0.1:4222 --users 50000 --interval 20s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/client"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("gateway failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	var (
		url      = flag.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL (env NATS_URL)")
		prefix   = flag.String("prefix", client.DefaultPrefix, "presenced's subject prefix")
		users    = flag.Int("users", 1000, "number of simulated connections")
		idPrefix = flag.String("id-prefix", "user-", "user ids are this followed by 0..users-1")
		interval = flag.Duration("interval", 20*time.Second, "heartbeat period, about a third of presenced's TTL")
		batch    = flag.Int("batch", client.DefaultBatchSize, "most ids per request (presenced's PRESENCE_MAX_BATCH or less)")
		timeout  = flag.Duration("timeout", 5*time.Second, "timeout of each request")
		retries  = flag.Int("retries", client.DefaultRetries, "times a failed heartbeat batch is sent again (error reply marked retry, timeout, no responders); negative: never")
	)
	flag.Parse()
	if *users <= 0 || *interval <= 0 {
		return errors.New("--users and --interval must be positive")
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	nc, err := nats.Connect(*url, nats.Name("presenced example gateway"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", *url, err)
	}
	defer nc.Close()
	c := client.New(nc, client.WithPrefix(*prefix), client.WithTimeout(*timeout), client.WithBatchSize(*batch), client.WithRetries(*retries))

	ids := make([]string, *users)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%d", *idPrefix, i)
	}
	log.Info("gateway started", "nats", nc.ConnectedUrlRedacted(), "users", len(ids), "interval", *interval)

	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		start := time.Now()
		r, err := c.Heartbeat(ctx, ids...)
		if err != nil && ctx.Err() == nil {
			// The next round retries; a user goes offline only after a whole
			// TTL without a heartbeat.
			log.Warn("heartbeat failed", "accepted", r.Accepted, "err", err)
		} else if err == nil {
			log.Info("heartbeat", "accepted", r.Accepted, "rejected", len(r.Rejected), "took", time.Since(start).Round(time.Millisecond))
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return disconnect(c, ids, *timeout, log)
		}
	}
}

// disconnect takes every user offline on the way out.
func disconnect(c *client.Client, ids []string, timeout time.Duration, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
	defer cancel()
	r, err := c.Disconnect(ctx, ids...)
	if err != nil {
		return fmt.Errorf("disconnect %d users: %w", len(ids), err)
	}
	log.Info("disconnected all users", "accepted", r.Accepted)
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
