package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/presenced/presenced/internal/jsonobject"
)

// The wire types, with the same JSON as presenced's bus package. They are
// declared here rather than imported so that this package depends on nats.go
// only: bus imports the Redis store.

// Event is a presence.online or presence.offline event, or a
// presence.reset notice (Status StatusReset, no UserID).
type Event struct {
	// UserID is empty for a reset.
	UserID string `json:"userId"`
	// Status is StatusOnline, StatusOffline or StatusReset.
	Status string `json:"status"`
	// Reason is "heartbeat" for online ("resync" for an online that
	// re-announces a session after a partial data loss); "expired" or
	// "disconnect" for offline; "data_loss" for a reset.
	Reason string `json:"reason"`
	// At is when the transition happened (Redis server time).
	At time.Time `json:"at"`
	// Version strictly increases across one user's successive events.
	Version int64 `json:"version"`
}

// Event statuses.
const (
	StatusOnline  = "online"
	StatusOffline = "offline"
	// StatusReset: presenced's Redis lost the presence data (or presenced
	// started on an empty one), or lost its latest writes. Every session
	// with a version below the reset's Version may be gone without offline
	// events: remove the users whose last applied version is below it and
	// keep the others (see Subscribe); users still connected come back
	// online, re-announced (reason "resync") when their session survived,
	// else through their next heartbeats.
	StatusReset = "reset"
)

// Reply answers a heartbeat or disconnect.
type Reply struct {
	// Accepted counts the distinct valid ids that were stored.
	Accepted int `json:"accepted"`
	// Rejected lists the ids that were not, with the reason.
	Rejected []Rejection `json:"rejected"`
	// Error is set when the message failed; Accepted then counts the ids
	// stored before the failure, usually 0. Heartbeat and Disconnect turn
	// it into an error wrapping ErrFailed.
	Error string `json:"error,omitempty"`
	// Retry is set with Error when the same message may succeed if sent
	// again (presenced's store was unavailable, the replica overloaded or
	// shutting down); Heartbeat and Disconnect then send it again.
	Retry bool `json:"retry,omitempty"`
}

// Rejection is one id that was not accepted, with the reason.
type Rejection struct {
	UserID string `json:"userId"`
	Error  string `json:"error"`
}

// Status is one user's presence, as the query service reports it.
type Status struct {
	UserID string
	Online bool
	// Since is when the session started; zero when offline.
	Since time.Time
	// ExpiresAt is when the session ends without another heartbeat; zero
	// when offline.
	ExpiresAt time.Time
	// Version is the session's online event version; 0 when offline.
	Version int64
}

// Error codes of the query service (ServiceError.Code).
const (
	// CodeBadRequest: the request is wrong (an invalid userId, too many
	// ids, a bad cursor); retrying it fails the same way.
	CodeBadRequest = "400"
	// CodeStoreFailure: presenced's store failed; a retry may work.
	CodeStoreFailure = "500"
)

// ServiceError is an error answered by the query service, from the micro
// error headers (Nats-Service-Error-Code, Nats-Service-Error). Match it with
// errors.As.
type ServiceError struct {
	Code        string
	Description string
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("presence service error %s: %s", e.Code, e.Description)
}

// reply is a reply body: decode reads it strictly (see jsonobject: JSON
// white space only, exact member names, none repeated; other members
// ignored), as presenced reads requests.
type reply interface {
	decode(data []byte) error
}

func (r *Reply) decode(data []byte) error {
	var rejected []json.RawMessage
	if err := jsonobject.Decode(data, map[string]any{"accepted": &r.Accepted, "rejected": &rejected, "error": &r.Error}); err != nil {
		return err
	}
	if rejected == nil {
		return nil
	}
	r.Rejected = make([]Rejection, len(rejected))
	for i, raw := range rejected {
		if err := jsonobject.Decode(raw, map[string]any{"userId": &r.Rejected[i].UserID, "error": &r.Rejected[i].Error}); err != nil {
			return fmt.Errorf("rejected[%d]: %w", i, err)
		}
	}
	return nil
}

func (r *statusReply) decode(data []byte) error {
	return jsonobject.Decode(data, map[string]any{"userId": &r.UserID, "online": &r.Online, "since": &r.Since, "expiresAt": &r.ExpiresAt, "version": &r.Version})
}

func (r *onlineReply) decode(data []byte) error {
	return jsonobject.Decode(data, map[string]any{"online": &r.Online})
}

func (r *listReply) decode(data []byte) error {
	return jsonobject.Decode(data, map[string]any{"userIds": &r.UserIDs, "cursor": &r.Cursor})
}

func (r *countReply) decode(data []byte) error {
	return jsonobject.Decode(data, map[string]any{"online": &r.Online})
}

// decode reads an event strictly, as reply.decode does.
func (e *Event) decode(data []byte) error {
	return jsonobject.Decode(data, map[string]any{"userId": &e.UserID, "status": &e.Status, "reason": &e.Reason, "at": &e.At, "version": &e.Version})
}

