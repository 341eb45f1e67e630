package contract_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/presenced/presenced/contract"
)

func TestDecodeRequest(t *testing.T) {
	long := strings.Repeat("a", 257)
	cases := []struct {
		name     string
		in       string
		max      int
		ids      []string
		rejected []string // reasons
		err      error
	}{
		{name: "single", in: `{"userId":"u-1"}`, ids: []string{"u-1"}},
		{name: "batch", in: `{"userIds":["a","b","c"]}`, ids: []string{"a", "b", "c"}},
		{name: "both merged", in: `{"userId":"a","userIds":["b","a"]}`, ids: []string{"a", "b"}},
		{name: "duplicates collapse", in: `{"userIds":["a","a","b","a"]}`, ids: []string{"a", "b"}},
		{name: "whitespace around", in: "  \n{\"userId\":\"u\"}\n", ids: []string{"u"}},
		{name: "unicode id", in: `{"userId":"пользователь-1"}`, ids: []string{"пользователь-1"}},
		{name: "empty id", in: `{"userIds":["","ok"]}`, ids: []string{"ok"}, rejected: []string{"empty"}},
		{name: "too long", in: `{"userIds":["` + long + `","ok"]}`, ids: []string{"ok"}, rejected: []string{"too_long"}},
		{name: "256 bytes ok", in: `{"userId":"` + long[:256] + `"}`, ids: []string{long[:256]}},
		{name: "control char", in: `{"userIds":["a\u0001b","ok"]}`, ids: []string{"ok"}, rejected: []string{"control_char"}},
		{name: "nul", in: `{"userIds":["a\u0000b"]}`, ids: []string{}, rejected: []string{"control_char"}},
		{name: "space", in: `{"userIds":["a b"]}`, ids: []string{}, rejected: []string{"space"}},
		{name: "glob star", in: `{"userIds":["*","ok"]}`, ids: []string{"ok"}, rejected: []string{"glob_char"}},
		{name: "glob question", in: `{"userIds":["a?"]}`, ids: []string{}, rejected: []string{"glob_char"}},
		{name: "glob bracket", in: `{"userIds":["[a]"]}`, ids: []string{}, rejected: []string{"glob_char"}},
		{name: "number element", in: `{"userIds":[42,"ok"]}`, ids: []string{"ok"}, rejected: []string{"not_string"}},
		{name: "null element", in: `{"userIds":[null,"ok"]}`, ids: []string{"ok"}, rejected: []string{"not_string"}},
		{name: "object element", in: `{"userIds":[{"a":1},"ok"]}`, ids: []string{"ok"}, rejected: []string{"not_string"}},
		{name: "invalid utf8", in: "{\"userIds\":[\"a\xffb\",\"ok\"]}", ids: []string{"ok"}, rejected: []string{"invalid_utf8"}},
		{name: "lone surrogate", in: `{"userIds":["a\ud800b","ok"]}`, ids: []string{"ok"}, rejected: []string{"invalid_utf8"}},
		{name: "single not string", in: `{"userId":7}`, ids: []string{}, rejected: []string{"not_string"}},
		{name: "empty message", in: ``, err: contract.ErrMalformed},
		{name: "not json", in: `hello`, err: contract.ErrMalformed},
		{name: "array", in: `["a"]`, err: contract.ErrMalformed},
		{name: "truncated", in: `{"userIds":["a"`, err: contract.ErrMalformed},
		{name: "no ids", in: `{}`, err: contract.ErrMalformed},
		{name: "empty batch", in: `{"userIds":[]}`, err: contract.ErrMalformed},
		{name: "userIds not array", in: `{"userIds":"a"}`, err: contract.ErrMalformed},
		{name: "deeply nested", in: strings.Repeat(`{"a":`, 20000) + `1` + strings.Repeat(`}`, 20000), err: contract.ErrMalformed},
		{name: "json white space only: vertical tab", in: "\v{\"userId\":\"u\"}", err: contract.ErrMalformed},
		{name: "json white space only: form feed", in: "{\"userId\":\"u\"}\f", err: contract.ErrMalformed},
		{name: "json white space only: no-break space", in: "\u00a0{\"userId\":\"u\"}", err: contract.ErrMalformed},
		{name: "json white space only: next line", in: "{\"userId\":\"u\"}\u0085", err: contract.ErrMalformed},
		{name: "all json white space", in: " \t\r\n{ \"userIds\" : [ \"a\" ] } \t\r\n", ids: []string{"a"}},
		{name: "key in another case", in: `{"USERIDS":["a"]}`, err: contract.ErrMalformed},
		{name: "key in another case ignored", in: `{"userId":"a","USERIDS":["b"],"userid":"c"}`, ids: []string{"a"}},
		{name: "key folding to userIds", in: "{\"userId\u017f\":[\"a\"]}", err: contract.ErrMalformed},
		{name: "escaped key", in: `{"user\u0049d":"a"}`, ids: []string{"a"}},
		{name: "unknown key ignored", in: `{"userIds":["a"],"gateway":"g-1"}`, ids: []string{"a"}},
		{name: "duplicate userId", in: `{"userId":"a","userId":"b"}`, err: contract.ErrMalformed},
		{name: "duplicate userIds", in: `{"userIds":["a"],"userIds":["b"]}`, err: contract.ErrMalformed},
		{name: "duplicate after unescaping", in: `{"userId":"a","user\u0049d":"b"}`, err: contract.ErrMalformed},
		{name: "duplicate unknown key", in: `{"userId":"a","x":1,"x":2}`, err: contract.ErrMalformed},
		{name: "data after the object", in: `{"userId":"a"}{"userId":"b"}`, err: contract.ErrMalformed},
		{name: "over max", in: `{"userIds":["a","b","c"]}`, max: 2, err: contract.ErrTooMany},
		{name: "at max", in: `{"userIds":["a","b"]}`, max: 2, ids: []string{"a", "b"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			max := c.max
			if max == 0 {
				max = 100
			}
			req, err := contract.DecodeRequest([]byte(c.in), max)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("err %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(req.IDs, c.ids) {
				t.Fatalf("ids %q, want %q", req.IDs, c.ids)
			}
			var reasons []string
			for _, r := range req.Rejected {
				reasons = append(reasons, r.Reason)
				if !strings.HasPrefix(r.Error, "invalid userId: ") {
					t.Fatalf("rejection error %q is not clear", r.Error)
				}
			}
			if !slices.Equal(reasons, c.rejected) {
				t.Fatalf("rejected %v, want %v", req.Rejected, c.rejected)
			}
		})
	}
}

