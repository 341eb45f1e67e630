package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// The messages of the heartbeat and disconnect subjects and of the event
// subjects, as other services build against them (see README.md).

// Status is an event's status: which transition it announces.
type Status string

// The statuses on the wire. An event's subject is <prefix>.<status>
// (Subjects.Event).
const (
	StatusOnline  Status = "online"
	StatusOffline Status = "offline"
	// StatusReset is the Status of the event on <prefix>.reset: Redis lost the
	// presence data set (or presenced started on an empty one), or lost its
	// latest writes; on Redis Cluster, one partition of the data set did
	// (Event.Partitions). Its version is above every version published before
	// it for the users it covers (Event.Covers): consumers remove the covered
	// users whose last applied version is below it (not everyone: a reset
	// republished late arrives after newer events, and a partition's reset
	// says nothing of the users of other partitions) and drop later events
	// below it for covered users they hold nothing for. Users still connected
	// are online again through presence.online: re-announced (reason
	// "resync") when their session survived in Redis, else at their next
	// heartbeat.
	StatusReset Status = "reset"
)

// Reason says why a transition happened.
type Reason string

// The reasons on the wire.
const (
	// ReasonHeartbeat: a heartbeat opened a session (online).
	ReasonHeartbeat Reason = "heartbeat"
	// ReasonResync: an online that re-announces a session that survived a
	// partial data loss, after the reset.
	ReasonResync Reason = "resync"
	// ReasonExpired: no heartbeat came within the TTL (offline).
	ReasonExpired Reason = "expired"
	// ReasonDisconnect: a disconnect ended the session (offline).
	ReasonDisconnect Reason = "disconnect"
	// ReasonDataLoss: Redis lost presence data (reset).
	ReasonDataLoss Reason = "data_loss"
	// ReasonGatewayLost: the user's last connections were on a gateway
	// whose lease lapsed, ended, or was taken by a restarted instance
	// (offline).
	ReasonGatewayLost Reason = "gateway_lost"
	// ReasonKicked: a disconnect with allConnections ended every connection
	// of the user (offline).
	ReasonKicked Reason = "kicked"
)

// Event is a presence.online or presence.offline message (or, with Status
// StatusReset and no UserID, a presence.reset notice).
type Event struct {
	// UserID is empty for a reset.
	UserID string `json:"userId"`
	// Status is StatusOnline, StatusOffline or StatusReset.
	Status Status `json:"status"`
	// Reason is ReasonHeartbeat for online (ReasonResync for an online that
	// re-announces a session after a partial data loss); ReasonExpired or
	// ReasonDisconnect for offline; ReasonDataLoss for a reset.
	Reason Reason `json:"reason"`
	// At is when the transition happened, Redis server time.
	At time.Time `json:"-"`
	// Version strictly increases across one user's successive events: a
	// consumer drops an event whose version is not above the last it applied.
	Version int64 `json:"version"`
	// Partitions is set on a reset that covers one partition of the data
	// (presenced on Redis Cluster, where each partition can lose writes on
	// its own): the reset concerns only the users of partition Partition
	// among Partitions (see Covers and PartitionOf). Zero on every other
	// event, and on a reset of the whole data set.
	Partitions int `json:"partitions,omitempty"`
	// Partition is the partition a reset covers, with Partitions.
	Partition int `json:"partition,omitempty"`
}

// TimeFormat is the format of Event.At on the wire: RFC 3339, microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

type eventJSON struct {
	UserID     string `json:"userId"`
	Status     Status `json:"status"`
	Reason     Reason `json:"reason"`
	At         string `json:"at"`
	Version    int64  `json:"version"`
	Partition  int    `json:"partition"`
	Partitions int    `json:"partitions"`
}

// MarshalJSON encodes At in TimeFormat, in UTC.
func (e Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 128+len(e.UserID))), nil
}

