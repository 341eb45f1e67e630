package presence

import (
	"embed"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
)

// luaFiles is every script source, lib.lua included, for ScriptCommands: a
// script added to lua/ is read without being listed anywhere.
//
//go:embed lua/*.lua
var luaFiles embed.FS

// containerCommands are the Redis commands whose ACL and meaning depend on
// a subcommand (ACL rules name them "xinfo|groups").
var containerCommands = map[string]bool{
	"ACL": true, "CLIENT": true, "CLUSTER": true, "COMMAND": true, "CONFIG": true, "FUNCTION": true,
	"LATENCY": true, "MEMORY": true, "MODULE": true, "OBJECT": true, "PUBSUB": true, "SCRIPT": true,
	"SLOWLOG": true, "XGROUP": true, "XINFO": true,
}

var (
	redisCallRE  = regexp.MustCompile(`redis\.p?call\s*\(`)
	literalArgRE = regexp.MustCompile(`^\s*(?:'([A-Za-z_-]+)'|"([A-Za-z_-]+)")`)
	nextArgRE    = regexp.MustCompile(`^\s*,\s*(?:'([A-Za-z_-]+)'|"([A-Za-z_-]+)")`)
)

// ScriptCommands returns the Redis commands the embedded scripts (every
// file in presence/lua) run through redis.call and redis.pcall, upper case,
// sorted, each once; a command with subcommands is named with its
// subcommand, "XINFO GROUPS". It fails, naming the file and line, on a call
// whose command (or subcommand) is not a string literal: the set would be
// incomplete. `presenced check` probes these commands.
func ScriptCommands() ([]string, error) {
	files, err := luaFiles.ReadDir("lua")
	if err != nil {
		return nil, fmt.Errorf("read the embedded scripts: %w", err)
	}
	var cmds []string
	for _, f := range files {
		src, err := luaFiles.ReadFile(path.Join("lua", f.Name()))
		if err != nil {
			return nil, fmt.Errorf("read the embedded scripts: %w", err)
		}
		found, err := luaCommands(f.Name(), string(src))
		if err != nil {
			return nil, err
		}
		cmds = append(cmds, found...)
	}
	slices.Sort(cmds)
	return slices.Compact(cmds), nil
}

// luaCommands returns the commands of the redis.call and redis.pcall calls
// in src (a file named name), comments left out.
func luaCommands(name, src string) ([]string, error) {
	src = stripLuaComments(src)
	var cmds []string
	for _, loc := range redisCallRE.FindAllStringIndex(src, -1) {
		line := 1 + strings.Count(src[:loc[0]], "\n")
		rest := src[loc[1]:]
		m := literalArgRE.FindStringSubmatch(rest)
		if m == nil {
			return nil, fmt.Errorf("%s:%d: redis.call with a command that is not a string literal: spell the command out", name, line)
		}
		cmd := strings.ToUpper(m[1] + m[2])
		if containerCommands[cmd] {
			sub := nextArgRE.FindStringSubmatch(rest[len(m[0]):])
			if sub == nil {
				return nil, fmt.Errorf("%s:%d: redis.call(%q) with a subcommand that is not a string literal: spell it out", name, line, cmd)
			}
			cmd += " " + strings.ToUpper(sub[1]+sub[2])
		}
		cmds = append(cmds, cmd)
	}
	return cmds, nil
}

// stripLuaComments blanks the "--" line comments of src (not those in
// string literals), keeping its lines. Long comments and long strings
// ("--[[", "[[") are not used by the scripts and are not recognised.
func stripLuaComments(src string) string {
	var b strings.Builder
	b.Grow(len(src))
	for _, line := range strings.SplitAfter(src, "\n") {
		var quote byte
		cut := len(line)
		for i := 0; i < len(line); i++ {
			c := line[i]
			switch {
			case quote != 0 && c == '\\':
				i++
			case quote != 0 && c == quote:
				quote = 0
			case quote != 0:
			case c == '\'' || c == '"':
				quote = c
			case c == '-' && i+1 < len(line) && line[i+1] == '-':
				cut = i
			}
			if cut < len(line) {
				break
			}
		}
		b.WriteString(line[:cut])
		if cut < len(line) && strings.HasSuffix(line, "\n") {
			b.WriteByte('\n')
		}
	}
	return b.String()
}
