//go:build faultinject

package worker

import "github.com/presenced/presenced/presence"

// AfterOutboxRead, in a -tags faultinject build, runs after the relay read
// outbox entries and before it publishes them; returning an error abandons
// them unacknowledged, as a replica that died at that point would. The
// fault suite sets it before the worker starts.
var AfterOutboxRead func(events []presence.Event) error

func afterOutboxRead(events []presence.Event) error {
	if AfterOutboxRead == nil {
		return nil
	}
	return AfterOutboxRead(events)
}
