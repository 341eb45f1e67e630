package presence

import "strconv"

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
