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
	"os/signal"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/status"
	"github.com/presenced/presenced/worker"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

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

// Version is the build's version: -ldflags, else the module version, else "dev".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
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

// App is the whole worker: every module, wired in one place.
func App(cfg config.Config, log *slog.Logger, extra ...fx.Option) fx.Option {
	return fx.Options(
		config.Module(cfg),
		fx.Supply(log),
		fx.WithLogger(func() fxevent.Logger {
			l := &fxevent.SlogLogger{Logger: log.With("component", "fx")}
			l.UseLogLevel(slog.LevelDebug)
			return l
		}),
		presence.Module,
		bus.Module,
		worker.Module,
		status.Module,
		status.PageModule,
		fx.Provide(
			readiness("redis", func(rdb *redis.Client) func(context.Context) error {
				return func(ctx context.Context) error { return rdb.Ping(ctx).Err() }
			}),
			readiness("worker", func(w *worker.Worker) func(context.Context) error {
				return func(context.Context) error { return w.Ready() }
			}),
		),
		fx.Options(extra...),
	)
}

// testHooks supports the fault suite. PRESENCED_TEST_KILL_AFTER_OUTBOX_READ=offline
// makes the process SIGKILL itself after reading outbox entries that include
// an offline event and before publishing them, the exact point where a
// crash would lose the event without the outbox.
// PRESENCED_TEST_STOP_AFTER_OUTBOX_READ=online makes it SIGSTOP itself, once,
// at the same point (after reading entries with an online event): a replica
// paused there for longer than the claim time, as a GC pause or a frozen VM
// would, until the test sends SIGCONT. Never set in production.
func testHooks(getenv func(string) string, log *slog.Logger) fx.Option {
	kill := getenv("PRESENCED_TEST_KILL_AFTER_OUTBOX_READ")
	stop := getenv("PRESENCED_TEST_STOP_AFTER_OUTBOX_READ")
	if kill == "" && stop == "" {
		return fx.Options()
	}
	log.Warn("test hook armed: this process will kill or stop itself", "kill_after_outbox_read", kill, "stop_after_outbox_read", stop)
	var stopped atomic.Bool
	return fx.Supply(&worker.Hooks{AfterOutboxRead: func(events []presence.Event) error {
		for _, e := range events {
			switch {
			case kill != "" && string(e.Status) == kill:
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal is on its way
			case stop != "" && string(e.Status) == stop && stopped.CompareAndSwap(false, true):
				log.Warn("test hook: stopping after reading outbox entries", "entries", len(events))
				// The kernel stops the process's threads soon after kill
				// returns, not at once: wait for the SIGCONT, so that this
				// goroutine does not go on before the stop.
				cont := make(chan os.Signal, 1)
				signal.Notify(cont, syscall.SIGCONT)
				_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
				<-cont
				signal.Stop(cont)
				return nil
			}
		}
		return nil
	}})
}

// readiness adapts a dependency's check into the status "checks" group.
func readiness[T any](name string, f func(T) func(context.Context) error) any {
	return fx.Annotate(func(t T) status.Check { return status.Check{Name: name, Fn: f(t)} }, fx.ResultTags(`group:"checks"`))
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
