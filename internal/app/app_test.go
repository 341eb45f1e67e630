package app

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/presenced/presenced/config"
)

// TestModulesSupplyValidatedConfig: the application gets the Config it was
// built with, and an invalid one fails the build with the same error as
// config.Load.
func TestModulesSupplyValidatedConfig(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	want := config.Default()
	want.TTL = 5 * time.Second
	var got config.Config
	if err := fx.New(fx.NopLogger, Modules(want, log), fx.Populate(&got)).Err(); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("supplied %+v, want %+v", got, want)
	}
	bad := config.Default()
	bad.InFlight = 0
	err := fx.New(fx.NopLogger, Modules(bad, log), fx.Populate(&got)).Err()
	if err == nil || !strings.Contains(err.Error(), "PRESENCE_INFLIGHT must be between 1 and 64, got 0") {
		t.Fatalf("fx.New with an invalid Config: err = %v", err)
	}
}