func TestEventJSONRoundTrip(t *testing.T) {
	ev := contract.Event{UserID: "u-1", Status: "online", Reason: "heartbeat", Version: 1795635703206340}
	ev.At = time.UnixMicro(ev.Version).UTC() // as the relay sets it
	data, err := ev.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"userId":"u-1","status":"online","reason":"heartbeat","at":"2026-11-25T19:41:43.206340Z","version":1795635703206340}`
	if string(data) != want {
		t.Fatalf("got  %s\nwant %s", data, want)
	}
	var back contract.Event
	if err := back.UnmarshalJSON(data); err != nil || back != ev {
		t.Fatalf("round trip %+v, %v", back, err)
	}
	if ev.MsgID() != "u-1:1795635703206340" {
		t.Fatalf("MsgID %s", ev.MsgID())
	}
}

// FuzzDecodeRequest: any input decodes or fails cleanly; accepted ids are
// valid, unique, and never glob patterns or control characters.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"userId":"u"}`, `{"userIds":["a","b","a"]}`, `{"userIds":[1,null,"*","a\u0000"]}`, `{`, ``, `[]`,
		"{\"userId\":\"\xff\"}", `{"userIds":["a\ud800"]}`, `{"userId":"a","userIds":["b"]}`,
		`{"userId":"u","connectionId":"c","gatewayId":"g","seq":3}`, `{"gatewayId":"g","connections":[{"userId":"u","connectionId":"c","seq":1},{"userId":"u","connectionId":"c","seq":2}]}`,
		`{"gatewayId":"g","userIds":["a","b"]}`, `{"userId":"u","allConnections":true}`, `{"userIds":["u"],"allConnections":true,"seq":1}`,
		`{"connections":[1,{"userId":"*"},{"userId":"u","seq":-1},{"userId":"u","connectionId":" "}]}`, `{"userId":"u","seq":1e3}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := contract.DecodeRequest(data, 1000)
		if err != nil {
			if !errors.Is(err, contract.ErrMalformed) && !errors.Is(err, contract.ErrTooMany) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, id := range req.IDs {
			if err := contract.ValidateUserID(id); err != nil {
				t.Fatalf("accepted invalid id %q: %v", id, err)
			}
			if seen[id] {
				t.Fatalf("duplicate id %q", id)
			}
			seen[id] = true
		}
		type connKey struct{ user, conn string }
		conns := map[connKey]bool{}
		for _, c := range req.Conns {
			if err := contract.ValidateConn(c); err != nil {
				t.Fatalf("accepted invalid connection %+v: %v", c, err)
			}
			if k := (connKey{c.UserID, c.ConnectionID}); conns[k] {
				t.Fatalf("connection %+v twice", c)
			} else {
				conns[k] = true
			}
		}
		if req.All && len(req.Conns) > 0 {
			t.Fatalf("allConnections with connection entries: %+v", req)
		}
		if len(req.IDs)+len(req.Conns)+len(req.Rejected) == 0 {
			t.Fatalf("decoded to nothing without an error: %+v", req)
		}
		for _, r := range req.Rejected {
			if r.Error == "" || r.Reason == "" || !utf8.ValidString(r.Error) {
				t.Fatalf("unclear rejection %+v", r)
			}
		}
	})
}
