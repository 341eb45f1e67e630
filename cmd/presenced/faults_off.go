//go:build !faultinject

package main

import (
	"log/slog"

	"go.uber.org/fx"
)

// testHooks arms the fault suite's hooks in a build with -tags faultinject
// (faults_on.go); a production build has none and reads no test variable.
func testHooks(func(string) string, *slog.Logger) fx.Option { return fx.Options() }
