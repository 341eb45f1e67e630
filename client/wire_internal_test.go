package client

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/presenced/presenced/contract"
)

var seedIDs = []string{"u-1", `a"b`, `a\b`, "a\x00b", "a\nb", "a<b&c>", "пользователь", "\xff", "\u2028", "\ufffd", ""}

// FuzzIDsRequestAppendJSON: the hand-written request decodes as encode's
// does, is encode's bytes but for control characters, and takes exactly the
// bytes chunks budgets with encodedLen.
func FuzzIDsRequestAppendJSON(f *testing.F) {
	for _, s := range seedIDs {
		f.Add(s, "u-2")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		req := idsRequest{UserIDs: []string{a, b}}
		got := req.appendJSON([]byte("x"))[1:]
		want, err := encode(req)
		if err != nil {
			t.Fatal(err)
		}
		var back, std idsRequest
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q: %v", got, err)
		}
		if err := json.Unmarshal(want, &std); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, std) {
			t.Fatalf("%q decodes to %q, encoding/json's %q to %q", got, back.UserIDs, want, std.UserIDs)
		}
		if n := len(`{"userIds":[,]}`) + encodedLen(a) + encodedLen(b); len(got) != n {
			t.Fatalf("%q is %d bytes, encodedLen says %d", got, len(got), n)
		}
		if !strings.ContainsFunc(a+b, func(r rune) bool { return r < 0x20 }) && string(got) != string(want) {
			t.Fatalf("%q, encoding/json writes %q", got, want)
		}
	})
}

// FuzzReplyDecodeFast: wherever the fast decoder answers, it answers as
// encoding/json and as the strict decoder, for replies as presenced writes
// them and as encoding/json writes them.
func FuzzReplyDecodeFast(f *testing.F) {
	for _, s := range seedIDs {
		f.Add(s, "u-2", "123")
	}
	f.Fuzz(func(t *testing.T, a, b, cursor string) {
		ids := []string{a, b}
		online, _ := json.Marshal(contract.OnlineReply{Online: ids})
		list, _ := json.Marshal(contract.ListReply{UserIDs: ids, Cursor: cursor})
		for _, data := range [][]byte{contract.OnlineReply{Online: ids}.AppendJSON(nil), online} {
			var fast, std, strict onlineReply
			if fast.decodeFast(data) {
				if err := json.Unmarshal(data, &std); err != nil || !reflect.DeepEqual(fast, std) {
					t.Fatalf("%q: fast %q, encoding/json %q (%v)", data, fast.Online, std.Online, err)
				}
				if err := strict.decode(data); err != nil || !reflect.DeepEqual(fast, strict) {
					t.Fatalf("%q: fast %q, strict %q (%v)", data, fast.Online, strict.Online, err)
				}
			}
		}
		for _, data := range [][]byte{contract.ListReply{UserIDs: ids, Cursor: cursor}.AppendJSON(nil), list} {
			var fast, std, strict listReply
			if fast.decodeFast(data) {
				if err := json.Unmarshal(data, &std); err != nil || !reflect.DeepEqual(fast, std) {
					t.Fatalf("%q: fast %+v, encoding/json %+v (%v)", data, fast, std, err)
				}
				if err := strict.decode(data); err != nil || !reflect.DeepEqual(fast, strict) {
					t.Fatalf("%q: fast %+v, strict %+v (%v)", data, fast, strict, err)
				}
			}
		}
	})
}

func TestReplyDecodeFast(t *testing.T) {
	for _, tt := range []struct {
		data string
		ok   bool
		want onlineReply
	}{
		{`{"online":[]}`, true, onlineReply{Online: []string{}}},
		{`{"online":["a","b<&>","пользователь"]}`, true, onlineReply{Online: []string{"a", "b<&>", "пользователь"}}},
		{`{"online":["a\"b"]}`, false, onlineReply{}},     // an escape: encoding/json
		{`{"online": ["a"]}`, false, onlineReply{}},       // white space
		{`{"online":["a"],"x":1}`, false, onlineReply{}},  // another field
		{"{\"online\":[\"\xff\"]}", false, onlineReply{}}, // invalid UTF-8
		{`{"online":["a"`, false, onlineReply{}},
	} {
		var r onlineReply
		if ok := r.decodeFast([]byte(tt.data)); ok != tt.ok || !reflect.DeepEqual(r, tt.want) {
			t.Errorf("%s: %v %+v, want %v %+v", tt.data, ok, r, tt.ok, tt.want)
		}
	}
	var page listReply
	if !page.decodeFast([]byte(`{"userIds":["a","b"],"cursor":"1234"}`)) || !reflect.DeepEqual(page, listReply{UserIDs: []string{"a", "b"}, Cursor: "1234"}) {
		t.Errorf("page: %+v", page)
	}
	if page.decodeFast([]byte(`{"userIds":["a","b"],"cursor":"x\"y"}`)) {
		t.Error("a cursor with an escape decoded fast")
	}
}

// TestStrictDecoders: replies and events are read as presenced reads
// requests: JSON white space only, exact member names, a repeated member
// is an error.
func TestStrictDecoders(t *testing.T) {
	for _, tt := range []struct {
		data string
		ok   bool
	}{
		{`{"online":["a"]}`, true},
		{" \t\r\n{\"online\":[\"a\"]} \n", true},
		{`{"online":["a"],"other":1}`, true},
		{"\v{\"online\":[\"a\"]}", false},
		{"\u00a0{\"online\":[\"a\"]}", false},
		{"{\"online\":[\"a\"]}\u0085", false},
		{`{"online":["a"],"online":["b"]}`, false},
	} {
		var r onlineReply
		if err := r.decode([]byte(tt.data)); (err == nil) != tt.ok {
			t.Errorf("%q: %v, want ok %v", tt.data, err, tt.ok)
		}
	}
	var r onlineReply
	if err := r.decode([]byte(`{"ONLINE":["a"]}`)); err != nil || r.Online != nil {
		t.Errorf(`{"ONLINE":["a"]} decoded as %q, %v; want the member ignored`, r.Online, err)
	}
	var rep Reply
	if err := rep.decode([]byte(`{"accepted":1,"rejected":[{"userId":"a b","error":"x","ERROR":"y"}]}`)); err != nil ||
		rep.Accepted != 1 || len(rep.Rejected) != 1 || rep.Rejected[0] != (Rejection{UserID: "a b", Error: "x"}) {
		t.Errorf("reply %+v, %v", rep, err)
	}
	if err := rep.decode([]byte(`{"accepted":1,"rejected":[{"userId":"a","userId":"b"}]}`)); err == nil {
		t.Error("a rejection with a repeated member decoded")
	}
	for _, data := range []string{
		`{"userId":"u","status":"online","reason":"heartbeat","at":"2026-11-25T19:41:43.206340Z","version":1}`,
		`{"userId":"u","status":"online","STATUS":"offline","reason":"heartbeat","at":"2026-11-25T19:41:43.206340Z","version":1}`,
	} {
		var ev Event
		if err := ev.decode([]byte(data)); err != nil || ev.Status != StatusOnline || ev.Version != 1 {
			t.Errorf("%s: %+v, %v", data, ev, err)
		}
	}
	var ev Event
	if err := ev.decode([]byte(`{"userId":"u","status":"online","status":"offline","version":1}`)); err == nil {
		t.Errorf("an event with a repeated status decoded: %+v", ev)
	}
}