// timeoutHeader tells presenced how long (ms) the client waits for a
// heartbeat or disconnect reply; presenced does not store a request whose
// sender stopped waiting (presenced's contract.TimeoutHeader).
const timeoutHeader = "Presence-Timeout"

// ErrFailed is wrapped by the error of a heartbeat or disconnect that
// presenced answered as failed as a whole (Reply.Error: malformed, too many
// ids, store unavailable).
var ErrFailed = errors.New("presence request failed")

type statusRequest struct {
	UserID string `json:"userId"`
}

type statusReply struct {
	UserID    string `json:"userId"`
	Online    bool   `json:"online"`
	Since     string `json:"since"`
	ExpiresAt string `json:"expiresAt"`
	Version   int64  `json:"version"`
}

type idsRequest struct {
	UserIDs []string `json:"userIds"`
}

// appendJSON appends the request as encode writes it, but without
// reflection and with every control character as \u00XX: the body is
// {"userIds":[]} plus encodedLen(id) per id and the commas between them.
func (r idsRequest) appendJSON(dst []byte) []byte {
	n := len(`{"userIds":[]}`)
	for _, id := range r.UserIDs {
		n += len(id) + 3 // escapes aside
	}
	dst = slices.Grow(dst, n)
	dst = append(dst, `{"userIds":[`...)
	for i, id := range r.UserIDs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, id)
	}
	return append(dst, ']', '}')
}

// appendString appends s as a JSON string of exactly encodedLen(s) bytes:
// '"' and '\\' escaped, control characters, U+2028 and U+2029 as \uXXXX,
// invalid UTF-8 as \ufffd (which encoding/json would decode it to), the
// rest as is.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		// The run of bytes written as they are, in one append.
		j := i
		for j < len(s) && s[j] >= 0x20 && s[j] != '"' && s[j] != '\\' && s[j] < utf8.RuneSelf {
			j++
		}
		if j > i {
			dst = append(dst, s[i:j]...)
			i = j
			continue
		}
		c := s[i]
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		case r == utf8.RuneError && size == 1:
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

type onlineReply struct {
	Online []string `json:"online"`
}

// decodeFast decodes the reply as presenced writes it (see fastIDs).
func (r *onlineReply) decodeFast(data []byte) bool {
	ids, rest, ok := fastIDs(data, `{"online":`)
	if !ok || rest != "}" {
		return false
	}
	r.Online = ids
	return true
}

type listRequest struct {
	Cursor string `json:"cursor"`
	Limit  int    `json:"limit"`
}

type listReply struct {
	UserIDs []string `json:"userIds"`
	Cursor  string   `json:"cursor"`
}

// decodeFast decodes the page as presenced writes it (see fastIDs), with a
// numeric cursor.
func (r *listReply) decodeFast(data []byte) bool {
	ids, rest, ok := fastIDs(data, `{"userIds":`)
	if !ok {
		return false
	}
	rest, ok = strings.CutPrefix(rest, `,"cursor":"`)
	if !ok {
		return false
	}
	cursor, ok := strings.CutSuffix(rest, `"}`)
	if !ok || strings.Trim(cursor, "0123456789") != "" {
		return false
	}
	r.UserIDs, r.Cursor = ids, cursor
	return true
}

// fastIDs decodes the array of strings that follows prefix at the start of
// data, written as presenced writes it: no white space, no escapes, valid
// UTF-8. The ids are substrings of one copy of data; rest is what follows
// the array. Anything else is not ok, and encoding/json decodes it.
func fastIDs(data []byte, prefix string) (ids []string, rest string, ok bool) {
	if !bytes.HasPrefix(data, []byte(prefix)) || !utf8.Valid(data) {
		return nil, "", false
	}
	s := string(data[len(prefix):])
	if !strings.HasPrefix(s, "[") {
		return nil, "", false
	}
	ids = make([]string, 0, strings.Count(s, `","`)+1)
	i := 1
	if strings.HasPrefix(s[i:], "]") {
		return ids, s[i+1:], true
	}
	for {
		if !strings.HasPrefix(s[i:], `"`) {
			return nil, "", false
		}
		n := strings.IndexByte(s[i+1:], '"')
		if n < 0 {
			return nil, "", false
		}
		id := s[i+1 : i+1+n]
		for j := 0; j < len(id); j++ {
			if id[j] < 0x20 || id[j] == '\\' {
				return nil, "", false
			}
		}
		ids = append(ids, id)
		i += n + 2
		switch {
		case strings.HasPrefix(s[i:], "]"):
			return ids, s[i+1:], true
		case strings.HasPrefix(s[i:], ","):
			i++
		default:
			return nil, "", false
		}
	}
}

type countReply struct {
	Online int64 `json:"online"`
}
