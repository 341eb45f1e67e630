//go:build !faultinject

package worker

import "github.com/presenced/presenced/presence"

// afterOutboxRead is the relay's fault point between reading outbox entries
// and publishing them; only a -tags faultinject build (faults_on.go) has
// one, so a production build compiles this call away.
func afterOutboxRead([]presence.Event) error { return nil }
