package contract

import (
	"fmt"
	"slices"
	"unicode/utf8"
)

// QueryServiceName is the micro service name, as in $SRV.PING.presence.
const QueryServiceName = "presence"

// Error codes of the query service (the Nats-Service-Error-Code header).
const (
	// QueryBadRequest: malformed JSON, an invalid userId, too many ids, a
	// bad cursor or limit. Retrying the same request fails the same way.
	QueryBadRequest = "400"
	// QueryStoreFailure: the store failed or timed out; a retry may work.
	QueryStoreFailure = "500"
)

// Endpoint names of the query service, under the group <prefix>.query.
const (
	QueryStatus = "status"
	QueryOnline = "online"
	QueryList   = "list"
	QueryCount  = "count"
	// QueryGateway: a gateway's lease and connections (GatewayRequest).
	QueryGateway = "gateway"
)

// StatusRequest is the body of a status query.
type StatusRequest struct {
	UserID string `json:"userId"`
}

// StatusReply answers a status query. Since, ExpiresAt (TimeFormat, UTC)
// and Version are those of the user's session; they are omitted, and
// Version is 0, when the user is offline.
type StatusReply struct {
	UserID    string `json:"userId"`
	Online    bool   `json:"online"`
	Since     string `json:"since,omitempty"`
	ExpiresAt string `json:"expiresAt,omitempty"`
	Version   int64  `json:"version"`
	// Connections are the user's live connections, when any was named
	// (connection heartbeats); a user kept online by plain heartbeats only
	// has none listed.
	Connections []ConnectionStatus `json:"connections"`
	// HeldUntil is set while the user's last connection has ended and the
	// offline is held for the grace (PRESENCE_OFFLINE_GRACE): the session is
	// still open (no offline published) but Online is false; a connection
	// before then continues it.
	HeldUntil string `json:"heldUntil,omitempty"`
}

// ConnectionStatus is one live connection in a StatusReply.
type ConnectionStatus struct {
	ConnectionID string `json:"connectionId"`
	GatewayID    string `json:"gatewayId"`
	Since        string `json:"since"`
	ExpiresAt    string `json:"expiresAt"`
}

// GatewayRequest is the body of a gateway query.
type GatewayRequest struct {
	GatewayID string `json:"gatewayId"`
}

// GatewayReply answers a gateway query: whether the gateway holds a lease,
// until when, under which instance, and how many connections are
// registered under it (connections that lapsed since their last heartbeat
// count until they are pruned).
type GatewayReply struct {
	GatewayID   string `json:"gatewayId"`
	Leased      bool   `json:"leased"`
	InstanceID  string `json:"instanceId,omitempty"`
	ExpiresAt   string `json:"expiresAt,omitempty"`
	Connections int64  `json:"connections"`
}

// GatewayLeaseRequest is the message of GatewayHeartbeat and
// GatewayDisconnect: InstanceID is random per gateway process start, so a
// restarted gateway is told apart from the one it replaces.
type GatewayLeaseRequest struct {
	GatewayID  string `json:"gatewayId"`
	InstanceID string `json:"instanceId"`
}

// GatewayLeaseReply answers a lease message that has a reply subject.
type GatewayLeaseReply struct {
	// ExpiresAt is when the lease lapses unless renewed (omitted after a
	// disconnect, or on error).
	ExpiresAt string `json:"expiresAt,omitempty"`
	// Replaced is set when this heartbeat took the lease from another
	// instance of the gateway: that instance's connections are ending.
	Replaced bool   `json:"replaced,omitempty"`
	Error    string `json:"error,omitempty"`
	Retry    bool   `json:"retry,omitempty"`
}

