// Package client is the Go client of presenced for other services: gateways
// send heartbeats and disconnects with it, consumers follow the online and
// offline events and ask the query service who is online.
//
// It depends on nats.go and presenced's contract package only (the wire
// types, which the server uses too; standard library only). A Client is safe for concurrent use; it does
// not own the *nats.Conn, which the caller connects and closes.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/presenced/presenced/contract"
)

// Defaults of the options.
const (
	DefaultPrefix       = "presence"
	DefaultTimeout      = 5 * time.Second
	DefaultBatchSize    = 10000
	DefaultTombstoneTTL = 10 * time.Minute
	DefaultRetries      = 3
)

// Backoff between attempts of a heartbeat or disconnect request: doubling
// from retryBase up to retryMax, each with up to half of it added at random.
const (
	retryBase = 50 * time.Millisecond
	retryMax  = time.Second
)

// inFlight bounds the requests one call has outstanding at once.
const inFlight = 4

// subscribeBuffer is how many events Subscribe holds for a slow handler
// before NATS drops them (reported to the connection's error handler as
// nats.ErrSlowConsumer).
const subscribeBuffer = 65536

// Client talks to presenced over one NATS connection.
type Client struct {
	nc           *nats.Conn
	prefix       string
	timeout      time.Duration
	batch        int
	tombstoneTTL time.Duration
	retries      int
	log          *slog.Logger
}

// Option configures a Client.
type Option func(*Client)

// WithPrefix sets the subject prefix presenced runs under; the default is
// DefaultPrefix ("presence").
func WithPrefix(prefix string) Option { return func(c *Client) { c.prefix = prefix } }

// WithTimeout bounds each request (a call may send several); the context
// passed to a call may end it sooner. Zero or less means DefaultTimeout.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithBatchSize sets the most ids one heartbeat, disconnect or online
// request carries; it must not exceed presenced's limit (PRESENCE_MAX_BATCH,
// 10000 by default). Requests are also split to fit the connection's max
// payload. Zero or less means DefaultBatchSize.
func WithBatchSize(n int) Option { return func(c *Client) { c.batch = n } }

// WithTombstoneTTL sets how long Subscribe remembers the version of a user's
// offline event (see Subscribe). Zero or less means DefaultTombstoneTTL.
func WithTombstoneTTL(d time.Duration) Option { return func(c *Client) { c.tombstoneTTL = d } }

// WithRetries sets how many times Heartbeat and Disconnect send a request
// again after it failed in a way that may pass: no answer within the
// timeout, no presenced replica subscribed (nats.ErrNoResponders: e.g. every
// replica is out of the queue group while Redis is unavailable), or an
// error reply marked Retry. Heartbeats and disconnects are idempotent, so a
// request that was stored but whose answer was lost does no harm when sent
// again. Zero means DefaultRetries; negative disables retries.
func WithRetries(n int) Option { return func(c *Client) { c.retries = n } }

// WithLogger sets where Subscribe reports events it cannot decode and a
// Gateway its background failures (renewals, heartbeat rounds, rejected
// connections, a lost lease); the default discards.
func WithLogger(l *slog.Logger) Option { return func(c *Client) { c.log = l } }

