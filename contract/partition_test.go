package contract_test

import (
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/contract"
)

// TestPartitionOfGolden pins the hash: presenced and every consumer must
// compute the same partition for an id, across versions and languages
// (FNV-1a, 32 bits, of the id's bytes, modulo n). The values were computed
// once and checked against an independent FNV-1a; they must never change.
func TestPartitionOfGolden(t *testing.T) {
	cases := []struct {
		id   string
		n    int
		want int
	}{
		{"u-1", 0, 0},
		{"u-1", 1, 0},
		{"u-1", 2, 0},
		{"u-1", 3, 2},
		{"u-1", 16, 2},
		{"u-1", 1024, 258},
		{"u-2", 2, 1},
		{"u-2", 3, 0},
		{"u-2", 16, 15},
		{"u-2", 1024, 879},
		{"user-123456", 3, 1},
		{"user-123456", 16, 2},
		{"user-123456", 1024, 306},
		{"пользователь", 16, 7},
		{"пользователь", 1024, 695},
		{`a"b`, 16, 8},
		{"", 16, 5},
		{"", 1024, 453},
		{"u-1", -4, 0},
	}
	for _, c := range cases {
		if got := contract.PartitionOf(c.id, c.n); got != c.want {
			t.Errorf("PartitionOf(%q, %d) = %d, want %d", c.id, c.n, got, c.want)
		}
	}
}

func TestCovers(t *testing.T) {
	whole := contract.Event{Status: contract.StatusReset, Version: 9}
	scoped := contract.Event{Status: contract.StatusReset, Version: 9, Partition: 2, Partitions: 16}
	for _, id := range []string{"u-1", "u-2", "user-123456", "пользователь"} {
		if !whole.Covers(id) {
			t.Errorf("a reset of the whole data set does not cover %q", id)
		}
		if got, want := scoped.Covers(id), contract.PartitionOf(id, 16) == 2; got != want {
			t.Errorf("reset of 2/16 covers %q: %v, want %v", id, got, want)
		}
	}
	if !scoped.Covers("u-1") || scoped.Covers("u-2") { // u-1 is in 2/16, u-2 in 15/16
		t.Errorf("reset of 2/16: covers u-1 %v, u-2 %v", scoped.Covers("u-1"), scoped.Covers("u-2"))
	}
}

func TestScopedResetJSON(t *testing.T) {
	ev := contract.Event{Status: contract.StatusReset, Reason: contract.ReasonDataLoss, Version: 1795635703206340, Partition: 3, Partitions: 16}
	ev.At = time.UnixMicro(ev.Version).UTC()
	data, err := ev.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"userId":"","status":"reset","reason":"data_loss","at":"2026-11-25T19:41:43.206340Z","version":1795635703206340,"partition":3,"partitions":16}`
	if string(data) != want {
		t.Fatalf("got  %s\nwant %s", data, want)
	}
	var back contract.Event
	if err := back.UnmarshalJSON(data); err != nil || back != ev {
		t.Fatalf("round trip %+v, %v", back, err)
	}

	// Partition 0 is written: with partitions it names a partition.
	ev.Partition = 0
	data = ev.AppendJSON(nil)
	if !strings.HasSuffix(string(data), `,"partition":0,"partitions":16}`) {
		t.Fatalf("partition 0 of 16: %s", data)
	}
	if err := back.UnmarshalJSON(data); err != nil || back != ev {
		t.Fatalf("round trip %+v, %v", back, err)
	}

	// A reset of the whole data set has neither member.
	whole := contract.Event{Status: contract.StatusReset, Reason: contract.ReasonDataLoss, At: ev.At, Version: ev.Version}
	data = whole.AppendJSON(nil)
	if strings.Contains(string(data), "partition") {
		t.Fatalf("whole-set reset: %s", data)
	}
	if err := back.UnmarshalJSON(data); err != nil || back != whole {
		t.Fatalf("round trip %+v, %v", back, err)
	}
}

func TestScopedResetMsgID(t *testing.T) {
	reset := func(p, n int) contract.Event {
		return contract.Event{Status: contract.StatusReset, Reason: contract.ReasonDataLoss, Version: 42, Partition: p, Partitions: n}
	}
	cases := []struct {
		ev   contract.Event
		want string
	}{
		{reset(0, 0), "reset:42"},
		{reset(0, 4), "reset:0/4:42"},
		{reset(3, 4), "reset:3/4:42"},
		{reset(3, 8), "reset:3/8:42"},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		got := c.ev.MsgID()
		if got != c.want {
			t.Errorf("MsgID of %d/%d = %q, want %q", c.ev.Partition, c.ev.Partitions, got, c.want)
		}
		if seen[got] {
			t.Errorf("MsgID %q twice", got)
		}
		seen[got] = true
	}
}

// TestEventScopeRejected: a decoded event names a partition only on a reset,
// with a partition count, and a partition within it.
func TestEventScopeRejected(t *testing.T) {
	const at = `"at":"2026-11-25T19:41:43.206340Z","version":7`
	reset := `{"userId":"","status":"reset","reason":"data_loss",` + at
	online := `{"userId":"u-1","status":"online","reason":"heartbeat",` + at
	cases := []struct {
		name, in, err string // err: a part of the error; "" accepts
	}{
		{"scoped reset", reset + `,"partition":1,"partitions":4}`, ""},
		{"members in another order", reset + `,"partitions":4,"partition":3}`, ""},
		{"partitions alone: partition 0", reset + `,"partitions":4}`, ""},
		{"partition 0 alone", reset + `,"partition":0}`, ""},
		{"partitions 0", reset + `,"partition":0,"partitions":0}`, ""},
		{"partitions on an online", online + `,"partition":0,"partitions":4}`, `only a reset covers a partition`},
		{"partitions on an offline", `{"userId":"u-1","status":"offline","reason":"expired",` + at + `,"partitions":2}`, `only a reset covers a partition`},
		{"partition without partitions", reset + `,"partition":2}`, `partition 2 without partitions`},
		{"partition without partitions on an online", online + `,"partition":1}`, `partition 1 without partitions`},
		{"partition equal to partitions", reset + `,"partition":4,"partitions":4}`, `partition 4: not among partitions 0 to 3`},
		{"partition above partitions", reset + `,"partition":9,"partitions":4}`, `partition 9: not among partitions 0 to 3`},
		{"negative partition", reset + `,"partition":-1,"partitions":4}`, `partition -1: not among partitions 0 to 3`},
		{"negative partitions", reset + `,"partition":0,"partitions":-4}`, `partitions -4: negative`},
		{"fractional partition", reset + `,"partition":1.5,"partitions":4}`, `cannot unmarshal number 1.5`},
		{"string partitions", reset + `,"partition":1,"partitions":"4"}`, `cannot unmarshal string`},
		{"repeated partition", reset + `,"partition":1,"partition":1,"partitions":4}`, `duplicate key "partition"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ev contract.Event
			err := ev.UnmarshalJSON([]byte(c.in))
			if c.err == "" {
				if err != nil {
					t.Fatalf("%s: %v", c.in, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("%s decoded to %+v, want an error with %q", c.in, ev, c.err)
			}
			if !strings.Contains(err.Error(), c.err) {
				t.Fatalf("error %q, want one with %q", err, c.err)
			}
			if (ev != contract.Event{}) {
				t.Fatalf("a rejected event was stored: %+v", ev)
			}
		})
	}
}
