package contract

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseFastShared: the ids of a shared parse are those of a parse with
// a string per id, and valid says exactly whether ValidateUserID accepts
// every one of them.
func FuzzParseFastShared(f *testing.F) {
	for _, s := range []string{`{"userIds":["a","b","a"]}`, ` { "userIds" : [ "a" , "*" ] } `, `{"userId":"u v"}`,
		`{"userIds":["` + strings.Repeat("x", 256) + `"]}`, `{"userIds":["` + strings.Repeat("x", 257) + `"]}`, `{"userIds":["a","b","c","d"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		shared, ok := parseFast(data, 3, true)
		own, ok2 := parseFast(data, 3, false)
		if ok != ok2 || !reflect.DeepEqual(shared, own) {
			t.Fatalf("input %q: shared %+v %v, own %+v %v", data, shared, ok, own, ok2)
		}
		if !ok {
			return
		}
		allValid := true
		for _, id := range shared.ids {
			allValid = allValid && ValidateUserID(id) == nil
		}
		if shared.valid != allValid {
			t.Fatalf("input %q: valid %v, ValidateUserID says %v", data, shared.valid, allValid)
		}
	})
}

// FuzzReplyAppendJSON: the hand-written replies decode to what was encoded
// (as encoding/json's encoding does), and for valid ids and a numeric cursor
// they are byte for byte what encoding/json writes without HTML escaping.
func FuzzReplyAppendJSON(f *testing.F) {
	for _, s := range []string{"u-1", `a"b`, `a\b`, "a\x00b", "a<b&c>", "пользователь", "\xff", "\u2028", ""} {
		f.Add(s, "u-2", "123")
	}
	f.Fuzz(func(t *testing.T, a, b, cursor string) {
		ids := []string{a, b}
		for _, r := range []any{OnlineReply{Online: ids}, ListReply{UserIDs: ids, Cursor: cursor}} {
			var got []byte
			switch r := r.(type) {
			case OnlineReply:
				got = r.AppendJSON([]byte("x"))[1:]
			case ListReply:
				got = r.AppendJSON([]byte("x"))[1:]
			}
			want, err := Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(got) {
				t.Fatalf("%+v: invalid JSON %q", r, got)
			}
			back, std := reflect.New(reflect.TypeOf(r)), reflect.New(reflect.TypeOf(r))
			if err := json.Unmarshal(got, back.Interface()); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(want, std.Interface()); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back.Interface(), std.Interface()) {
				t.Fatalf("%+v: %q decodes to %+v, encoding/json's %q to %+v", r, got, back.Elem(), want, std.Elem())
			}
			numeric := strings.Trim(cursor, "0123456789") == ""
			if ValidateUserID(a) == nil && ValidateUserID(b) == nil && numeric && string(got) != string(want) {
				t.Fatalf("%+v: %q, encoding/json writes %q", r, got, want)
			}
		}
	})
}

func TestReplyAppendJSONEmpty(t *testing.T) {
	if got := string(OnlineReply{}.AppendJSON(nil)); got != `{"online":[]}` {
		t.Fatalf("no ids: %s", got)
	}
	if got := string(ListReply{}.AppendJSON(nil)); got != `{"userIds":[],"cursor":""}` {
		t.Fatalf("empty page: %s", got)
	}
}

// BenchmarkOnlineRequestParse is the service's part of an online query
// before the store: parse and validate 10000 ids (the store dedupes them).
func BenchmarkOnlineRequestParse(b *testing.B) {
	ids := make([]string, 10_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("us%08d", i)
	}
	body, _ := json.Marshal(OnlineRequest{UserIDs: ids})
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		f, ok := parseFast(body, 10_000, true)
		if !ok || !f.valid || len(f.ids) != len(ids) {
			b.Fatal("not parsed")
		}
	}
}

// BenchmarkOnlineReplyEncode encodes a reply of 5000 ids.
func BenchmarkOnlineReplyEncode(b *testing.B) {
	ids := make([]string, 5_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("us%08d", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		OnlineReply{Online: ids}.AppendJSON(nil)
	}
}
