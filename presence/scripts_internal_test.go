package presence

import (
	"context"
	"strings"
	"testing"

	"github.com/presenced/presenced/internal/testenv"
)

// TestScriptErrorNamesFileAndLine: an error raised in a script's body is
// reported at its line in that .lua file, one raised in the library at its
// line in lib.lua or conns.lua, not at the line of the combined text Redis
// ran.
func TestScriptErrorNamesFileAndLine(t *testing.T) {
	rdb := testenv.StartRedis(t).Client(t)
	ctx := context.Background()
	body := "local a = 1\nlocal b = nil\nreturn b.field\n" // line 3 fails
	sc := libScript("broken", body)
	err := scriptError(sc.Run(ctx, rdb, []string{"k1", "k2", "k3", "k4", "k5"}, "p:", "16").Err())
	if err == nil || !strings.Contains(err.Error(), "broken.lua:3") || strings.Contains(err.Error(), "user_script") {
		t.Fatalf("error %v, want it located at broken.lua:3", err)
	}
	// A library function failing: hash() on a nil id raises inside lib.lua.
	sc = libScript("libfail", "return hash(nil)\n")
	err = scriptError(sc.Run(ctx, rdb, []string{"k1", "k2", "k3", "k4", "k5"}, "p:", "16").Err())
	if err == nil || !strings.Contains(err.Error(), "lib.lua:") {
		t.Fatalf("error %v, want it located in lib.lua", err)
	}
	// A connection helper failing: fmt_rec of a nil deadline raises inside
	// conns.lua, at its line there.
	sc = libScript("connfail", "return fmt_rec(1, 2, nil, 4)\n")
	err = scriptError(sc.Run(ctx, rdb, []string{"k1", "k2", "k3", "k4", "k5"}, "p:", "16").Err())
	if err == nil || !strings.Contains(err.Error(), "conns.lua:") || strings.Contains(err.Error(), "lib.lua:") {
		t.Fatalf("error %v, want it located in conns.lua", err)
	}
	if IsUnavailable(err) || IsRetryable(err) {
		t.Fatalf("a script error classified as Redis being unavailable: %v", err)
	}
}
