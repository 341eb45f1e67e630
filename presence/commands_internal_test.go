package presence

import (
	"slices"
	"strings"
	"testing"
)

// The commands the scripts run, as read from their sources. A script that
// starts calling another command changes this list: update it, the ACL in
// deploy/redis/users.acl and the probe of presenced check
// (cmd/presenced/check.go, whose test fails until it has one).
func TestScriptCommands(t *testing.T) {
	got, err := ScriptCommands()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"DEL", "EXISTS", "GET", "GETDEL", "HDEL", "HGET", "HGETALL", "HINCRBY", "HKEYS", "HLEN", "HMGET", "HSCAN", "HSET", "HSETNX",
		"INCR", "INCRBY", "PEXPIREAT", "PTTL", "SET", "TIME", "TYPE", "XADD", "XCLAIM", "XGROUP DELCONSUMER", "XINFO CONSUMERS", "XINFO GROUPS",
		"XPENDING", "XRANGE", "XTRIM", "ZADD", "ZCOUNT", "ZRANGEBYSCORE", "ZREM"}
	if !slices.Equal(got, want) {
		t.Fatalf("ScriptCommands() =\n%q\nwant\n%q", got, want)
	}
}

func TestLuaCommands(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
		err       string
	}{
		{"call and pcall", "redis.call('GET', k)\nlocal x = redis.pcall( \"set\" , k, v)", []string{"GET", "SET"}, ""},
		{"subcommand", "redis.call('XINFO', 'GROUPS', k)\nredis.call('xgroup', \"delconsumer\", k, g, c)", []string{"XINFO GROUPS", "XGROUP DELCONSUMER"}, ""},
		{"comments left out", "-- redis.call('FLUSHALL')\nredis.call('GET', k) -- redis.call('DEL', k)", []string{"GET"}, ""},
		{"dashes in a string are not a comment", "redis.call('SET', k, '--') redis.call('DEL', k)", []string{"SET", "DEL"}, ""},
		{"prose is not a call", "-- goes through redis.pcall, so\nlocal x = 1", nil, ""},
		{"command in a variable", "local c = 'GET'\nredis.call(c, k)", nil, "x.lua:2: redis.call with a command that is not a string literal"},
		{"unpacked table", "redis.call(unpack(args))", nil, "x.lua:1: redis.call with a command that is not a string literal"},
		{"subcommand in a variable", "redis.call('XINFO', sub, k)", nil, `x.lua:1: redis.call("XINFO") with a subcommand that is not a string literal`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := luaCommands("x.lua", tc.src)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("luaCommands = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
