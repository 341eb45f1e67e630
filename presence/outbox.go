package presence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/presenced/presenced/contract"
	"github.com/redis/go-redis/v9"
)

// OutboxGroup is the consumer group every replica reads the outbox through.
const OutboxGroup = "presenced"

// Event is one presence transition taken from the outbox.
type Event struct {
	// ID is the outbox entry id; Ack takes it. The events of one script
	// call share one entry, so consecutive events may carry the same ID.
	ID     string
	UserID string
	Status contract.Status // online, offline, or reset (UserID empty)
	// Reason is heartbeat for online (resync for an online that
	// re-announces a session after a partial data loss, see
	// Store.Reannounce), expired or disconnect for offline, data_loss
	// for reset.
	Reason  contract.Reason
	Version int64 // strictly increasing across one user's events
	// Deadline is the deadline that passed, for expired offlines (else zero).
	Deadline time.Time
	// Partition and Partitions: on a reset read from the outbox of one
	// partition of a Redis Cluster, the partition it covers (see
	// contract.Event.Partitions); zero otherwise.
	Partition, Partitions int
}

// At is when the transition happened: Redis server time, from the version
// (microseconds since the epoch, made monotonic by the version clock).
func (e Event) At() time.Time { return time.UnixMicro(e.Version).UTC() }

// Outbox reads the event stream through the consumer group as one consumer
// (one replica). Entries stay pending until acknowledged; entries pending on
// a consumer that died are taken over by Reclaim. An Outbox is used by one
// goroutine at a time.
type Outbox struct {
	rdb      redis.UniversalClient
	key      string
	consumer string
	reclaim  string // XAUTOCLAIM cursor
	floor    string // key of the latest trim's MINID
	// retention in ms, formatted for the trim script
	retention string
	// part and parts: the partition of a Redis Cluster this outbox belongs
	// to (Store.part); zero on one server.
	part, parts int
	// onRead, when set (a partition of a Cluster), is told the events of
	// every batch read, before the relay publishes them.
	onRead func(ctx context.Context, events []Event)
}

// Outbox returns the outbox reader for consumer, a name unique to this replica.
func (s *Store) Outbox(consumer string) *Outbox {
	return &Outbox{rdb: s.rdb, key: s.keys.Outbox(), consumer: consumer, reclaim: "0-0",
		floor: s.keys.OutboxFloor(), retention: strconv.FormatInt(s.opts.OutboxRetention.Milliseconds(), 10),
		part: s.part, parts: s.parts}
}

// Init creates the stream and the consumer group if they do not exist. The
// group starts at the beginning of the stream, so events written before any
// reader existed are delivered too.
func (o *Outbox) Init(ctx context.Context) error {
	err := o.rdb.XGroupCreateMkStream(ctx, o.key, OutboxGroup, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create outbox group: %w", err)
	}
	return nil
}

// IsNoGroup reports whether err says the stream or group is gone (Redis lost
// its data); Init recreates them.
func IsNoGroup(err error) bool {
	return err != nil && strings.Contains(err.Error(), "NOGROUP")
}

// ReadNew returns up to count entries never delivered to any consumer,
// waiting up to block for the first. No entries is not an error.
func (o *Outbox) ReadNew(ctx context.Context, count int, block time.Duration) ([]Event, error) {
	return o.read(ctx, ">", count, block)
}

// ReadPending returns up to count entries delivered to this consumer and not
// yet acknowledged (after a failed publish).
func (o *Outbox) ReadPending(ctx context.Context, count int) ([]Event, error) {
	return o.read(ctx, "0", count, -1)
}

func (o *Outbox) read(ctx context.Context, id string, count int, block time.Duration) ([]Event, error) {
	streams, err := o.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: OutboxGroup, Consumer: o.consumer, Streams: []string{o.key, id}, Count: int64(count), Block: block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	var out []Event
	for _, st := range streams {
		out = appendEvents(out, st.Messages)
	}
	return o.decoded(ctx, out), nil
}

// Reclaim takes over up to count entries that have been pending on any
// consumer for at least minIdle (their replica died between reading and
// acknowledging), walking the pending list across calls.
func (o *Outbox) Reclaim(ctx context.Context, minIdle time.Duration, count int) ([]Event, error) {
	msgs, next, err := o.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: o.key, Group: OutboxGroup, Consumer: o.consumer, MinIdle: minIdle, Start: o.reclaim, Count: int64(count),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("reclaim outbox entries: %w", err)
	}
	o.reclaim = next
	return o.decoded(ctx, appendEvents(nil, msgs)), nil
}

// Own returns the entries of ids still pending on this consumer, in the
// order given, and resets their idle time, in one atomic step: for
// ClaimAfter from the moment it was called, no other consumer can reclaim
// the entries it returned. Entries acknowledged meanwhile, or reclaimed by
// another consumer, are left out and left alone. The relay calls it before
// publishing entries it read, so a replica that was paused for longer than
// the claim time does not publish what another replica published already.
func (o *Outbox) Own(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 2+len(ids))
	args = append(args, OutboxGroup, o.consumer)
	for _, id := range ids {
		args = append(args, id)
	}
	owned, err := scriptOwn.Run(ctx, o.rdb, []string{o.key}, args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("confirm %d outbox entries: %w", len(ids), scriptError(err))
	}
	return owned, nil
}

