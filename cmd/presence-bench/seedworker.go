package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/seedbaseline"
)

// runSeedWorker is the hidden "seed-worker" mode: the seed's algorithm
// (internal/seedbaseline) as a process of its own, started by the bench
// like a presenced replica, so the two are measured alike. It serves
// /readyz, /metrics (messages NATS dropped, online events published, Redis
// or NATS failures) and /debug/pprof on --http-addr and stops on SIGTERM.
func runSeedWorker(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("seed-worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", "nats://127.0.0.1:4222", "NATS URL")
	redisURL := fs.String("redis-url", "redis://127.0.0.1:6379/0", "Redis URL")
	keyPrefix := fs.String("key-prefix", "presence:", "key prefix")
	subjectPrefix := fs.String("subject-prefix", "presence", "subject prefix")
	queue := fs.String("queue-group", "seed", "queue group")
	ttl := fs.Duration("ttl", 60*time.Second, "presence TTL (rounded up to seconds)")
	concurrency := fs.Int("concurrency", 32, "messages handled at once")
	pending := fs.Int("pending-limit", 0, "messages a subscription holds before NATS drops (0: 65536; negative: no limit)")
	httpAddr := fs.String("http-addr", "", "listen address for /readyz, /metrics and /debug/pprof")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := seedWorker(*natsURL, *redisURL, *keyPrefix, *subjectPrefix, *queue, *ttl, *concurrency, *pending, *httpAddr, log); err != nil {
		fmt.Fprintf(stderr, "seed-worker: %v\n", err)
		return 1
	}
	return 0
}

func seedWorker(natsURL, redisURL, keyPrefix, subjectPrefix, queue string, ttl time.Duration, concurrency, pending int, httpAddr string, log *slog.Logger) error {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	opts.PoolSize = concurrency + 4
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	subOpts := *opts
	subOpts.PoolSize = 1
	sub := redis.NewClient(&subOpts) // the seed's redis.duplicate()
	defer sub.Close()
	nc, err := nats.Connect(natsURL, nats.Name("seed-worker"), nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	w := seedbaseline.New(rdb, sub, nc, seedbaseline.Options{
		KeyPrefix: keyPrefix, Subjects: contract.Subjects{Prefix: subjectPrefix}, Queue: queue,
		TTL: ttl, Concurrency: concurrency, PendingLimit: pending, DB: opts.DB, Logger: log,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = w.Start(ctx)
	cancel()
	if err != nil {
		return err
	}
	var srv *http.Server
	srvDone := make(chan struct{})
	if httpAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
			if !w.Ready() || !nc.IsConnected() {
				rw.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(rw, "ok\n")
		})
		// The bench reads these like presenced's /metrics (Prometheus text).
		mux.HandleFunc("/metrics", func(rw http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(rw, "seed_nats_dropped_total %d\nseed_online_events_total %d\nseed_failures_total %d\n",
				w.Dropped(), w.Online.Load(), w.Failures.Load())
		})
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		srv = &http.Server{Addr: httpAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			defer close(srvDone)
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http", "err", err)
			}
		}()
	} else {
		close(srvDone)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = w.Stop(ctx)
	if srv != nil {
		_ = srv.Shutdown(ctx)
	}
	<-srvDone
	if derr := nc.Drain(); derr != nil {
		err = errors.Join(err, derr)
	}
	return err
}
