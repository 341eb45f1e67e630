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
		want, err := contract.Marshal(req)
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
