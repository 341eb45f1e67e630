// Command presenced turns heartbeats on NATS into presence in Redis and
// publishes presence.online / presence.offline events.
//
//	presenced [flags]          run the worker (settings: presenced --help)
//	presenced demo [flags]     run a self-contained demo (embedded NATS, local redis-server)
//	presenced check [flags]    verify a deployment (Redis version, keyspace events, ACL, NATS permissions)
//	presenced version          print the version
//
// main is the only place that exits: 0 after a clean shutdown (SIGTERM,
// SIGINT), 2 for invalid settings, 1 when start-up or the run fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/app"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run dispatches the subcommand and returns the exit code.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	sub := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	switch sub {
	case "", "run":
		return runWorker(args, getenv, stdout, stderr)
	case "demo":
		return runDemo(args, getenv, stdout, stderr)
	case "check":
		return runCheck(args, getenv, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "presenced", Version())
		return 0
	case "help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "presenced: unknown command %q (try presenced --help)\n", sub)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `presenced: turns heartbeats on NATS into presence in Redis and publishes
presence.online / presence.offline events.

Usage:
  presenced [flags]          run the worker
  presenced demo [flags]     run a demo: embedded NATS, a local redis-server, simulated users
  presenced check [flags]    check that Redis and NATS are reachable and allow what the worker does
  presenced version          print the version

`)
	config.Usage(w)
}

// loadConfig parses settings; it returns an exit code >= 0 when the caller
// should stop (help printed, or invalid settings).
func loadConfig(args []string, getenv func(string) string, stdout, stderr io.Writer) (config.Config, int) {
	cfg, err := config.Load(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return cfg, 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "presenced: %v\n", err)
		return cfg, 2
	}
	return cfg, -1
}

func runWorker(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, code := loadConfig(args, getenv, stdout, stderr)
	if code >= 0 {
		return code
	}
	log := NewLogger(cfg, stderr)
	log.Info("starting presenced", "version", Version(), "config", cfg)
	app := fx.New(App(cfg, log, testHooks(getenv, log)))
	return runApp(app, log, cfg.ConnectTimeout)
}

// runApp starts app, waits for a shutdown signal and stops it.
func runApp(app *fx.App, log *slog.Logger, connectTimeout time.Duration) int {
	if err := app.Err(); err != nil {
		log.Error("invalid application", "err", err)
		return 1
	}
	startCtx, cancel := context.WithTimeout(context.Background(), 2*connectTimeout+5*time.Second)
	defer cancel()
	if err := app.Start(startCtx); err != nil {
		log.Error("start-up failed", "err", err)
		return 1
	}
	sig := <-app.Wait()
	log.Info("shutting down", "signal", fmt.Sprint(sig.Signal))
	stopCtx, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	if err := app.Stop(stopCtx); err != nil {
		log.Error("shutdown failed", "err", err)
		return 1
	}
	log.Info("stopped")
	return sig.ExitCode
}

// App is the whole worker (app.Modules) with this build's version for the
// query service.
func App(cfg config.Config, log *slog.Logger, extra ...fx.Option) fx.Option {
	return app.Modules(cfg, log, append([]fx.Option{fx.Supply(serviceVersion())}, extra...)...)
}

// serviceVersion is the version the query service reports ($SRV.INFO).
func serviceVersion() app.ServiceVersion {
	_, sv := buildVersion()
	return app.ServiceVersion(sv)
}

// NewLogger returns the process logger: JSON or text on w at cfg's level.
func NewLogger(cfg config.Config, w io.Writer) *slog.Logger {
	ho := &slog.HandlerOptions{Level: cfg.Level()}
	var h slog.Handler = slog.NewJSONHandler(w, ho)
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(w, ho)
	}
	return slog.New(h)
}
