package presence

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The outbox entry format written by lua/lib.lua (flush) and read by the relay.
func TestAppendEvents(t *testing.T) {
	entry := func(v, e string) redis.XMessage {
		return redis.XMessage{ID: "1-0", Values: map[string]any{"v": v, "e": e}}
	}
	for _, tc := range []struct {
		name string
		msg  redis.XMessage
		want []Event
	}{
		{name: "one online", msg: entry("100", "online heartbeat u-1"),
			want: []Event{{ID: "1-0", Status: "online", Reason: "heartbeat", UserID: "u-1", Version: 100}}},
		{name: "versions follow the first", msg: entry("7", "reset data_loss \nonline heartbeat a\noffline disconnect b\noffline expired c 1700000000123"),
			want: []Event{
				{ID: "1-0", Status: "reset", Reason: "data_loss", UserID: "", Version: 7},
				{ID: "1-0", Status: "online", Reason: "heartbeat", UserID: "a", Version: 8},
				{ID: "1-0", Status: "offline", Reason: "disconnect", UserID: "b", Version: 9},
				{ID: "1-0", Status: "offline", Reason: "expired", UserID: "c", Version: 10, Deadline: time.UnixMilli(1700000000123).UTC()},
			}},
		{name: "no version", msg: redis.XMessage{ID: "1-0", Values: map[string]any{"e": "online heartbeat a"}}, want: []Event{{ID: "1-0"}}},
		{name: "bad version", msg: entry("x", "online heartbeat a"), want: []Event{{ID: "1-0"}}},
		{name: "no lines", msg: entry("5", ""), want: []Event{{ID: "1-0"}}},
		{name: "line without reason", msg: entry("5", "online"), want: []Event{{ID: "1-0"}}},
		{name: "bad deadline keeps its version slot", msg: entry("5", "offline expired a x\nonline heartbeat b"),
			want: []Event{{ID: "1-0"}, {ID: "1-0", Status: "online", Reason: "heartbeat", UserID: "b", Version: 6}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := appendEvents(nil, []redis.XMessage{tc.msg})
			if len(got) != len(tc.want) {
				t.Fatalf("got %d events %+v, want %+v", len(got), got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("event %d = %+v, want %+v", i, got[i], tc.want[i])
				}
				if (got[i].Status == "") != (got[i].Valid() != nil) {
					t.Fatalf("event %d: Valid() = %v for %+v", i, got[i].Valid(), got[i])
				}
			}
		})
	}
}
