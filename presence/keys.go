package presence

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

// Deadlines is the deadline index: a sorted set userId -> deadline in ms
// since the epoch on the Redis server's clock.
func (k Keys) Deadlines() string { return k.prefix + "deadlines" }

// Sessions maps userId -> the version of the current session's online event.
func (k Keys) Sessions() string { return k.prefix + "sessions" }

// Clock holds the last event version handed out.
func (k Keys) Clock() string { return k.prefix + "clock" }

// Outbox is the stream of events waiting to be published to NATS.
func (k Keys) Outbox() string { return k.prefix + "outbox" }

// SweepMarker holds the Redis time (ms) of the last reconciler sweep.
func (k Keys) SweepMarker() string { return k.prefix + "sweep" }

// GraceCutoff exists while a post-outage grace pass is running.
func (k Keys) GraceCutoff() string { return k.prefix + "grace" }

// Epoch marks the presence data set; its disappearance means Redis lost data.
func (k Keys) Epoch() string { return k.prefix + "epoch" }
