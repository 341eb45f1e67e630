package contract

import (
	"encoding/json"
	"reflect"
	"testing"
)

// plainOnlineReply and plainListReply are the reply types without their
// decoders: what encoding/json alone makes of a body.
type (
	plainOnlineReply struct {
		Online []string `json:"online"`
	}
	plainListReply struct {
		UserIDs []string `json:"userIds"`
		Cursor  string   `json:"cursor"`
	}
)

var seedReplyIDs = []string{"u-1", `a"b`, `a\b`, "a\x00b", "a\nb", "a<b&c>", "пользователь", "\xff", "\u2028", "\ufffd", ""}

// FuzzReplyDecodeFast: wherever the fast decoder answers, it answers as
// encoding/json and as the strict decoder, for replies as presenced writes
// them and as encoding/json writes them.
func FuzzReplyDecodeFast(f *testing.F) {
	for _, s := range seedReplyIDs {
		f.Add(s, "u-2", "123")
	}
	f.Fuzz(func(t *testing.T, a, b, cursor string) {
		ids := []string{a, b}
		online, _ := json.Marshal(OnlineReply{Online: ids})
		list, _ := json.Marshal(ListReply{UserIDs: ids, Cursor: cursor})
		for _, data := range [][]byte{OnlineReply{Online: ids}.AppendJSON(nil), online} {
			var fast, strict OnlineReply
			var std plainOnlineReply
			if fast.decodeFast(data) {
				if err := json.Unmarshal(data, &std); err != nil || !reflect.DeepEqual(fast, OnlineReply(std)) {
					t.Fatalf("%q: fast %q, encoding/json %q (%v)", data, fast.Online, std.Online, err)
				}
				if err := strict.decodeStrict(data); err != nil || !reflect.DeepEqual(fast, strict) {
					t.Fatalf("%q: fast %q, strict %q (%v)", data, fast.Online, strict.Online, err)
				}
			}
		}
		for _, data := range [][]byte{ListReply{UserIDs: ids, Cursor: cursor}.AppendJSON(nil), list} {
			var fast, strict ListReply
			var std plainListReply
			if fast.decodeFast(data) {
				if err := json.Unmarshal(data, &std); err != nil || !reflect.DeepEqual(fast, ListReply(std)) {
					t.Fatalf("%q: fast %+v, encoding/json %+v (%v)", data, fast, std, err)
				}
				if err := strict.decodeStrict(data); err != nil || !reflect.DeepEqual(fast, strict) {
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
		want OnlineReply
	}{
		{`{"online":[]}`, true, OnlineReply{Online: []string{}}},
		{`{"online":["a","b<&>","пользователь"]}`, true, OnlineReply{Online: []string{"a", "b<&>", "пользователь"}}},
		{`{"online":["a\"b"]}`, false, OnlineReply{}},     // an escape: encoding/json
		{`{"online": ["a"]}`, false, OnlineReply{}},       // white space
		{`{"online":["a"],"x":1}`, false, OnlineReply{}},  // another field
		{"{\"online\":[\"\xff\"]}", false, OnlineReply{}}, // invalid UTF-8
		{`{"online":["a"`, false, OnlineReply{}},
	} {
		var r OnlineReply
		if ok := r.decodeFast([]byte(tt.data)); ok != tt.ok || !reflect.DeepEqual(r, tt.want) {
			t.Errorf("%s: %v %+v, want %v %+v", tt.data, ok, r, tt.ok, tt.want)
		}
	}
	var page ListReply
	if !page.decodeFast([]byte(`{"userIds":["a","b"],"cursor":"1234"}`)) || !reflect.DeepEqual(page, ListReply{UserIDs: []string{"a", "b"}, Cursor: "1234"}) {
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
		var r OnlineReply
		if err := r.decodeStrict([]byte(tt.data)); (err == nil) != tt.ok {
			t.Errorf("%q: %v, want ok %v", tt.data, err, tt.ok)
		}
	}
	var r OnlineReply
	if err := r.decodeStrict([]byte(`{"ONLINE":["a"]}`)); err != nil || r.Online != nil {
		t.Errorf(`{"ONLINE":["a"]} decoded as %q, %v; want the member ignored`, r.Online, err)
	}
	var rep Reply
	if err := rep.UnmarshalJSON([]byte(`{"accepted":1,"rejected":[{"userId":"a b","error":"x","ERROR":"y"}]}`)); err != nil ||
		rep.Accepted != 1 || len(rep.Rejected) != 1 || rep.Rejected[0] != (Rejection{UserID: "a b", Error: "x"}) {
		t.Errorf("reply %+v, %v", rep, err)
	}
	if err := rep.UnmarshalJSON([]byte(`{"accepted":1,"rejected":[{"userId":"a","userId":"b"}]}`)); err == nil {
		t.Error("a rejection with a repeated member decoded")
	}
	for _, data := range []string{
		`{"userId":"u","status":"online","reason":"heartbeat","at":"2026-11-25T19:41:43.206340Z","version":1}`,
		`{"userId":"u","status":"online","STATUS":"offline","reason":"heartbeat","at":"2026-11-25T19:41:43.206340Z","version":1}`,
	} {
		var ev Event
		if err := ev.UnmarshalJSON([]byte(data)); err != nil || ev.Status != "online" || ev.Version != 1 {
			t.Errorf("%s: %+v, %v", data, ev, err)
		}
	}
	var ev Event
	if err := ev.UnmarshalJSON([]byte(`{"userId":"u","status":"online","status":"offline","version":1}`)); err == nil {
		t.Errorf("an event with a repeated status decoded: %+v", ev)
	}
}

// TestRepliesRoundTrip: every reply presenced encodes decodes back to
// itself (a rejection's Reason, a metrics label, is not on the wire), and
// in particular a reply's Retry survives, which is what tells a client to
// send a failed heartbeat again.
func TestRepliesRoundTrip(t *testing.T) {
	rep := Reply{Accepted: 2, Rejected: []Rejection{{UserID: "a b", Error: "invalid userId: space at byte 1", Reason: "space"}}, Error: "store unavailable: LOADING", Retry: true}
	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Reply
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	rep.Rejected[0].Reason = ""
	if !reflect.DeepEqual(back, rep) {
		t.Fatalf("%s decodes to %+v, want %+v", data, back, rep)
	}
	for _, tt := range []struct {
		in, out any
	}{
		{&StatusReply{UserID: "u", Online: true, Since: "2026-11-25T19:41:43.206340Z", ExpiresAt: "2026-11-25T19:42:43.206340Z", Version: 7}, new(StatusReply)},
		{&StatusReply{UserID: "u", Connections: []ConnectionStatus{}}, new(StatusReply)},
		{&StatusReply{UserID: "u", Version: 3, HeldUntil: "2026-11-25T19:42:43.206340Z", Connections: []ConnectionStatus{
			{ConnectionID: "c", GatewayID: "gw", Since: "2026-11-25T19:41:43.206Z", ExpiresAt: "2026-11-25T19:42:43.206Z"}}}, new(StatusReply)},
		{&GatewayReply{GatewayID: "gw", Leased: true, InstanceID: "i", ExpiresAt: "2026-11-25T19:42:43.206Z", Connections: 9}, new(GatewayReply)},
		{&GatewayLeaseReply{ExpiresAt: "2026-11-25T19:42:43.206Z", Replaced: true}, new(GatewayLeaseReply)},
		{&GatewayLeaseReply{Error: "store unavailable: LOADING", Retry: true}, new(GatewayLeaseReply)},
		{&Reply{Accepted: 1, Rejected: []Rejection{{UserID: "u", ConnectionID: "c", Error: "too many"}}}, new(Reply)},
		{&CountReply{Online: 42}, new(CountReply)},
		{&OnlineReply{Online: []string{"a", `b"c`}}, new(OnlineReply)},
		{&ListReply{UserIDs: []string{"a"}, Cursor: "12"}, new(ListReply)},
	} {
		data, err := json.Marshal(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, tt.out); err != nil || !reflect.DeepEqual(tt.in, tt.out) {
			t.Errorf("%s decodes to %+v (%v), want %+v", data, tt.out, err, tt.in)
		}
	}
}