// DecodeGatewayLeaseRequest decodes a lease message strictly: both ids
// present and valid (the user-id rules).
func DecodeGatewayLeaseRequest(data []byte) (GatewayLeaseRequest, error) {
	var r GatewayLeaseRequest
	if err := decodeObject(data, map[string]any{"gatewayId": &r.GatewayID, "instanceId": &r.InstanceID}); err != nil {
		return r, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	for _, p := range []struct{ v, field string }{{r.GatewayID, "gatewayId"}, {r.InstanceID, "instanceId"}} {
		if err := ValidateUserID(p.v); err != nil {
			e := *err.(*InvalidUserIDError)
			e.Field = p.field
			return r, fmt.Errorf("%w: %v", ErrMalformed, &e)
		}
	}
	return r, nil
}

// DecodeGatewayRequest decodes a gateway query strictly.
func DecodeGatewayRequest(data []byte) (GatewayRequest, error) {
	var r GatewayRequest
	if err := decodeObject(data, map[string]any{"gatewayId": &r.GatewayID}); err != nil {
		return r, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := ValidateUserID(r.GatewayID); err != nil {
		e := *err.(*InvalidUserIDError)
		e.Field = "gatewayId"
		return r, fmt.Errorf("%w: %v", ErrMalformed, &e)
	}
	return r, nil
}

// OnlineRequest is the body of an online query: up to the service's
// maximum of ids (10000 by default), all valid (one invalid id fails the
// request).
type OnlineRequest struct {
	UserIDs []string `json:"userIds"`
}

// OnlineReply lists those of the requested ids that are online, in request
// order, duplicates removed: with the query view (presence.View), those with
// an open session as of every write stored before the query; without it,
// those whose presence key exists.
type OnlineReply struct {
	Online []string `json:"online"`
}

// ListRequest asks for one page of the users online. Cursor is "" for the
// first page, then the Cursor of the previous reply. Limit is a hint: zero
// means 1000, above MaxList it is MaxList. Pages are sized by the bytes the
// ids actually take: with ids of ten bytes a page of 10000 is about 130 KB,
// well under the default 1 MiB max payload. Should a page not fit (long
// ids), the service repeats the scan step from the same cursor with a
// smaller count until it does, so a reply never exceeds the max payload,
// and sizes the next pages it serves by the bytes per id it last saw.
//
// Paging through with ListRequest walks the sessions shards in order (see
// presence.Store.List): a user online for the whole listing appears once (at
// least once if an oversized shard is resized meanwhile, so clients dedupe);
// a user who comes or goes during it may or may not appear; a page may be
// empty while the cursor is not "" (continue until it is).
type ListRequest struct {
	Cursor string `json:"cursor"`
	Limit  int    `json:"limit"`
}

// ListReply is one page. Cursor continues the listing; "" means done.
type ListReply struct {
	UserIDs []string `json:"userIds"`
	Cursor  string   `json:"cursor"`
}

// CountReply answers a count query (any body): the number of users online.
type CountReply struct {
	Online int64 `json:"online"`
}

// AppendJSON appends the reply's JSON to dst, as encoding/json writes it
// without HTML escaping for valid ids (any id, valid or not, decodes back
// to itself), without reflection.
func (r OnlineReply) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"online":`...)
	return append(appendIDs(dst, r.Online), '}')
}

// AppendJSON appends the page's JSON to dst, as OnlineReply.AppendJSON.
func (r ListReply) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"userIds":`...)
	dst = appendIDs(dst, r.UserIDs)
	dst = append(dst, `,"cursor":`...)
	return append(appendJSONString(dst, r.Cursor), '}')
}

// appendIDs appends ids as a JSON array of strings; nil is [], not null.
func appendIDs(dst []byte, ids []string) []byte {
	n := 2
	for _, id := range ids {
		n += len(id) + 3
	}
	dst = slices.Grow(dst, n) // escapes aside
	dst = append(dst, '[')
	for i, id := range ids {
		if i > 0 {
			dst = append(dst, ',')
		}
		if plainJSON(id) {
			dst = append(dst, '"')
			dst = append(dst, id...)
			dst = append(dst, '"')
		} else {
			dst = appendJSONString(dst, id)
		}
	}
	return append(dst, ']')
}

// plainJSON reports whether s is ASCII that JSON writes as is, so that
// quoting it is its encoding.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// DecodeStatusRequest decodes a status query: one strict JSON object (see
// DecodeRequest) whose "userId" must be a valid user id. The error wraps
// ErrMalformed or ErrInvalidUserID.
func DecodeStatusRequest(data []byte) (StatusRequest, error) {
	var req StatusRequest
	if err := decodeObject(data, map[string]any{"userId": &req.UserID}); err != nil {
		return StatusRequest{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := ValidateUserID(req.UserID); err != nil {
		return StatusRequest{}, err
	}
	return req, nil
}

// DecodeOnlineRequest decodes an online query: one strict JSON object (see
// DecodeRequest) whose "userIds" holds at most max ids, every one valid.
// The ids are substrings of one copy of data when the body has the common
// shape, so each keeps that copy alive: they are meant not to outlive the
// request. Repeats are kept (the store answers each id once). The error
// wraps ErrMalformed, ErrTooMany or ErrInvalidUserID (then naming the index
// of the first invalid id).
func DecodeOnlineRequest(data []byte, max int) (OnlineRequest, error) {
	f, ok := parseFast(data, max, true)
	ids, valid := f.ids, f.valid
	if !ok || f.key != "userIds" {
		// Anything unusual (escapes, more ids than allowed, other fields)
		// goes through encoding/json, which words the errors.
		var raw *[]string
		if err := decodeObject(data, map[string]any{"userIds": &raw}); err != nil {
			return OnlineRequest{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		if raw == nil {
			return OnlineRequest{}, fmt.Errorf(`%w: no "userIds"`, ErrMalformed)
		}
		ids, valid = *raw, false
	}
	if len(ids) > max {
		return OnlineRequest{}, fmt.Errorf("%w: %d ids, the maximum is %d", ErrTooMany, len(ids), max)
	}
	if !valid {
		for i, id := range ids {
			if err := ValidateUserID(id); err != nil {
				return OnlineRequest{}, fmt.Errorf("userIds[%d]: %w", i, err)
			}
		}
	}
	return OnlineRequest{UserIDs: ids}, nil
}

// DecodeListRequest decodes a list request: one strict JSON object (see
// DecodeRequest) with an optional "cursor" and a "limit" that is not
// negative (zero asks for the default page size). The error wraps
// ErrMalformed.
func DecodeListRequest(data []byte) (ListRequest, error) {
	var req ListRequest
	if err := decodeObject(data, map[string]any{"cursor": &req.Cursor, "limit": &req.Limit}); err != nil {
		return ListRequest{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if req.Limit < 0 {
		return ListRequest{}, fmt.Errorf("%w: negative limit %d", ErrMalformed, req.Limit)
	}
	return req, nil
}