// AppendJSON appends the event's JSON to dst, without reflection: the relay
// encodes every event it publishes. "partition" and "partitions" are
// written only when Partitions is above 0 (a reset of one partition).
func (e Event) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"userId":`...)
	dst = appendJSONString(dst, e.UserID)
	dst = append(dst, `,"status":`...)
	dst = appendJSONString(dst, string(e.Status))
	dst = append(dst, `,"reason":`...)
	dst = appendJSONString(dst, string(e.Reason))
	dst = append(dst, `,"at":"`...)
	dst = e.At.UTC().AppendFormat(dst, TimeFormat)
	dst = append(dst, `","version":`...)
	dst = strconv.AppendInt(dst, e.Version, 10)
	if e.Partitions > 0 {
		dst = append(dst, `,"partition":`...)
		dst = strconv.AppendInt(dst, int64(e.Partition), 10)
		dst = append(dst, `,"partitions":`...)
		dst = strconv.AppendInt(dst, int64(e.Partitions), 10)
	}
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD (as
// encoding/json does), everything else as is.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// UnmarshalJSON decodes an event published by presenced, as strictly as
// requests (JSON white space only, exact member names, none repeated).
// "partition" and "partitions" are optional; it fails when they do not name
// a partition of a reset (see checkScope).
func (e *Event) UnmarshalJSON(data []byte) error {
	var j eventJSON
	if err := decodeObject(data, map[string]any{"userId": &j.UserID, "status": &j.Status, "reason": &j.Reason, "at": &j.At, "version": &j.Version,
		"partition": &j.Partition, "partitions": &j.Partitions}); err != nil {
		return err
	}
	at, err := time.Parse(time.RFC3339Nano, j.At)
	if err != nil {
		return fmt.Errorf("event at: %w", err)
	}
	ev := Event{UserID: j.UserID, Status: j.Status, Reason: j.Reason, At: at, Version: j.Version, Partition: j.Partition, Partitions: j.Partitions}
	if err := ev.checkScope(); err != nil {
		return err
	}
	*e = ev
	return nil
}

// checkScope reports whether Partition and Partitions are a scope an event
// can carry: both 0 (every event but a partition's reset), or, on a reset
// only, Partitions above 0 and Partition from 0 to Partitions-1.
func (e Event) checkScope() error {
	switch {
	case e.Partitions < 0:
		return fmt.Errorf("event partitions %d: negative", e.Partitions)
	case e.Partitions == 0 && e.Partition != 0:
		return fmt.Errorf("event partition %d without partitions", e.Partition)
	case e.Partitions > 0 && e.Status != StatusReset:
		return fmt.Errorf("event partitions %d on a %q event: only a reset covers a partition", e.Partitions, e.Status)
	case e.Partition < 0 || e.Partition >= max(e.Partitions, 1):
		return fmt.Errorf("event partition %d: not among partitions 0 to %d", e.Partition, e.Partitions-1)
	}
	return nil
}

// MsgID is the Nats-Msg-Id header of an event, unique per event, so a
// JetStream stream drops a republished duplicate: "<userId>:<version>";
// "reset:<version>" for a reset of the whole data set;
// "reset:<partition>/<partitions>:<version>" for a partition's reset (two
// partitions can reset at the same version).
func (e Event) MsgID() string {
	if e.Status == StatusReset {
		if e.Partitions > 0 {
			return fmt.Sprintf("reset:%d/%d:%d", e.Partition, e.Partitions, e.Version)
		}
		return fmt.Sprintf("reset:%d", e.Version)
	}
	return fmt.Sprintf("%s:%d", e.UserID, e.Version)
}

// TimeoutHeader is the request header in which a heartbeat or disconnect
// sender says how long, in milliseconds, it waits for the reply. presenced
// does not store a request whose sender has stopped waiting (it answers
// "expired" instead): the sender may have sent it again already, and a
// late copy of a disconnect must not end a session a later heartbeat
// continued. Without the header a request is stored however late.
const TimeoutHeader = "Presence-Timeout"

// Rejection is one id that was not accepted, with the reason.
type Rejection struct {
	UserID string `json:"userId"`
	// ConnectionID names the connection of a rejected connection entry.
	ConnectionID string `json:"connectionId,omitempty"`
	Error        string `json:"error"`
	// Reason is a stable label for metrics, not sent on the wire.
	Reason string `json:"-"`
}

// Reply answers a heartbeat or disconnect message that has a reply subject.
type Reply struct {
	// Accepted counts the distinct valid ids that were stored.
	Accepted int `json:"accepted"`
	// Rejected lists the ids that were not, with the reason.
	Rejected []Rejection `json:"rejected"`
	// Error is set when the message failed (malformed, too large, the
	// store unavailable, the replica overloaded or shutting down). Accepted
	// then counts the ids stored before the failure, usually 0.
	Error string `json:"error,omitempty"`
	// Retry is set with Error when sending the same message again may
	// succeed (the store was unavailable, the replica overloaded or
	// shutting down); a malformed message is never retried.
	Retry bool `json:"retry,omitempty"`
}

// Errors for messages that fail as a whole; callers branch with errors.Is.
var (
	ErrMalformed = errors.New("malformed message")
	ErrTooMany   = errors.New("too many ids")
)

// Request is a decoded heartbeat or disconnect message.
type Request struct {
	// IDs are the valid ids of plain entries (each the user's implicit
	// connection, without a gateway or a sequence), duplicates removed, in
	// first-seen order.
	IDs []string
	// Conns are the valid connection entries (see Conn), one per
	// connection, in first-seen order.
	Conns []Conn
	// All: "allConnections": every connection of the IDs' users ends (a
	// disconnect only; Conns is empty then).
	All bool
	// Rejected are the invalid ones; the valid ids are still processed.
	Rejected []Rejection
}

// maxShown bounds how much of a rejected value is echoed back.
const maxShown = 64

// DecodeRequest decodes {"userId":"u-1"} or {"userIds":["u-1",...]} (both
// may appear; their ids are merged; other members are ignored), and the
// connection shapes (see decodeConns): a "connectionId", "gatewayId" or
// "seq" beside "userId", a "gatewayId" beside "userIds", a "connections"
// batch, or "allConnections". The body is
// strict JSON: only JSON white space around the object, the member names
// exactly as written here, and a repeated member makes it malformed. Invalid ids are rejected one by one
// without costing the valid ones. The message fails as a whole (ErrMalformed,
// ErrTooMany) only when it is not such an object or holds more than max ids.
func DecodeRequest(data []byte, max int) (Request, error) {
	if req, ok := decodeFast(data, max); ok {
		return req, nil
	}
	return decodeSlow(data, max)
}

// decodeSlow is the general decoder: one strict JSON object (JSON white
// space only around it, member names exact, none repeated; other members
// ignored), then encoding/json element by element.
func decodeSlow(data []byte, max int) (Request, error) {
	raw, err := readRequest(data)
	if err != nil {
		return Request{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	n := len(raw.UserIDs) + len(raw.Conns)
	if raw.UserID != nil {
		n++
	}
	if n == 0 {
		return Request{}, fmt.Errorf(`%w: no "userId", "userIds" or "connections"`, ErrMalformed)
	}
	if raw.connShaped() {
		if n > max {
			return Request{}, fmt.Errorf("%w: %d entries, the maximum is %d", ErrTooMany, n, max)
		}
		return decodeConns(raw)
	}
	if n > max {
		return Request{}, fmt.Errorf("%w: %d ids, the maximum is %d", ErrTooMany, n, max)
	}
	req := Request{IDs: make([]string, 0, n)}
	add := func(r json.RawMessage) {
		id, err := decodeID(r)
		if err != nil {
			req.Rejected = append(req.Rejected, Rejection{UserID: shown(id, r), Error: err.Error(), Reason: InvalidReason(err)})
			return
		}
		req.IDs = append(req.IDs, id)
	}
	if raw.UserID != nil {
		add(raw.UserID)
	}
	for _, r := range raw.UserIDs {
		add(r)
	}
	req.IDs = AppendUnique(req.IDs[:0], req.IDs)
	return req, nil
}

// decodeID returns the string in r and why it is not a valid user id.
func decodeID(r json.RawMessage) (string, error) {
	if len(r) == 0 || r[0] != '"' {
		return "", NewInvalidUserID("not_string", "not a string")
	}
	var id string
	if err := json.Unmarshal(r, &id); err != nil {
		return "", NewInvalidUserID("malformed", err.Error())
	}
	// encoding/json turns invalid UTF-8 into U+FFFD, which ValidateUserID
	// rejects, so broken encodings are reported rather than stored.
	return id, ValidateUserID(id)
}

// shown is what a rejection echoes as the userId: the decoded id when there
// is one, else the raw JSON, cut to a readable length.
func shown(id string, r json.RawMessage) string {
	s := id
	if s == "" {
		s = string(r)
	}
	if len(s) > maxShown {
		s = s[:maxShown] + "…"
	}
	return s
}

// decodeFast handles the shapes gateways send, {"userId":"x"} and
// {"userIds":["x","y",...]} with ids of printable ASCII without escapes,
// in one pass and one allocation per id. Anything else (escapes, other
// fields, unusual layout, any error) returns ok=false and is decoded by
// decodeSlow, so both give the same result wherever the fast path answers.
func decodeFast(data []byte, max int) (req Request, ok bool) {
	f, ok := parseFast(data, max, false)
	if !ok {
		return req, false
	}
	// Valid ids move to the front in place; repeats among them go.
	req.IDs = f.ids[:0]
	for _, id := range f.ids {
		if err := ValidateUserID(id); err != nil {
			req.Rejected = append(req.Rejected, Rejection{UserID: shown(id, nil), Error: err.Error(), Reason: InvalidReason(err)})
			continue
		}
		req.IDs = append(req.IDs, id)
	}
	req.IDs = AppendUnique(req.IDs[:0], req.IDs)
	return req, true
}

// fastIDs is what parseFast found.
type fastIDs struct {
	key string // "userId" or "userIds"
	ids []string
	// valid: every id is printable ASCII of at most MaxUserIDLen
	// bytes with no space and no glob character, so ValidateUserID
	// accepts each one (the parser itself refuses empty strings, escapes,
	// control characters and anything beyond ASCII).
	valid bool
}

// parseFast parses the fast shapes only. With shared, the ids are
// substrings of one copy of data (one allocation in all, but each id keeps
// the whole body alive: for ids that do not outlive the request); without,
// each id is a string of its own.
func parseFast(data []byte, max int, shared bool) (f fastIDs, ok bool) {
	p := fastParser{b: data}
	p.space()
	if !p.lit('{') {
		return f, false
	}
	p.space()
	k0, k1, _, ok := p.str()
	if !ok {
		return f, false
	}
	p.space()
	if !p.lit(':') {
		return f, false
	}
	p.space()
	var body string
	if shared {
		body = string(data)
	}
	id := func(i, j int) string {
		if shared {
			return body[i:j]
		}
		return string(data[i:j])
	}
	f.valid = true
	switch string(data[k0:k1]) {
	case "userId":
		i, j, valid, ok := p.str()
		if !ok || i == j {
			return f, false
		}
		f.key, f.ids, f.valid = "userId", []string{id(i, j)}, valid
	case "userIds":
		if !p.lit('[') {
			return f, false
		}
		p.space()
		if p.lit(']') {
			return f, false // empty batch: let the slow path word the error
		}
		// Every id but the last is followed by a comma.
		f.key, f.ids = "userIds", make([]string, 0, min(max, 1+bytes.Count(data[p.i:], []byte{','})))
		for {
			i, j, valid, ok := p.str()
			if !ok || i == j {
				return fastIDs{}, false
			}
			if len(f.ids) == max {
				return fastIDs{}, false // over the maximum: the slow path counts and words it
			}
			f.ids = append(f.ids, id(i, j))
			f.valid = f.valid && valid
			p.space()
			if p.lit(']') {
				break
			}
			if !p.lit(',') {
				return fastIDs{}, false
			}
			p.space()
		}
	default:
		return f, false
	}
	p.space()
	if !p.lit('}') {
		return fastIDs{}, false
	}
	p.space()
	if p.i != len(p.b) {
		return fastIDs{}, false
	}
	return f, true
}

type fastParser struct {
	b []byte
	i int
}

func (p *fastParser) space() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\n' || p.b[p.i] == '\r' || p.b[p.i] == '\t') {
		p.i++
	}
}

func (p *fastParser) lit(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// Classes of bytes in a fast string (fastClass), as bits so that a
// string's classes are the OR of its bytes'.
const (
	fastInvalid = 1 << iota // printable ASCII ValidateUserID refuses: space, * ? [ ]
	fastBail                // an escape, a control character, beyond ASCII
)

var fastClass = func() (t [256]uint8) {
	for c := range t {
		switch {
		case c == '\\' || c < 0x20 || c > 0x7e:
			t[c] = fastBail
		case c == ' ' || c == '*' || c == '?' || c == '[' || c == ']':
			t[c] = fastInvalid
		}
	}
	return t
}()

// str reads a string of printable ASCII without escapes; it returns where
// the bytes between the quotes start and end, and whether they make a valid
// user id if not empty (see fastIDs.valid). The closing quote is the first
// one: an escaped quote has a backslash before it, which bails. It runs per
// id of requests of up to 10000 ids: a plain byte loop beats IndexByte's
// call on ids of a few bytes.
func (p *fastParser) str() (start, end int, valid, ok bool) {
	if !p.lit('"') {
		return 0, 0, false, false
	}
	start = p.i
	end, class := scanString(p.b, start)
	if end == len(p.b) || class&fastBail != 0 {
		return 0, 0, false, false
	}
	p.i = end + 1
	return start, end, class == 0 && end-start <= MaxUserIDLen, true
}

// scanString returns the index of the first '"' in b from i (len(b) if
// none) and the OR of the classes of the bytes before it.
func scanString(b []byte, i int) (end int, class uint8) {
	for end = i; end < len(b) && b[end] != '"'; end++ {
		class |= fastClass[b[end]]
	}
	return end, class
}

// Marshal encodes v as JSON the way the contract writes it: without HTML
// escaping (so '<', '>' and '&' in ids stay one byte, as the appenders
// write them) and without a trailing newline. Used for the shapes that
// have no appender.
func Marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
