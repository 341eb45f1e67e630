package contract

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeFastMatchesSlow: wherever the fast decoder answers, it answers
// exactly as the general one.
func FuzzDecodeFastMatchesSlow(f *testing.F) {
	for _, s := range []string{`{"userId":"u"}`, `{"userIds":["a","b","a"]}`, ` { "userIds" : [ "a" , "*" ] } `, `{"userIds":["a"],"x":1}`,
		`{"userId":""}`, `{"userIds":["a b","ok"]}`, `{"userIds":[]}`, `{"userIds":["a","b","c","d"]}`,
		// Strictness both decoders share: JSON white space only, exact
		// names, no repeated name.
		"\v{\"userId\":\"u\"}", "\u00a0{\"userId\":\"u\"}", "{\"userId\":\"u\"}\u0085", "{\"userId\":\"u\"}\f",
		`{"USERIDS":["a"]}`, `{"UserId":"a"}`, `{"userId":"a","userId":"b"}`, `{"userIds":["a"],"userIds":["b"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodeFast(data, 3)
		if !ok {
			return
		}
		slow, err := decodeSlow(data, 3)
		if err != nil {
			t.Fatalf("fast accepted what slow refuses (%v): %q", err, data)
		}
		if len(fast.IDs) == 0 && len(slow.IDs) == 0 {
			fast.IDs, slow.IDs = nil, nil
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("input %q:\nfast %+v\nslow %+v", data, fast, slow)
		}
	})
}

func BenchmarkDecodeSingle(b *testing.B) {
	data := []byte(`{"userId":"user-123456"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRequest(data, 10000); err != nil {
			b.Fatal(err)
		}
	}
}

// batch100 is a heartbeat message with 100 distinct ids.
func batch100() []byte {
	data := []byte(`{"userIds":[`)
	for i := range 100 {
		if i > 0 {
			data = append(data, ',')
		}
		data = append(data, []byte(`"user-`+string(rune('a'+i%26))+string(rune('a'+i/26))+`-00"`)...)
	}
	return append(data, ']', '}')
}

func BenchmarkDecodeBatch100(b *testing.B) {
	data := batch100()
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := DecodeRequest(data, 10000); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeSlowBatch100(b *testing.B) {
	data := batch100()
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := decodeSlow(data, 10000); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzEventAppendJSON: the hand-written encoder produces valid JSON that
// decodes to the same event as encoding/json's view of it. With partitions
// the event is a reset of that scope: it decodes back when checkScope
// accepts the scope, and fails to decode otherwise.
func FuzzEventAppendJSON(f *testing.F) {
	for _, s := range []string{"u-1", `a"b`, `a\b`, "a\x00b", "пользователь", "\xff", "\u2028"} {
		f.Add(s, int64(1795635703206340), 0, 0)
	}
	f.Add("", int64(1795635703206340), 3, 16) // a partition's reset
	f.Add("", int64(7), 16, 16)               // a partition out of range
	f.Fuzz(func(t *testing.T, id string, version int64, partition, partitions int) {
		ev := Event{UserID: id, Status: "online", Reason: "heartbeat", At: time.UnixMicro(version % (1 << 50)).UTC(), Version: version}
		if partitions != 0 || partition != 0 {
			ev.UserID, ev.Status, ev.Reason, ev.Partition, ev.Partitions = "", StatusReset, ReasonDataLoss, partition, partitions
		}
		data := ev.AppendJSON(nil)
		if !json.Valid(data) {
			t.Fatalf("invalid JSON %q", data)
		}
		var viaStd struct{ UserID string }
		std, _ := json.Marshal(struct {
			UserID string `json:"userId"`
		}{ev.UserID})
		if err := json.Unmarshal(std, &viaStd); err != nil {
			t.Fatal(err)
		}
		var back Event
		err := back.UnmarshalJSON(data)
		if partitions < 0 || partition != 0 && partitions == 0 {
			// Not written (Partitions <= 0), so not checked: the reset
			// decodes as a reset of the whole data set.
			ev.Partition, ev.Partitions = 0, 0
		}
		if ev.checkScope() != nil {
			if err == nil {
				t.Fatalf("%q decoded, its scope %d/%d is invalid", data, partition, partitions)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		if back.UserID != viaStd.UserID || back.Version != version || !back.At.Equal(ev.At) || back.Partition != ev.Partition || back.Partitions != ev.Partitions {
			t.Fatalf("round trip %+v, want user %q version %d at %v scope %d/%d", back, viaStd.UserID, version, ev.At, ev.Partition, ev.Partitions)
		}
	})
}

func BenchmarkEventAppendJSON(b *testing.B) {
	ev := Event{UserID: "user-123456", Status: "online", Reason: "heartbeat", At: time.UnixMicro(1795635703206340), Version: 1795635703206340}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = ev.AppendJSON(buf[:0])
	}
}
