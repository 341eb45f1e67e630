package presence

import (
	_ "embed"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Each script is lib.lua and conns.lua followed by its body, so the clock,
// the outbox format and the connection helpers live in one place. See the header of each .lua file for its KEYS,
// ARGV and reply.
var (
	//go:embed lua/lib.lua
	luaLib string
	//go:embed lua/conns.lua
	luaConns string
	//go:embed lua/heartbeat.lua
	luaHeartbeat string
	//go:embed lua/disconnect.lua
	luaDisconnect string
	//go:embed lua/sweep.lua
	luaSweep string
	//go:embed lua/claim.lua
	luaClaim string
	//go:embed lua/reset.lua
	luaReset string
	//go:embed lua/reannounce.lua
	luaReannounce string
	//go:embed lua/connect.lua
	luaConnect string
	//go:embed lua/release.lua
	luaRelease string
	//go:embed lua/lease.lua
	luaLease string
	//go:embed lua/lapse.lua
	luaLapse string

	scriptHeartbeat  = libScript("heartbeat", luaHeartbeat)
	scriptDisconnect = libScript("disconnect", luaDisconnect)
	scriptSweep      = libScript("sweep", luaSweep)
	scriptClaim      = libScript("claim", luaClaim)
	scriptReset      = libScript("reset", luaReset)
	scriptReannounce = libScript("reannounce", luaReannounce)
	scriptConnect    = libScript("connect", luaConnect)
	scriptRelease    = libScript("release", luaRelease)
	scriptLease      = libScript("lease", luaLease)
	scriptLapse      = libScript("lapse", luaLapse)
)

// Read-only scripts: lib.lua too, for the epoch's shard count and the hash.
var (
	//go:embed lua/status.lua
	luaStatus string
	//go:embed lua/list.lua
	luaList string

	scriptStatus = libScript("status", luaStatus)
	scriptList   = libScript("list", luaList)
)

//go:embed lua/trim.lua
var luaTrim string

var scriptTrim = plainScript("trim", luaTrim)

//go:embed lua/reap.lua
var luaReap string

var scriptReap = plainScript("reap", luaReap)

//go:embed lua/own.lua
var luaOwn string

var scriptOwn = plainScript("own", luaOwn)

// scriptInfo names a loaded script for errors: Redis reports a failing
// line of the text it ran ("user_script:<n>"), which for a script with
// lib.lua prepended is off by lib.lua's length.
type scriptInfo struct {
	name string
	libs []libPart // the library files before the body, in order (none: no library)
}

// libPart is one library file prepended to a script.
type libPart struct {
	name  string
	lines int
}

// libParts are the library files libScript prepends, in order.
var libParts = []struct{ name, src string }{{"lib.lua", luaLib}, {"conns.lua", luaConns}}

var (
	scriptsMu sync.Mutex
	scripts   = map[string]scriptInfo{} // by SHA1, as Redis's errors name them
)

// libScript is a script made of the library files and body, registered as
// name.lua.
func libScript(name, body string) *redis.Script {
	var src strings.Builder
	var parts []libPart
	for _, l := range libParts {
		text := l.src + "\n"
		src.WriteString(text)
		parts = append(parts, libPart{l.name, strings.Count(text, "\n")})
	}
	return registerScript(name, src.String(), parts, body)
}

// plainScript is a script without the library, registered as name.lua.
func plainScript(name, body string) *redis.Script {
	return registerScript(name, "", nil, body)
}

func registerScript(name, lib string, parts []libPart, body string) *redis.Script {
	sc := redis.NewScript(lib + body)
	scriptsMu.Lock()
	scripts[sc.Hash()] = scriptInfo{name: name, libs: parts}
	scriptsMu.Unlock()
	return sc
}

var (
	scriptLineRE = regexp.MustCompile(`user_script:(\d+)`)
	scriptHashRE = regexp.MustCompile(`script: ([0-9a-f]{40})`)
)

// scriptError rewrites the location in a Lua error from one of the
// registered scripts as "<name>.lua:<line>" (or "lib.lua:<line>",
// "conns.lua:<line>"). The
// result wraps err, so errors.As finds the redis.Error behind it.
func scriptError(err error) error {
	var rerr redis.Error
	if err == nil || !errors.As(err, &rerr) {
		return err
	}
	msg := err.Error()
	h := scriptHashRE.FindStringSubmatch(msg)
	if h == nil {
		return err
	}
	scriptsMu.Lock()
	info, ok := scripts[h[1]]
	scriptsMu.Unlock()
	if !ok {
		return err
	}
	where := info.name + ".lua"
	msg = scriptLineRE.ReplaceAllStringFunc(msg, func(m string) string {
		n, _ := strconv.Atoi(strings.TrimPrefix(m, "user_script:"))
		for _, l := range info.libs {
			if n <= l.lines {
				return l.name + ":" + strconv.Itoa(n)
			}
			n -= l.lines
		}
		return info.name + ".lua:" + strconv.Itoa(n)
	})
	return &luaError{msg: fmt.Sprintf("%s: %s", where, msg), err: err}
}

// luaError is a script's error with its location in the .lua files.
type luaError struct {
	msg string
	err error
}

func (e *luaError) Error() string { return e.msg }
func (e *luaError) Unwrap() error { return e.err }
