package client

import (
	"errors"
	"fmt"
	"time"
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
	// Reason is "heartbeat" for online; "expired" or "disconnect" for
	// offline; "data_loss" for a reset.
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
	// started on an empty one). Every session it knew is gone without
	// offline events: clear what you hold; users still connected come
	// back online through their next heartbeats, within one TTL.
	StatusReset = "reset"
)

// Reply answers a heartbeat or disconnect.
type Reply struct {
	// Accepted counts the distinct valid ids that were stored.
	Accepted int `json:"accepted"`
	// Rejected lists the ids that were not, with the reason.
	Rejected []Rejection `json:"rejected"`
	// Error is set when the whole message failed; Accepted is then 0.
	// Heartbeat and Disconnect turn it into an error wrapping ErrFailed.
	Error string `json:"error,omitempty"`
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

type onlineReply struct {
	Online []string `json:"online"`
}

type listRequest struct {
	Cursor string `json:"cursor"`
	Limit  int    `json:"limit"`
}

type listReply struct {
	UserIDs []string `json:"userIds"`
	Cursor  string   `json:"cursor"`
}

type countReply struct {
	Online int64 `json:"online"`
}
