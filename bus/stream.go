package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/presenced/presenced/contract"
)

// StreamOptions names the JetStream stream events are published to.
type StreamOptions struct {
	// Name is the stream's name; empty means core NATS (publish and flush).
	Name string
	// Subjects are the subjects the worker uses: the stream must capture
	// their three event subjects and none of the others (a stream on
	// heartbeats would store each one and answer heartbeat requests with a
	// PubAck).
	Subjects contract.Subjects
	// Duplicates is the duplicate window a created stream gets and the
	// least an existing stream may have. Zero means 2 minutes.
	Duplicates time.Duration
}

// Errors of a stream that exists but does not fit; Start wraps them with
// the stream's name and what is wrong.
var (
	ErrStreamDuplicates = errors.New("duplicate window too short")
	ErrStreamSubjects   = errors.New("wrong subjects")
	ErrStreamConfig     = errors.New("cannot take acknowledged publishes")
)

// ErrSendDeadline is reported for groups of events PublishBatch did not send
// because its sendBy had passed.
var ErrSendDeadline = errors.New("not sent: send deadline passed")

// asyncWindow is the most PubAcks PublishBatch waits for at once. The
// client's own limit is twice that, so registering a publish never stalls
// (a stall would send it later than the caller's sendBy allowed).
const asyncWindow = 4096

// startStream creates the stream, or verifies the existing one.
func (b *Bus) startStream(ctx context.Context) error {
	o := b.opts.Stream
	js, err := jetstream.New(b.nc,
		jetstream.WithPublishAsyncMaxPending(2*asyncWindow),
		jetstream.WithPublishAsyncTimeout(b.opts.PubAckTimeout))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	b.js = js
	s, err := js.Stream(ctx, o.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        o.Name,
			Description: "presence events (presenced)",
			Subjects:    eventSubjects(o.Subjects),
			Duplicates:  o.Duplicates,
		})
		if err == nil {
			b.log.Info("jetstream stream created", "stream", o.Name, "subjects", eventSubjects(o.Subjects), "duplicates", o.Duplicates)
			return nil
		}
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // another replica created it first
			s, err = js.Stream(ctx, o.Name)
		}
	}
	if err != nil {
		return fmt.Errorf("stream %q: %w", o.Name, err)
	}
	if err := CheckStream(s.CachedInfo().Config, o); err != nil {
		return fmt.Errorf("stream %q: %w", o.Name, err)
	}
	b.log.Info("jetstream stream verified", "stream", o.Name, "subjects", s.CachedInfo().Config.Subjects, "duplicates", s.CachedInfo().Config.Duplicates)
	return nil
}

func eventSubjects(s contract.Subjects) []string { return []string{s.Online(), s.Offline(), s.Reset()} }

// CheckStream reports whether a stream with configuration c can take the
// events of o.Subjects with acknowledged, deduplicated publishes: it
// captures the three event subjects and none of the worker's other
// subjects, acknowledges publishes, and keeps message ids at least
// o.Duplicates.
func CheckStream(c jetstream.StreamConfig, o StreamOptions) error {
	if o.Duplicates <= 0 {
		o.Duplicates = 2 * time.Minute
	}
	switch {
	case c.Mirror != nil:
		return fmt.Errorf("%w: it is a mirror", ErrStreamConfig)
	case c.NoAck:
		return fmt.Errorf("%w: no_ack is set", ErrStreamConfig)
	case c.Sealed:
		return fmt.Errorf("%w: it is sealed", ErrStreamConfig)
	}
	var missing, captured []string
	for _, s := range eventSubjects(o.Subjects) {
		if !matchesAny(c.Subjects, s) {
			missing = append(missing, s)
		}
	}
	others := []string{o.Subjects.Heartbeat(), o.Subjects.Disconnect()}
	for _, ep := range []string{contract.QueryStatus, contract.QueryOnline, contract.QueryList, contract.QueryCount} {
		others = append(others, o.Subjects.Query(ep))
	}
	for _, s := range others {
		if matchesAny(c.Subjects, s) {
			captured = append(captured, s)
		}
	}
	switch {
	case len(missing) > 0:
		return fmt.Errorf("%w: subjects %v do not capture %s", ErrStreamSubjects, c.Subjects, strings.Join(missing, ", "))
	case len(captured) > 0:
		return fmt.Errorf("%w: subjects %v also capture %s (it would store them and answer their requests with PubAcks): give it only %s",
			ErrStreamSubjects, c.Subjects, strings.Join(captured, ", "), strings.Join(eventSubjects(o.Subjects), ", "))
	case c.Duplicates < o.Duplicates:
		return fmt.Errorf("%w: %s, want at least %s", ErrStreamDuplicates, c.Duplicates, o.Duplicates)
	}
	return nil
}

