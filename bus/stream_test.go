package bus_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/contract"
)

func TestCheckStream(t *testing.T) {
	o := bus.StreamOptions{Name: "EV", Subjects: contract.Subjects{Prefix: "presence"}, Duplicates: 30 * time.Second}
	events := []string{"presence.online", "presence.offline", "presence.reset"}
	for _, tc := range []struct {
		name string
		cfg  jetstream.StreamConfig
		want error
	}{
		{"event subjects", jetstream.StreamConfig{Subjects: events, Duplicates: 30 * time.Second}, nil},
		{"longer window", jetstream.StreamConfig{Subjects: events, Duplicates: time.Hour}, nil},
		{"one wildcard token", jetstream.StreamConfig{Subjects: []string{"presence.online", "presence.offline", "presence.reset", "other.*"}, Duplicates: time.Minute}, nil},
		{"whole prefix", jetstream.StreamConfig{Subjects: []string{"presence.>"}, Duplicates: time.Minute}, bus.ErrStreamSubjects},
		{"star captures heartbeat", jetstream.StreamConfig{Subjects: []string{"presence.*"}, Duplicates: time.Minute}, bus.ErrStreamSubjects},
		{"everything", jetstream.StreamConfig{Subjects: []string{">"}, Duplicates: time.Minute}, bus.ErrStreamSubjects},
		{"query wildcard", jetstream.StreamConfig{Subjects: append([]string{"presence.query.*"}, events...), Duplicates: time.Minute}, bus.ErrStreamSubjects},
		{"no reset", jetstream.StreamConfig{Subjects: events[:2], Duplicates: time.Minute}, bus.ErrStreamSubjects},
		{"other prefix", jetstream.StreamConfig{Subjects: []string{"presencex.online", "presence.online.x"}, Duplicates: time.Minute}, bus.ErrStreamSubjects},
		{"short window", jetstream.StreamConfig{Subjects: events, Duplicates: 29 * time.Second}, bus.ErrStreamDuplicates},
		{"no ack", jetstream.StreamConfig{Subjects: events, Duplicates: time.Minute, NoAck: true}, bus.ErrStreamConfig},
		{"mirror", jetstream.StreamConfig{Mirror: &jetstream.StreamSource{Name: "X"}, Duplicates: time.Minute}, bus.ErrStreamConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := bus.CheckStream(tc.cfg, o)
			if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("CheckStream(%v) = %v, want %v", tc.cfg.Subjects, err, tc.want)
			}
		})
	}
}
