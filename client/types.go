package client

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/presenced/presenced/contract"
)

// The wire types are package contract's, which presenced itself uses, so
// the client and the server cannot drift apart: the names below are aliases
// (the same types, not copies), kept so that code written against
// client.Event, client.Reply and the status constants goes on compiling.
// contract imports only the standard library.

// Event is a presence.online or presence.offline event, or a
// presence.reset notice (Status StatusReset, no UserID); see
// contract.Event. Subscribe decodes it strictly (contract.Event.UnmarshalJSON).
type Event = contract.Event

// Event statuses and reasons (contract.Status, contract.Reason: typed
// strings, so comparing Event.Status with "online" still compiles).
const (
	StatusOnline  = contract.StatusOnline
	StatusOffline = contract.StatusOffline
	// StatusReset: presenced's Redis lost the presence data (or presenced
	// started on an empty one), or lost its latest writes; on Redis
	// Cluster, one partition of the data did (Event.Partitions above 0).
	// Every session of a user the reset covers (Event.Covers) with a
	// version below the reset's Version may be gone without offline
	// events: remove the covered users whose last applied version is below
	// it and keep the others (see Subscribe); users still connected come
	// back online, re-announced (reason "resync") when their session
	// survived, else through their next heartbeats.
	StatusReset = contract.StatusReset

	ReasonHeartbeat  = contract.ReasonHeartbeat
	ReasonResync     = contract.ReasonResync
	ReasonExpired    = contract.ReasonExpired
	ReasonDisconnect = contract.ReasonDisconnect
	ReasonDataLoss   = contract.ReasonDataLoss
	// ReasonGatewayLost: the user's last connections were on a gateway
	// whose lease lapsed, ended, or was taken by a restarted instance.
	ReasonGatewayLost = contract.ReasonGatewayLost
	// ReasonKicked: Kick ended every connection of the user.
	ReasonKicked = contract.ReasonKicked
)

// Reply answers a heartbeat or disconnect (contract.Reply). When Error is
// set, Heartbeat and Disconnect turn it into an error wrapping ErrFailed,
// and send the message again when Retry is set too.
type Reply = contract.Reply

// Rejection is one id that was not accepted, with the reason
// (contract.Rejection); ConnectionID names the connection of a rejected
// connection entry. Its Reason field is a server-side metrics label, not on
// the wire: it is always empty in the client.
type Rejection = contract.Rejection

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
	// Connections are the user's live connections, when any was named
	// (HeartbeatConns, Gateway); a user kept online by plain Heartbeat
	// calls only has none listed. Nil when there are none.
	Connections []Connection
	// HeldUntil is set while the user's last connection has ended and
	// presenced holds the offline for its grace (PRESENCE_OFFLINE_GRACE):
	// Online is false, yet no offline event has been published, and a
	// connection before HeldUntil continues the session without events.
	HeldUntil time.Time
}

// Connection is one live connection of a user, as Status reports it.
type Connection struct {
	ConnectionID string
	// GatewayID is "" for a connection heartbeated without a gateway.
	GatewayID string
	// Since is when the connection was first heartbeated.
	Since time.Time
	// ExpiresAt is when it ends without another heartbeat (or earlier, if
	// its gateway loses its lease).
	ExpiresAt time.Time
}

// GatewayStatus is a gateway's lease as the query service reports it
// (Client.Gateway).
type GatewayStatus struct {
	GatewayID string
	// Leased: the gateway holds a lease, taken by InstanceID, until
	// ExpiresAt unless renewed.
	Leased     bool
	InstanceID string
	ExpiresAt  time.Time
	// Connections counts the connections registered under the lease
	// (connections that lapsed since their last heartbeat count until
	// presenced prunes them).
	Connections int64
}

// Error codes of the query service (ServiceError.Code).
const (
	// CodeBadRequest: the request is wrong (an invalid userId, too many
	// ids, a bad cursor); retrying it fails the same way.
	CodeBadRequest = contract.QueryBadRequest
	// CodeStoreFailure: presenced's store failed; a retry may work.
	CodeStoreFailure = contract.QueryStoreFailure
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

// ErrFailed is wrapped by the error of a heartbeat or disconnect that
// presenced answered as failed as a whole (Reply.Error: malformed, too many
// ids, store unavailable).
var ErrFailed = errors.New("presence request failed")

// idsRequest is a heartbeat, disconnect or online request
// (contract.OnlineRequest's shape) with the client's own encoder, which
// chunks budgets byte for byte.
type idsRequest contract.OnlineRequest

// appendJSON appends the request as contract.Marshal writes it, but without
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