// New returns a Client on nc. It does no I/O.
func New(nc *nats.Conn, opts ...Option) *Client {
	c := &Client{nc: nc}
	for _, o := range opts {
		o(c)
	}
	if c.prefix == "" {
		c.prefix = DefaultPrefix
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.batch <= 0 {
		c.batch = DefaultBatchSize
	}
	switch {
	case c.retries == 0:
		c.retries = DefaultRetries
	case c.retries < 0:
		c.retries = 0
	}
	if c.tombstoneTTL <= 0 {
		c.tombstoneTTL = DefaultTombstoneTTL
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Heartbeat starts or refreshes the presence of ids. Duplicates are removed
// first; more ids than the batch size, or than fit the max payload, are sent
// as several requests, a few at a time. The Reply sums the answers: Accepted
// counts the ids stored, Rejected lists the invalid ones. A request that
// fails in a way that may pass is sent again (see WithRetries), with
// backoff, while ctx allows. If a request still fails (no answer, or
// presenced answered with an error, wrapped as ErrFailed), the error says
// which, and the Reply still counts the requests that succeeded. No ids
// means no request.
func (c *Client) Heartbeat(ctx context.Context, ids ...string) (Reply, error) {
	return c.send(ctx, "heartbeat", c.subjects().Heartbeat(), ids)
}

// Disconnect ends the sessions of ids now; each user that was online gets an
// offline event. Batching, the Reply and errors are as for Heartbeat.
func (c *Client) Disconnect(ctx context.Context, ids ...string) (Reply, error) {
	return c.send(ctx, "disconnect", c.subjects().Disconnect(), ids)
}

func (c *Client) send(ctx context.Context, op, subject string, ids []string) (Reply, error) {
	parts := c.chunks(contract.AppendUnique(make([]string, 0, len(ids)), ids))
	return c.sendAll(ctx, op, subject, len(parts), func(i int) (any, string) {
		return idsRequest{UserIDs: parts[i]}, fmt.Sprintf("%d ids", len(parts[i]))
	})
}

// sendAll sends the n requests part returns (the body and what it carries,
// for errors), a few at a time, each with retries (sendPart), and sums the
// replies.
func (c *Client) sendAll(ctx context.Context, op, subject string, n int, part func(i int) (req any, what string)) (Reply, error) {
	replies := make([]Reply, n)
	whats := make([]string, n)
	errs := c.each(ctx, n, func(ctx context.Context, i int) error {
		var req any
		req, whats[i] = part(i)
		return c.sendPart(ctx, subject, req, replyOutcome{&replies[i]})
	})
	total := Reply{Rejected: []Rejection{}}
	for i, r := range replies {
		if errs[i] != nil {
			errs[i] = fmt.Errorf("%s request %d of %d (%s): %w", op, i+1, n, whats[i], errs[i])
			continue
		}
		total.Accepted += r.Accepted
		total.Rejected = append(total.Rejected, r.Rejected...)
	}
	return total, errors.Join(errs...)
}

// outcome is the reply of a request sendPart may send again: it decodes,
// can be cleared before the next attempt, and says whether presenced
// answered with an error (and whether that error may pass).
type outcome interface {
	json.Unmarshaler
	reset()
	failure() (msg string, retry bool)
}

// replyOutcome is a heartbeat or disconnect Reply as an outcome.
type replyOutcome struct{ r *Reply }

func (o replyOutcome) UnmarshalJSON(b []byte) error { return o.r.UnmarshalJSON(b) }
func (o replyOutcome) reset()                       { *o.r = Reply{} }
func (o replyOutcome) failure() (string, bool)      { return o.r.Error, o.r.Retry }

// sendPart sends one heartbeat, disconnect or lease request, again after a
// failure that may pass, up to c.retries more times. The error holds the
// first failure and, when different, the last.
func (c *Client) sendPart(ctx context.Context, subject string, req any, out outcome) error {
	var first error
	delay := retryBase
	for attempt := 0; ; attempt++ {
		out.reset()
		err := c.call(ctx, subject, req, out, true)
		retry := err != nil && retryable(err)
		if msg, again := out.failure(); err == nil && msg != "" {
			err = fmt.Errorf("%w: %s", ErrFailed, msg)
			retry = again
		}
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
		if !retry || attempt >= c.retries || ctx.Err() != nil {
			switch {
			case attempt == 0:
				return err
			case err.Error() == first.Error():
				return fmt.Errorf("%w (%d attempts)", err, attempt+1)
			}
			return fmt.Errorf("%w (%d attempts; first: %w)", err, attempt+1, first)
		}
		t := time.NewTimer(delay + time.Duration(rand.Int64N(int64(delay/2))))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (retry cut short: %w)", err, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, retryMax)
	}
}

// retryable reports whether a request that failed with err (not an error
// reply) may pass if sent again.
func retryable(err error) bool {
	switch {
	case errors.Is(err, context.Canceled),
		errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrBadSubject),
		errors.Is(err, nats.ErrMaxPayload):
		return false
	}
	var enc *encodeError
	return !errors.As(err, &enc)
}

// encodeError is a request that could not be encoded: sending it again
// cannot help.
type encodeError struct{ err error }

func (e *encodeError) Error() string { return "encode request: " + e.err.Error() }
func (e *encodeError) Unwrap() error { return e.err }

// Status returns id's presence, with the user's live connections. An
// invalid id is a *ServiceError with CodeBadRequest.
func (c *Client) Status(ctx context.Context, id string) (Status, error) {
	var r contract.StatusReply
	if err := c.query(ctx, contract.QueryStatus, contract.StatusRequest{UserID: id}, &r); err != nil {
		return Status{}, err
	}
	st := Status{UserID: r.UserID, Online: r.Online, Version: r.Version}
	err := errors.Join(
		parseTime(&st.Since, "since", r.Since),
		parseTime(&st.ExpiresAt, "expiresAt", r.ExpiresAt),
		parseTime(&st.HeldUntil, "heldUntil", r.HeldUntil),
	)
	for i, rc := range r.Connections {
		conn := Connection{ConnectionID: rc.ConnectionID, GatewayID: rc.GatewayID}
		err = errors.Join(err,
			parseTime(&conn.Since, fmt.Sprintf("connections[%d].since", i), rc.Since),
			parseTime(&conn.ExpiresAt, fmt.Sprintf("connections[%d].expiresAt", i), rc.ExpiresAt))
		st.Connections = append(st.Connections, conn)
	}
	if err != nil {
		return Status{}, fmt.Errorf("presence status: %w", err)
	}
	return st, nil
}

// parseTime parses a time of a reply into t; "" leaves t zero.
func parseTime(t *time.Time, field, s string) error {
	if s == "" {
		return nil
	}
	var err error
	if *t, err = time.Parse(time.RFC3339Nano, s); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

// IsOnline reports whether id is online (its presence key exists, as for
// the EXISTS check of services that read Redis directly).
func (c *Client) IsOnline(ctx context.Context, id string) (bool, error) {
	online, err := c.Online(ctx, []string{id})
	if err != nil {
		return false, err
	}
	return len(online) == 1, nil
}

// Online returns those of ids that are online, in the order given,
// duplicates removed. Each request costs presenced one Redis round trip
// (a GET of the version clock with its query view, an MGET without);
// more ids than the batch size are sent as several requests. One invalid id
// fails the call with a *ServiceError (CodeBadRequest).
func (c *Client) Online(ctx context.Context, ids []string) ([]string, error) {
	// presenced removes repeats within a request, so ids that fit one
	// request go as given; split, they are deduped first so that no id is
	// answered twice.
	parts := c.chunks(ids)
	if len(parts) > 1 {
		parts = c.chunks(contract.AppendUnique(make([]string, 0, len(ids)), ids))
	}
	replies := make([]contract.OnlineReply, len(parts))
	errs := c.each(ctx, len(parts), func(ctx context.Context, i int) error {
		return c.query(ctx, contract.QueryOnline, idsRequest{UserIDs: parts[i]}, &replies[i])
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(replies) == 1 && replies[0].Online != nil {
		return replies[0].Online, nil
	}
	online := []string{}
	for _, r := range replies {
		online = append(online, r.Online...)
	}
	return online, nil
}

// Count returns the number of users online.
func (c *Client) Count(ctx context.Context) (int64, error) {
	var r contract.CountReply
	if err := c.query(ctx, contract.QueryCount, struct{}{}, &r); err != nil {
		return 0, err
	}
	return r.Online, nil
}

// List iterates over the users online, one page per step; pageSize is a
// hint (zero means presenced's default, 1000), and presenced caps it so a
// page fits the max payload. Empty pages are skipped. On an error the
// iterator yields it once and stops.
//
// A listing walks presenced's sessions shards: a user online for the whole
// listing appears once (at least once if an oversized shard is resized
// meanwhile, so dedupe); one who comes or goes during it may or may not. To keep an online set, Subscribe first, then
// List, and let events that arrived meanwhile win over the listing.
func (c *Client) List(ctx context.Context, pageSize int) iter.Seq2[[]string, error] {
	return func(yield func([]string, error) bool) {
		cursor := ""
		for {
			var r contract.ListReply
			if err := c.query(ctx, contract.QueryList, contract.ListRequest{Cursor: cursor, Limit: pageSize}, &r); err != nil {
				yield(nil, err)
				return
			}
			if len(r.UserIDs) > 0 && !yield(r.UserIDs, nil) {
				return
			}
			if r.Cursor == "" {
				return
			}
			cursor = r.Cursor
		}
	}
}

// subjects are presenced's subjects under the client's prefix.
func (c *Client) subjects() contract.Subjects { return contract.Subjects{Prefix: c.prefix} }

// query calls a query service endpoint.
func (c *Client) query(ctx context.Context, endpoint string, req any, out json.Unmarshaler) error {
	if err := c.call(ctx, c.subjects().Query(endpoint), req, out, false); err != nil {
		return fmt.Errorf("presence %s: %w", endpoint, err)
	}
	return nil
}

// call sends req to subject, waits at most the timeout for the reply and
// decodes it into out; micro error headers become a *ServiceError.
// With timed, the request carries contract.TimeoutHeader: how long this attempt
// waits, so that presenced does not store it after the client gave up.
func (c *Client) call(ctx context.Context, subject string, req any, out json.Unmarshaler, timed bool) error {
	var data []byte
	if r, ok := req.(interface{ appendJSON([]byte) []byte }); ok {
		data = r.appendJSON(nil)
	} else {
		var err error
		if data, err = contract.Marshal(req); err != nil {
			return &encodeError{err}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	m := &nats.Msg{Subject: subject, Data: data}
	if timed {
		wait := c.timeout
		if d, ok := ctx.Deadline(); ok {
			wait = time.Until(d)
		}
		m.Header = nats.Header{contract.TimeoutHeader: []string{strconv.FormatInt(max(wait.Milliseconds(), 1), 10)}}
	}
	msg, err := c.nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &ServiceError{Code: code, Description: msg.Header.Get(micro.ErrorHeader)}
	}
	if err := out.UnmarshalJSON(msg.Data); err != nil {
		return fmt.Errorf("decode reply from %s: %w", subject, err)
	}
	return nil
}

// each runs fn for 0..n-1, at most inFlight at once, and returns the errors
// by index.
func (c *Client) each(ctx context.Context, n int, fn func(ctx context.Context, i int) error) []error {
	errs := make([]error, n)
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = fn(ctx, i)
		})
	}
	wg.Wait()
	return errs
}

// requestOverhead bounds a request body's bytes other than its ids:
// {"userIds":[]}.
const requestOverhead = 64

// chunks splits ids into runs of at most the batch size whose request body
// fits the connection's max payload.
func (c *Client) chunks(ids []string) [][]string {
	return chunk(ids, c.batch, int(c.nc.MaxPayload())-requestOverhead, func(id string) int {
		return encodedLen(id) + 1 // and a comma
	})
}

// chunk splits items into runs of at most batch items whose sizes add up
// to at most budget (a run holds one item however large).
func chunk[T any](items []T, batch, budget int, size func(T) int) [][]T {
	var out [][]T
	start, sum := 0, 0
	for i, it := range items {
		n := size(it)
		if i > start && (i-start >= batch || sum+n > budget) {
			out = append(out, items[start:i])
			start, sum = i, 0
		}
		sum += n
	}
	if start < len(items) {
		out = append(out, items[start:])
	}
	return out
}

// encodedLen is the length of id as a JSON string written by appendString
// (and by contract.Marshal, but for control characters, some of which it writes
// in 2 bytes, not 6).
func encodedLen(id string) int {
	n := 2
	for i := 0; i < len(id); {
		if c := id[i]; c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			n++
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(id[i:])
		switch {
		case r == '"' || r == '\\':
			n += 2
		case r < 0x20, r == utf8.RuneError && size == 1, r == '\u2028', r == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}
