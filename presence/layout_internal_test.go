package presence

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

func TestParseEpoch(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want epoch
		ok   bool
	}{
		{"1700000000000001:16384", epoch{1700000000000001, 16384}, true},
		{"5:1", epoch{5, 1}, true},
		{"", epoch{}, false},
		{"1700000000000001", epoch{}, false}, // the first layout: no shard count
		{"5:", epoch{}, false},
		{":16", epoch{}, false},
		{"5:16:2", epoch{}, false},
		{"x:16", epoch{}, false},
		{"5:x", epoch{}, false},
		{"-5:16", epoch{}, false},
		{"5:-16", epoch{}, false},
		{"0:16", epoch{}, false},
		{"5:0", epoch{}, false},
		{" 5:16", epoch{}, false},
		{"99999999999999999999:16", epoch{}, false}, // over int64
	} {
		got, err := parseEpoch(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseEpoch(%q) = %+v, %v; want %+v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, errBadEpoch) {
			t.Errorf("parseEpoch(%q): %v does not wrap errBadEpoch", tc.in, err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("epoch %+v encodes as %q, want %q", got, got.String(), tc.in)
		}
	}
}

func TestDecodeEntry(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		first  int64
		lines  []string
		ok     bool
	}{
		{"one line", map[string]any{"v": "100", "e": "online heartbeat u-1"}, 100, []string{"online heartbeat u-1"}, true},
		{"several lines", map[string]any{"v": "7", "e": "reset data_loss \nonline heartbeat a\n\noffline disconnect b"}, 7,
			[]string{"reset data_loss ", "online heartbeat a", "", "offline disconnect b"}, true},
		{"trailing newline ends the last line", map[string]any{"v": "7", "e": "online heartbeat a\n"}, 7, []string{"online heartbeat a"}, true},
		{"no version", map[string]any{"e": "online heartbeat a"}, 0, nil, false},
		{"bad version", map[string]any{"v": "x", "e": "online heartbeat a"}, 0, nil, false},
		{"version not a string", map[string]any{"v": 5, "e": "online heartbeat a"}, 0, nil, false},
		{"no lines field", map[string]any{"v": "5"}, 0, nil, false},
		{"empty lines", map[string]any{"v": "5", "e": ""}, 0, nil, false},
		{"no fields", nil, 0, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, ok := decodeEntry(tc.values)
			if ok != tc.ok || e.first != tc.first {
				t.Fatalf("decodeEntry = %+v, %v; want first %d, ok %v", e, ok, tc.first, tc.ok)
			}
			var lines []string
			for {
				l, more := e.next()
				if !more {
					break
				}
				lines = append(lines, l)
			}
			if len(lines) != len(tc.lines) {
				t.Fatalf("lines %q, want %q", lines, tc.lines)
			}
			for i := range lines {
				if lines[i] != tc.lines[i] {
					t.Fatalf("lines %q, want %q", lines, tc.lines)
				}
			}
		})
	}
}

func TestDecodeLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want eventLine
		ok   bool
	}{
		{"online heartbeat u-1", eventLine{status: contract.StatusOnline, reason: contract.ReasonHeartbeat, user: "u-1"}, true},
		{"online resync u-1", eventLine{status: contract.StatusOnline, reason: "resync", user: "u-1"}, true},
		{"offline disconnect 42:devices", eventLine{status: contract.StatusOffline, reason: "disconnect", user: "42:devices"}, true},
		{"offline expired c 1700000000123", eventLine{status: contract.StatusOffline, reason: "expired", user: "c", expiry: time.UnixMilli(1700000000123).UTC()}, true},
		{"reset data_loss ", eventLine{status: contract.StatusReset, reason: "data_loss"}, true},
		// Syntax only: unknown values decode, Event.Valid rejects them.
		{"bogus why who", eventLine{status: "bogus", reason: "why", user: "who"}, true},
		{"", eventLine{}, false},
		{"online", eventLine{}, false},
		{"online heartbeat", eventLine{}, false}, // no separator before the user id
		{"offline expired c x", eventLine{}, false},
		{"offline expired c 17 00", eventLine{}, false},
		{"offline expired c ", eventLine{}, false},
	} {
		got, ok := decodeLine(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("decodeLine(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

// The codec reads what the scripts write: the epoch and an outbox entry as
// they are in Redis, byte for byte.
func TestCodecReadsWhatScriptsWrite(t *testing.T) {
	t.Parallel()
	rdb := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	s := NewStore(rdb, Options{Prefix: testenv.Prefix(t) + ":", TTL: time.Minute, Shards: 7})
	if _, err := s.Heartbeat(ctx, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	raw, err := rdb.Get(ctx, s.keys.Epoch()).Result()
	if err != nil {
		t.Fatal(err)
	}
	ep, err := parseEpoch(raw)
	if err != nil || ep.shards != 7 || ep.version <= 0 || ep.String() != raw {
		t.Fatalf("epoch %q decodes as %+v, %v; want 7 shards, encoding back to the same bytes", raw, ep, err)
	}
	msgs, err := rdb.XRange(ctx, s.keys.Outbox(), "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("outbox %v, %v; want one entry", msgs, err)
	}
	entry, ok := decodeEntry(msgs[0].Values)
	if !ok || entry.first != ep.version {
		t.Fatalf("entry %+v (%v); want it to start at the epoch's version %d", entry, ok, ep.version)
	}
	var got []eventLine
	for {
		line, more := entry.next()
		if !more {
			break
		}
		l, ok := decodeLine(line)
		if !ok {
			t.Fatalf("line %q does not decode", line)
		}
		got = append(got, l)
	}
	want := []eventLine{
		{status: contract.StatusReset, reason: contract.ReasonDataLoss},
		{status: contract.StatusOnline, reason: contract.ReasonHeartbeat, user: "a"},
		{status: contract.StatusOnline, reason: contract.ReasonHeartbeat, user: "b"},
	}
	if len(got) != len(want) {
		t.Fatalf("lines %+v, want %+v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("lines %+v, want %+v", got, want)
		}
	}
}
