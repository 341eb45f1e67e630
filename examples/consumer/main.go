// Command consumer keeps the set of users online from presenced's events and
// prints its size every --every, next to the count presenced reports.
//
// It subscribes first and lists second, so nothing falls between the two:
// events that arrive while the listing runs win over it (a user listed but
// reported offline meanwhile stays out). Afterwards the events alone keep
// the set. If NATS drops events for this consumer (slow consumer), it lists
// again. On a reset (presenced lost its data, or on Redis Cluster one
// partition of it) it removes the users the reset covers whose online
// version is below the reset's (their sessions were lost) and keeps the
// others: a reset republished late arrives after newer onlines, and a
// partition's reset says nothing of other partitions' users. Users known
// only from a listing have no version, so a reset removes those it covers
// too and the consumer lists again to bring back those still online.
//
//	go run ./examples/consumer --nats-url nats://127.0.0.1:4222
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/client"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("consumer failed", "err", err)
		os.Exit(1)
	}
}

// onlineSet is the users online. The Subscribe handler and the listing
// update it from different goroutines.
type onlineSet struct {
	mu sync.Mutex
	// online maps each user online to the version of their online event,
	// 0 when the user is known from a listing only.
	online map[string]int64
	// relist is signalled when a reset removed users, so run lists again.
	relist chan struct{}
	// during holds, while a listing runs, the users whose events arrived
	// meanwhile (true: last event online); nil otherwise.
	during map[string]bool
	// reset is set when a reset arrived during the listing, which then
	// predates it and is dropped.
	reset bool
}

func (s *onlineSet) apply(ev client.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.Status == client.StatusReset {
		// presenced lost the sessions below ev.Version of the users the
		// reset covers: those still connected come back through their next
		// heartbeats, within one TTL. The client already drops late events
		// below it.
		maps.DeleteFunc(s.online, func(id string, v int64) bool { return v < ev.Version && ev.Covers(id) })
		if s.during != nil {
			s.during = map[string]bool{}
			s.reset = true
		}
		select {
		case s.relist <- struct{}{}:
		default:
		}
		return
	}
	on := ev.Status == client.StatusOnline
	if on {
		s.online[ev.UserID] = ev.Version
	} else {
		delete(s.online, ev.UserID)
	}
	if s.during != nil {
		s.during[ev.UserID] = on
	}
}

// resync lists the users online and merges them in.
func (s *onlineSet) resync(ctx context.Context, c *client.Client) error {
	s.mu.Lock()
	s.during, s.reset = map[string]bool{}, false
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.during, s.reset = nil, false
		s.mu.Unlock()
	}()
	listed := map[string]struct{}{}
	for page, err := range c.List(ctx, 0) {
		if err != nil {
			return err
		}
		for _, id := range page {
			listed[id] = struct{}{}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reset {
		return nil // the listing may predate the reset; relist has another queued
	}
	// Users missing from the listing went offline (or their offline event
	// was among those dropped), unless an event said otherwise meanwhile.
	for id := range s.online {
		if _, ok := listed[id]; !ok && !s.during[id] {
			delete(s.online, id)
		}
	}
	for id := range listed {
		if _, known := s.online[id]; known {
			continue
		}
		if on, seen := s.during[id]; !seen || on {
			s.online[id] = 0
		}
	}
	return nil
}

func (s *onlineSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.online)
}

func run(log *slog.Logger) error {
	var (
		url    = flag.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL (env NATS_URL)")
		prefix = flag.String("prefix", client.DefaultPrefix, "presenced's subject prefix")
		every  = flag.Duration("every", time.Second, "how often to print the count")
	)
	flag.Parse()
	if *every <= 0 {
		return errors.New("--every must be positive")
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	dropped := make(chan struct{}, 1)
	nc, err := nats.Connect(*url, nats.Name("presenced example consumer"), nats.MaxReconnects(-1),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				select {
				case dropped <- struct{}{}:
				default:
				}
				return
			}
			log.Warn("nats error", "err", err)
		}))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", *url, err)
	}
	defer nc.Close()
	c := client.New(nc, client.WithPrefix(*prefix), client.WithLogger(log))

	set := &onlineSet{online: map[string]int64{}, relist: make(chan struct{}, 1)}
	stop, err := c.Subscribe(ctx, set.apply)
	if err != nil {
		return err
	}
	defer func() { _ = stop() }()
	start := time.Now()
	if err := set.resync(ctx, c); err != nil {
		return fmt.Errorf("list users online: %w", err)
	}
	log.Info("seeded", "online", set.len(), "took", time.Since(start).Round(time.Millisecond))

	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-dropped:
			log.Warn("events were dropped; listing again")
			if err := set.resync(ctx, c); err != nil && ctx.Err() == nil {
				log.Warn("resync failed", "err", err)
			}
		case <-set.relist:
			log.Warn("presenced reset its data set; listing again")
			if err := set.resync(ctx, c); err != nil && ctx.Err() == nil {
				log.Warn("resync failed", "err", err)
			}
		case <-tick.C:
			n, err := c.Count(ctx)
			if err != nil {
				log.Warn("count failed", "err", err)
				fmt.Printf("%s online=%d\n", time.Now().Format(time.TimeOnly), set.len())
				continue
			}
			fmt.Printf("%s online=%d presenced=%d\n", time.Now().Format(time.TimeOnly), set.len(), n)
		}
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
