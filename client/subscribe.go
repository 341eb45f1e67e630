package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/presenced/presenced/contract"
)

// Subscribe calls handler with each online and offline event and each
// reset notice, one call at a time, on a goroutine of its own. It returns
// once the server has the subscriptions, so every event published
// afterwards is seen.
//
// Events are filtered by version: one whose version is not above the last
// applied for its user is dropped (a duplicate, or an older event arriving
// late, such as a republish after a replica failed). To bound memory, the
// version of a user's offline event is kept only for the tombstone TTL
// (WithTombstoneTTL, 10 minutes by default); an event of that user older
// than the offline one arriving after that is applied. A user's online
// version is kept while they are online.
//
// A reset (Status StatusReset) carries the version at which presenced's
// data set was replaced: every session whose events have a lower version
// was lost with the data, without offline events; sessions with a higher
// version are live. On Redis Cluster a reset may concern one partition of
// the data set only (Partitions above 0): it says nothing of the users of
// other partitions, and Event.Covers names the users it concerns. A reset
// can arrive after newer events (its outbox entry republished late by
// another replica), so the handler must clear only the users the reset
// covers whose last applied version is below the reset's Version, and keep
// the others; clearing everything would drop users who came online just
// before it arrived, or who are in another partition, and no further event
// brings them back while their session lasts. Subscribe forgets the
// versions below the reset of the users it covers the same way, and passes
// each reset on once per scope (the whole data set, or one partition among
// a number of partitions): a repeat, or a reset not above one already
// passed for its scope or for the whole data set, is dropped. The highest
// reset version passed on per scope is a floor: an event of a user
// Subscribe holds no version for is dropped when its version is not above
// the floors covering that user (the whole data set's and their
// partition's), since it describes a lost session (a late republish) and
// must not bring that user back.
//
// Events that arrive while the handler is busy are buffered (65536); beyond
// that NATS drops them and reports nats.ErrSlowConsumer to the connection's
// error handler, and a consumer keeping state should resynchronise (List).
//
// The subscription ends when ctx is done or stop is called. stop waits for
// the handler's last call to return, so it must not be called from the
// handler; it may be called more than once. Events still buffered when it
// ends are discarded.
func (c *Client) Subscribe(ctx context.Context, handler func(Event)) (stop func() error, err error) {
	msgs := make(chan *nats.Msg, subscribeBuffer)
	var subs []*nats.Subscription
	unsubscribe := func() error {
		var errs []error
		for _, s := range subs {
			if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	for _, subject := range []string{c.subjects().Online(), c.subjects().Offline(), c.subjects().Reset()} {
		s, err := c.nc.ChanSubscribe(subject, msgs)
		if err != nil {
			_ = unsubscribe()
			return nil, fmt.Errorf("subscribe %s: %w", subject, err)
		}
		subs = append(subs, s)
	}
	if err := c.nc.FlushTimeout(c.timeout); err != nil {
		_ = unsubscribe()
		return nil, fmt.Errorf("subscribe to presence events: %w", err)
	}

	quit := make(chan struct{})
	done := make(chan struct{})
	var unsubErr error
	go func() {
		defer close(done)
		defer func() { unsubErr = unsubscribe() }()
		f := newVersionFilter(c.tombstoneTTL)
		tick := time.NewTicker(max(c.tombstoneTTL/2, 10*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-quit:
				return
			case now := <-tick.C:
				f.prune(now)
			case m := <-msgs:
				if m.Header.Get(ProbeHeader) != "" {
					continue // `presenced check` testing its publish permission
				}
				var ev Event
				if err := ev.UnmarshalJSON(m.Data); err != nil || !valid(ev) {
					c.log.Warn("dropped an undecodable presence event", "subject", m.Subject, "err", err, "data", truncate(m.Data))
					continue
				}
				now := time.Now()
				f.prune(now)
				if f.apply(ev, now) {
					handler(ev)
				}
			}
		}
	}()
	var once sync.Once
	return func() error {
		once.Do(func() { close(quit) })
		<-done
		return unsubErr
	}, nil
}

// valid reports whether ev is an event Subscribe passes on.
func valid(ev Event) bool {
	switch ev.Status {
	case StatusOnline, StatusOffline:
		return ev.UserID != ""
	case StatusReset:
		return ev.UserID == ""
	}
	return false
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// versionFilter remembers the last version applied per user, and the reset
// floors. Not safe for concurrent use.
type versionFilter struct {
	ttl   time.Duration
	reset int64 // the highest reset of the whole data set applied: its floor
	// scopes are the floors of the partitions' resets applied above reset,
	// one entry per partition count seen (usually one), so an event's floor
	// costs a hash per entry.
	scopes []scopeFloors
	last   map[string]int64
	// tombs are the offline events applied, oldest first; each is forgotten
	// after ttl unless a later event replaced it.
	tombs []tombstone
}

// scopeFloors are the floors of the partitions among n: the highest
// version of a reset applied per partition. A map, not a slice of n: n
// comes from the wire.
type scopeFloors struct {
	n      int
	floors map[int]int64
}

type tombstone struct {
	id      string
	version int64
	expires time.Time
}

func newVersionFilter(ttl time.Duration) *versionFilter {
	return &versionFilter{ttl: ttl, last: map[string]int64{}}
}

// floor returns the highest reset version applied that covers id.
func (f *versionFilter) floor(id string) int64 {
	fl := f.reset
	for _, s := range f.scopes {
		fl = max(fl, s.floors[contract.PartitionOf(id, s.n)])
	}
	return fl
}

// scope returns the floors of the partitions among n, added if new.
func (f *versionFilter) scope(n int) map[int]int64 {
	for _, s := range f.scopes {
		if s.n == n {
			return s.floors
		}
	}
	f.scopes = append(f.scopes, scopeFloors{n: n, floors: map[int]int64{}})
	return f.scopes[len(f.scopes)-1].floors
}

// applyReset records the reset ev and reports whether it is above the
// floor of its scope, so it is to be passed on.
func (f *versionFilter) applyReset(ev Event) bool {
	if ev.Version <= f.reset {
		return false // a repeat, or older than a reset of everything applied
	}
	if ev.Partitions > 0 {
		floors := f.scope(ev.Partitions)
		if ev.Version <= floors[ev.Partition] {
			return false // a repeat, or older than a reset of this partition
		}
		floors[ev.Partition] = ev.Version
	} else {
		f.reset = ev.Version
		// Floors at or below the new one say nothing more.
		for i := range f.scopes {
			maps.DeleteFunc(f.scopes[i].floors, func(_ int, v int64) bool { return v <= ev.Version })
		}
		f.scopes = slices.DeleteFunc(f.scopes, func(s scopeFloors) bool { return len(s.floors) == 0 })
	}
	// The sessions below the reset were lost with the data; later ones
	// (applied before a late reset arrived) are live, and so are the users
	// the reset does not cover.
	lost := func(id string, v int64) bool { return v < ev.Version && ev.Covers(id) }
	maps.DeleteFunc(f.last, lost)
	f.tombs = slices.DeleteFunc(f.tombs, func(t tombstone) bool { return lost(t.id, t.version) })
	return true
}

// apply records ev and reports whether it is newer than what was applied.
func (f *versionFilter) apply(ev Event, now time.Time) bool {
	if ev.Status == StatusReset {
		return f.applyReset(ev)
	}
	v, ok := f.last[ev.UserID]
	switch {
	case ok && ev.Version <= v:
		return false
	case !ok && ev.Version <= f.floor(ev.UserID):
		return false // a session lost with the data, republished late
	}
	f.last[ev.UserID] = ev.Version
	if ev.Status == StatusOffline {
		f.tombs = append(f.tombs, tombstone{id: ev.UserID, version: ev.Version, expires: now.Add(f.ttl)})
	}
	return true
}

// prune forgets the offline versions older than ttl.
func (f *versionFilter) prune(now time.Time) {
	n := 0
	for n < len(f.tombs) && !f.tombs[n].expires.After(now) {
		t := f.tombs[n]
		if f.last[t.id] == t.version {
			delete(f.last, t.id)
		}
		n++
	}
	if n == 0 {
		return
	}
	f.tombs = f.tombs[n:]
	if cap(f.tombs) > 1024 && len(f.tombs) < cap(f.tombs)/4 {
		f.tombs = append([]tombstone(nil), f.tombs...) // let the old array go
	}
}

// ProbeHeader marks the empty messages `presenced check` publishes to the
// event subjects to prove its permissions; Subscribe skips them.
const ProbeHeader = contract.ProbeHeader
