package contract_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/presenced/presenced/contract"
)

func TestDecodeConnectionShapes(t *testing.T) {
	type C = contract.Conn
	for _, tc := range []struct {
		name, body string
		conns      []C
		ids        []string
		all        bool
		rejected   []string // "<userId>/<connectionId>: <error substring>"
		err        string
	}{
		{name: "single", body: `{"userId":"u","connectionId":"c","gatewayId":"g","seq":7}`, conns: []C{{"u", "c", "g", 7}}},
		{name: "gateway only", body: `{"userId":"u","gatewayId":"g"}`, conns: []C{{"u", "", "g", 0}}},
		{name: "batch", body: `{"gatewayId":"g","connections":[{"userId":"a","connectionId":"1","seq":2},{"userId":"b","connectionId":"1","gatewayId":"h"}]}`,
			conns: []C{{"a", "1", "g", 2}, {"b", "1", "h", 0}}},
		{name: "repeats merge: highest seq, last gateway", body: `{"connections":[{"userId":"a","connectionId":"1","seq":5,"gatewayId":"x"},{"userId":"a","connectionId":"1","seq":3,"gatewayId":"y"}]}`,
			conns: []C{{"a", "1", "y", 5}}},
		{name: "implicit connections on a gateway", body: `{"gatewayId":"g","userIds":["a","b"]}`, conns: []C{{"a", "", "g", 0}, {"b", "", "g", 0}}},
		{name: "empty connection id is the implicit one", body: `{"userId":"u","connectionId":""}`, conns: []C{{"u", "", "", 0}}},
		{name: "kick", body: `{"userIds":["a","b","a"],"allConnections":true}`, ids: []string{"a", "b"}, all: true},
		{name: "bad entries cost only themselves", body: `{"connections":[{"userId":"ok","connectionId":"1"},{"userId":"u","connectionId":"a b"},{"userId":"v","seq":-1},{"userId":"w","gatewayId":"*"},{"connectionId":"x"},5]}`,
			conns: []C{{"ok", "1", "", 0}}, rejected: []string{"u/a b: invalid connectionId: space", "v/: invalid seq", "w/: invalid gatewayId: glob", "{\"connectionId\":\"x\"}/: malformed connection", "5/: malformed connection"}},
		{name: "an invalid user id names the connection", body: `{"connections":[{"userId":"a b","connectionId":"c1"}]}`, rejected: []string{"a b/c1: invalid userId: space"}},
		{name: "seq not an integer", body: `{"userId":"u","seq":1.5}`, rejected: []string{"u/: invalid seq"}},
		{name: "connectionId with userIds", body: `{"userIds":["a"],"connectionId":"c"}`, err: "not with \"userIds\""},
		{name: "seq without userId", body: `{"connections":[{"userId":"a"}],"seq":1}`, err: "need a \"userId\""},
		{name: "kick with a connection", body: `{"userId":"u","connectionId":"c","allConnections":true}`, err: "allConnections"},
		{name: "bad message gateway", body: `{"gatewayId":"a b","userIds":["u"]}`, err: "invalid gatewayId"},
		{name: "nothing", body: `{"connections":[]}`, err: "no \"userId\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := contract.DecodeRequest([]byte(tc.body), 100)
			if tc.err != "" {
				if err == nil || !errors.Is(err, contract.ErrMalformed) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want malformed containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(req.Conns, tc.conns) || req.All != tc.all || !reflect.DeepEqual(req.IDs, tc.ids) {
				t.Fatalf("got conns %+v ids %v all %v", req.Conns, req.IDs, req.All)
			}
			if len(req.Rejected) != len(tc.rejected) {
				t.Fatalf("rejected %+v, want %v", req.Rejected, tc.rejected)
			}
			for i, r := range req.Rejected {
				who, what, _ := strings.Cut(tc.rejected[i], ": ")
				if r.UserID+"/"+r.ConnectionID != who || !strings.Contains(r.Error, what) || r.Reason == "" {
					t.Fatalf("rejection %d: %+v, want %s", i, r, tc.rejected[i])
				}
			}
		})
	}
}

func TestDecodeGatewayLease(t *testing.T) {
	r, err := contract.DecodeGatewayLeaseRequest([]byte(`{"gatewayId":"gw-1","instanceId":"9f2c"}`))
	if err != nil || r.GatewayID != "gw-1" || r.InstanceID != "9f2c" {
		t.Fatalf("%+v, %v", r, err)
	}
	for _, body := range []string{`{"gatewayId":"gw-1"}`, `{"gatewayId":"","instanceId":"i"}`, `{"gatewayId":"g*","instanceId":"i"}`, `[]`} {
		if _, err := contract.DecodeGatewayLeaseRequest([]byte(body)); !errors.Is(err, contract.ErrMalformed) {
			t.Fatalf("%s: %v, want malformed", body, err)
		}
	}
}