func matchesAny(filters []string, subject string) bool {
	for _, f := range filters {
		if subjectMatches(f, subject) {
			return true
		}
	}
	return false
}

// subjectMatches reports whether the literal subject matches filter, which
// may hold the wildcards * (one token) and > (one or more last tokens).
func subjectMatches(filter, subject string) bool {
	ft, st := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, f := range ft {
		if f == ">" {
			return len(st) > i
		}
		if i >= len(st) || (f != "*" && f != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}

// PublishBatch sends the groups of events in order to their subjects, each
// event with its Nats-Msg-Id, and waits (bounded by ctx) until the server
// confirmed them. A group is sent whole or not at all: none is started once
// sendBy has passed (zero: no limit). With a stream (Options.Stream) an
// event is confirmed by its PubAck, a duplicate the stream dropped
// included; on core NATS by a flush, which confirms everything sent before
// it. It returns one error per group: nil when every event of the group is
// confirmed, else the first error. Only one goroutine may call it at a time.
func (b *Bus) PublishBatch(ctx context.Context, subjects contract.Subjects, groups [][]contract.Event, sendBy time.Time) []error {
	errs := make([]error, len(groups))
	set := func(g int, err error) {
		if errs[g] == nil {
			errs[g] = err
		}
	}
	// The rest of the groups are not sent: record why.
	skip := func(from int, err error) {
		for g := from; g < len(groups); g++ {
			set(g, err)
		}
	}
	if b.js == nil {
		sent := len(groups)
	core:
		for g, evs := range groups {
			if late(sendBy) {
				skip(g, ErrSendDeadline)
				sent = g
				break
			}
			for _, ev := range evs {
				if err := b.send(subjects, ev); err != nil {
					skip(g, err)
					sent = g + 1
					break core
				}
			}
		}
		if err := b.Flush(ctx); err != nil {
			for g := range sent {
				set(g, err)
			}
		}
		return errs
	}
	type pending struct {
		g   int
		paf jetstream.PubAckFuture
	}
	var (
		pafs   []pending
		waited int // pafs before this have their outcome in errs
	)
	wait := func(upTo int) {
		for ; waited < upTo; waited++ {
			if err := waitAck(ctx, pafs[waited].paf); err != nil {
				set(pafs[waited].g, err)
			}
		}
	}
jet:
	for g, evs := range groups {
		if late(sendBy) {
			skip(g, ErrSendDeadline)
			break
		}
		for _, ev := range evs {
			wait(len(pafs) - asyncWindow + 1)
			m, err := b.message(subjects, ev)
			if err == nil {
				err = ctx.Err()
			}
			var paf jetstream.PubAckFuture
			if err == nil {
				paf, err = b.js.PublishMsgAsync(m)
			}
			if err != nil {
				skip(g, fmt.Errorf("publish %s: %w", subjects.Event(ev.Status), err))
				break jet
			}
			pafs = append(pafs, pending{g, paf})
		}
	}
	wait(len(pafs))
	return errs
}

func late(sendBy time.Time) bool { return !sendBy.IsZero() && !time.Now().Before(sendBy) }

func waitAck(ctx context.Context, paf jetstream.PubAckFuture) error {
	select {
	case <-paf.Ok():
		return nil
	case err := <-paf.Err():
		return fmt.Errorf("publish %s: %w", paf.Msg().Subject, err)
	case <-ctx.Done():
		return fmt.Errorf("publish %s: no PubAck: %w", paf.Msg().Subject, ctx.Err())
	}
}

// message returns ev as a message to its subject with its Nats-Msg-Id.
func (b *Bus) message(subjects contract.Subjects, ev contract.Event) (*nats.Msg, error) {
	data, err := ev.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	m := &nats.Msg{Subject: subjects.Event(ev.Status), Data: data, Header: nats.Header{}}
	m.Header.Set(nats.MsgIdHdr, ev.MsgID())
	return m, nil
}

func (b *Bus) send(subjects contract.Subjects, ev contract.Event) error {
	m, err := b.message(subjects, ev)
	if err != nil {
		return err
	}
	if err := b.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("publish %s: %w", m.Subject, err)
	}
	return nil
}