// Ack acknowledges published entries.
func (o *Outbox) Ack(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := o.rdb.XAck(ctx, o.key, OutboxGroup, ids...).Err(); err != nil {
		return fmt.Errorf("ack %d outbox entries: %w", len(ids), err)
	}
	return nil
}

// Trim drops entries every consumer has acknowledged and that are older
// than Options.OutboxRetention, and returns how many.
func (o *Outbox) Trim(ctx context.Context) (int64, error) {
	n, err := scriptTrim.Run(ctx, o.rdb, []string{o.key, o.floor}, OutboxGroup, o.retention).Int64()
	if err != nil {
		return 0, fmt.Errorf("trim outbox: %w", scriptError(err))
	}
	return n, nil
}

// RemoveIdleConsumers removes from the group the consumers with nothing
// pending that have been idle longer than idle (those left by replicas that
// stopped without Leave: one per crash otherwise) and returns how many. A
// consumer with pending entries is kept. A live consumer removed (on Redis
// 7.0, reads that return nothing do not count as activity) is created again
// by its next read that returns entries; it had nothing pending, so nothing
// is lost. See lua/reap.lua.
func (o *Outbox) RemoveIdleConsumers(ctx context.Context, idle time.Duration) (int64, error) {
	n, err := scriptReap.Run(ctx, o.rdb, []string{o.key}, OutboxGroup, idle.Milliseconds()).Int64()
	if err != nil {
		return 0, fmt.Errorf("remove idle outbox consumers: %w", scriptError(err))
	}
	return n, nil
}

// Len returns the number of entries in the outbox: the unpublished events,
// plus those kept for the retention (or at most one already published when
// there is none; see Trim).
func (o *Outbox) Len(ctx context.Context) (int64, error) {
	n, err := o.rdb.XLen(ctx, o.key).Result()
	if err != nil {
		return 0, fmt.Errorf("outbox length: %w", err)
	}
	return n, nil
}

// Leave removes this consumer from the group if nothing is pending on it
// (a consumer with pending entries stays, so another replica reclaims them).
func (o *Outbox) Leave(ctx context.Context) error {
	pending, err := o.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: o.key, Group: OutboxGroup, Consumer: o.consumer, Start: "-", End: "+", Count: 1,
	}).Result()
	if err != nil {
		return fmt.Errorf("check pending outbox entries: %w", err)
	}
	if len(pending) > 0 {
		return nil
	}
	if err := o.rdb.XGroupDelConsumer(ctx, o.key, OutboxGroup, o.consumer).Err(); err != nil {
		return fmt.Errorf("leave outbox group: %w", err)
	}
	return nil
}

// ErrBadEntry is wrapped in the error logged for an outbox entry that cannot
// be decoded; such entries are acknowledged and dropped.
var ErrBadEntry = errors.New("malformed outbox entry")

// decoded marks the resets of a partition's outbox with the partition and
// tells onRead of the batch.
func (o *Outbox) decoded(ctx context.Context, events []Event) []Event {
	if o.parts > 0 {
		for i := range events {
			if events[i].Status == contract.StatusReset {
				events[i].Partition, events[i].Partitions = o.part, o.parts
			}
		}
	}
	if o.onRead != nil && len(events) > 0 {
		o.onRead(ctx, events)
	}
	return events
}

// appendEvents decodes each entry into its events (the format is in
// layout.go: decodeEntry, decodeLine). Decoding never fails: a malformed
// line or entry becomes an Event with an empty Status, which the relay
// acknowledges and reports (see Event.Valid); a malformed line keeps its
// version slot, so the lines after it keep their versions.
func appendEvents(out []Event, msgs []redis.XMessage) []Event {
	for _, m := range msgs {
		entry, ok := decodeEntry(m.Values)
		if !ok {
			out = append(out, Event{ID: m.ID})
			continue
		}
		for v := entry.first; ; v++ {
			line, more := entry.next()
			if !more {
				break
			}
			l, ok := decodeLine(line)
			if !ok {
				out = append(out, Event{ID: m.ID})
				continue
			}
			out = append(out, Event{ID: m.ID, Status: l.status, Reason: l.reason, UserID: l.user, Version: v, Deadline: l.expiry})
		}
	}
	return out
}

// Valid reports whether the event decoded completely.
func (e Event) Valid() error {
	if e.Status == contract.StatusReset && e.UserID == "" && e.Version > 0 {
		return nil
	}
	if (e.Status != contract.StatusOnline && e.Status != contract.StatusOffline) || e.UserID == "" || e.Version <= 0 || e.Reason == "" {
		return fmt.Errorf("%w %s: %+v", ErrBadEntry, e.ID, e)
	}
	return nil
}
