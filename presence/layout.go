package presence

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/presenced/presenced/contract"
)

// The Redis layout as Go reads it: the key names, the epoch's value and the
// outbox entry format. The scripts in lua/ write the same layout (lua/lib.lua
// describes it); this file is the only place Go spells it, so the store, the
// outbox reader and the view cannot drift apart.

// Keys names every Redis key presenced uses under one prefix. The presence
// keys themselves are the seed's format, Prefix+"user:"+userId; the rest are
// a few shared structures, so Redis memory grows with the users online, not
// with every user ever seen.
type Keys struct {
	prefix string
}

// NewKeys returns the key names under prefix (e.g. "presence:").
func NewKeys(prefix string) Keys { return Keys{prefix: prefix} }

// Prefix is the prefix every key starts with.
func (k Keys) Prefix() string { return k.prefix }

// UserPrefix is the prefix of the per-user presence keys, "presence:user:".
func (k Keys) UserPrefix() string { return k.prefix + "user:" }

// User is the presence key of one user: "presence:user:{userId}" = "1".
func (k Keys) User(id string) string { return k.prefix + "user:" + id }

// Sessions is the key of sessions shard n: a HASH userId -> the version of
// the open session's online event (see lua/lib.lua for the layout).
func (k Keys) Sessions(n int) string { return k.prefix + "s:" + strconv.Itoa(n) }

// Dir is the index directory: a ZSET of bucket keys scored by the end of
// their slot (ms since the epoch, Redis clock).
func (k Keys) Dir() string { return k.prefix + "dir" }

// Count holds the number of open sessions.
func (k Keys) Count() string { return k.prefix + "count" }

// Clock holds the last event version handed out.
func (k Keys) Clock() string { return k.prefix + "clock" }

// Outbox is the stream of events waiting to be published to NATS.
func (k Keys) Outbox() string { return k.prefix + "outbox" }

// OutboxFloor holds the MINID of the latest outbox trim (see View).
func (k Keys) OutboxFloor() string { return k.prefix + "outbox:floor" }

// SweepMarker holds the Redis time (ms) of the last reconciler sweep.
func (k Keys) SweepMarker() string { return k.prefix + "sweep" }

// GraceCutoff exists while a post-outage grace pass is running.
func (k Keys) GraceCutoff() string { return k.prefix + "grace" }

// Epoch marks the presence data set ("<version>:<shards>", the version of
// the reset that announced it); its disappearance means Redis lost the data
// set, and a partial loss rewrites it (see Store.ResetAfterLoss).
func (k Keys) Epoch() string { return k.prefix + "epoch" }

// Resync is the cursor of the walk that re-announces the sessions that
// survived a partial data loss ("<reset version>:<next shard>"); it exists
// only while that walk is under way.
func (k Keys) Resync() string { return k.prefix + "resync" }

// Gateway holds a gateway's current lease, "<lease> <instanceId>", with
// the lease time as its TTL (see lua/lease.lua).
func (k Keys) Gateway(id string) string { return k.prefix + "gw:" + id }

// LeaseCounts is a HASH lease -> connections registered under it.
func (k Keys) LeaseCounts() string { return k.prefix + "leasen" }

// parseLease splits a gateway key's value into the lease number and the
// instance that holds it.
func parseLease(v string) (lease, instance string, ok bool) {
	lease, instance, ok = strings.Cut(v, " ")
	if !ok || lease == "" {
		return "", "", false
	}
	if _, err := strconv.ParseUint(lease, 10, 64); err != nil {
		return "", "", false
	}
	return lease, instance, true
}

// epoch is the value of the epoch key, "<version>:<shards>": the version of
// the reset that announced the data set and its sessions shard count.
// lua/lib.lua (check_epoch) writes it when it creates the data set and
// lua/reset.lua rewrites the version; Go only reads it. The zero epoch
// stands for a missing key (no data set).
type epoch struct {
	version int64
	shards  int
}

// String encodes e as the epoch key holds it.
func (e epoch) String() string {
	return strconv.FormatInt(e.version, 10) + ":" + strconv.Itoa(e.shards)
}

// errBadEpoch is wrapped by parseEpoch's errors.
var errBadEpoch = errors.New("malformed epoch")

// parseEpoch decodes an epoch key's value. A value without a shard count
// (the first layout's, which the scripts refuse) is an error.
func parseEpoch(s string) (epoch, error) {
	v, n, ok := strings.Cut(s, ":")
	if !ok || !isDigits(v) || !isDigits(n) {
		return epoch{}, fmt.Errorf("%w %q: want \"<version>:<shards>\"", errBadEpoch, s)
	}
	version, err1 := strconv.ParseInt(v, 10, 64)
	shards, err2 := strconv.Atoi(n)
	if err1 != nil || err2 != nil || version <= 0 || shards <= 0 {
		return epoch{}, fmt.Errorf("%w %q: want a positive version and shard count", errBadEpoch, s)
	}
	return epoch{version: version, shards: shards}, nil
}

// The fields of an outbox entry, written by flush in lua/lib.lua. An entry
// holds the events of one script call.
const (
	entryVersion = "v" // the first event's version; each next event's is one more
	entryEvents  = "e" // one event line each, "\n"-separated (see decodeLine)
)

// outboxEntry is one outbox entry, its lines not yet decoded.
type outboxEntry struct {
	first int64  // version of the first line's event
	lines string // the lines not yet taken by next
}

// decodeEntry reads an entry's fields. ok is false when the version is
// missing or not a number, or the entry holds no line.
func decodeEntry(values map[string]any) (e outboxEntry, ok bool) {
	body, ok1 := values[entryEvents].(string)
	vs, _ := values[entryVersion].(string)
	v, err := strconv.ParseInt(vs, 10, 64)
	if !ok1 || body == "" || err != nil {
		return outboxEntry{}, false
	}
	return outboxEntry{first: v, lines: body}, true
}

// next takes the next line (without its newline) off e; ok is false once
// every line was taken. The n-th line taken (from 0) is the event of
// version e.first+n, whether or not it decodes.
func (e *outboxEntry) next() (line string, ok bool) {
	if e.lines == "" {
		return "", false
	}
	if i := strings.IndexByte(e.lines, '\n'); i >= 0 {
		line, e.lines = e.lines[:i], e.lines[i+1:]
		return line, true
	}
	line, e.lines = e.lines, ""
	return line, true
}

// eventLine is one decoded event line.
type eventLine struct {
	status contract.Status
	reason contract.Reason
	user   string    // empty for a reset
	expiry time.Time // the deadline that passed, for expired offlines; else zero
}

// decodeLine decodes "<status> <reason> <userId>[ <deadline ms>]" (user ids
// never contain spaces or newlines; see contract.ValidateUserID; a reset's
// user id is empty: "reset data_loss "). It checks the syntax only: ok is
// false for a line without a status and a reason, or with a deadline that
// is not a number; Event.Valid judges the values. It does not allocate.
func decodeLine(line string) (l eventLine, ok bool) {
	status, rest, ok1 := strings.Cut(line, " ")
	reason, rest, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return eventLine{}, false
	}
	user, deadline, hasDeadline := strings.Cut(rest, " ")
	l = eventLine{status: contract.Status(status), reason: contract.Reason(reason), user: user}
	if hasDeadline {
		ms, err := strconv.ParseInt(deadline, 10, 64)
		if err != nil {
			return eventLine{}, false
		}
		l.expiry = time.UnixMilli(ms).UTC()
	}
	return l, true
}
