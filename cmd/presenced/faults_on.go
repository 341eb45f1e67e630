//go:build faultinject

package main

import (
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"go.uber.org/fx"

	"github.com/presenced/presenced/presence"
	"github.com/presenced/presenced/worker"
)

// This file is built only with -tags faultinject, for the fault suite
// (cmd/presenced tests build presenced with it); the production binary has
// neither these variables nor the worker's fault point.

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
	worker.AfterOutboxRead = func(events []presence.Event) error {
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
	}
	return fx.Options()
}
