package contract

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// Conn is one connection entry of a heartbeat or disconnect: a user's
// connection on a gateway. A user is online while any of their connections
// is live; a connection lives one TTL after its last heartbeat.
type Conn struct {
	UserID string `json:"userId"`
	// ConnectionID is unique among the user's connections; "" is the
	// user's implicit connection (what plain userId heartbeats keep).
	ConnectionID string `json:"connectionId,omitempty"`
	// GatewayID is the gateway the connection is on ("" for none): when the
	// gateway's lease is lost, its connections end.
	GatewayID string `json:"gatewayId,omitempty"`
	// Seq orders the messages of one connection (increasing; 0 for none):
	// a heartbeat or disconnect whose seq is not above the last applied for
	// its connection is ignored, and a disconnect is final for its
	// connection, so a heartbeat it overtook does not reopen it.
	Seq int64 `json:"seq,omitempty"`
}

// MaxSeq is the largest seq accepted (2^53-1, exact in every JSON reader).
const MaxSeq = 1<<53 - 1

// rawRequest holds the members of a heartbeat or disconnect message, not
// yet decoded.
type rawRequest struct {
	UserID    json.RawMessage
	UserIDs   []json.RawMessage
	ConnID    json.RawMessage
	GatewayID json.RawMessage
	Seq       json.RawMessage
	Conns     []json.RawMessage
	All       bool
}

// readRequest reads the members of a request object strictly, without
// decoding the ids.
func readRequest(data []byte) (rawRequest, error) { return readMembers(data, true) }

// readEntry reads one entry of "connections": its userId, connectionId,
// gatewayId and seq (the message-level members are not entry members and
// are ignored, as unknown members are).
func readEntry(data []byte) (rawRequest, error) { return readMembers(data, false) }

func readMembers(data []byte, message bool) (rawRequest, error) {
	var raw rawRequest
	err := objectMembers(data, func(name string, v json.RawMessage) error {
		switch name {
		case "userId":
			raw.UserID = v
		case "connectionId":
			raw.ConnID = v
		case "gatewayId":
			raw.GatewayID = v
		case "seq":
			raw.Seq = v
		}
		if !message {
			return nil
		}
		switch name {
		case "userIds":
			return json.Unmarshal(v, &raw.UserIDs)
		case "connections":
			return json.Unmarshal(v, &raw.Conns)
		case "allConnections":
			return json.Unmarshal(v, &raw.All)
		}
		return nil
	})
	return raw, err
}

// connShaped: the message names a connection, a gateway, a sequence or
// every connection, so it is decoded into connection entries (or a kick)
// instead of plain ids.
func (r rawRequest) connShaped() bool {
	return r.ConnID != nil || r.GatewayID != nil || r.Seq != nil || r.Conns != nil || r.All
}

// decodeConns decodes the connection shapes:
//
//	{"userId":"u-1","connectionId":"c-1","gatewayId":"gw-1","seq":7}
//	{"gatewayId":"gw-1","connections":[{"userId":"u-1","connectionId":"c-1","seq":7}, ...]}
//	{"gatewayId":"gw-1","userIds":["u-1", ...]}      implicit connections on a gateway
//	{"userId":"u-1","allConnections":true}           (or "userIds"): every connection
//
// "gatewayId" and "seq" are optional; an entry's own "gatewayId" overrides
// the message's. An entry with an invalid id, connection id, gateway id or
// seq is rejected alone, naming its user and connection; the message fails
// as a whole only when its shape is wrong (a "connectionId" or "seq" beside
// "userIds", "allConnections" with anything but user ids, an invalid
// message-level "gatewayId"). Repeats of one connection are merged into
// the first: the highest seq and the last gateway win.
func decodeConns(raw rawRequest) (Request, error) {
	if raw.All {
		if raw.ConnID != nil || raw.Seq != nil || raw.Conns != nil || raw.GatewayID != nil {
			return Request{}, fmt.Errorf(`%w: "allConnections" takes "userId" or "userIds" only`, ErrMalformed)
		}
		req := Request{All: true}
		for _, r := range append([]json.RawMessage{raw.UserID}, raw.UserIDs...) {
			if r == nil {
				continue
			}
			id, err := decodeID(r)
			if err != nil {
				req.Rejected = append(req.Rejected, Rejection{UserID: shown(id, r), Error: err.Error(), Reason: InvalidReason(err)})
				continue
			}
			req.IDs = append(req.IDs, id)
		}
		req.IDs = AppendUnique(req.IDs[:0], req.IDs)
		return req, nil
	}
	if raw.UserIDs != nil && (raw.ConnID != nil || raw.Seq != nil) {
		return Request{}, fmt.Errorf(`%w: "connectionId" and "seq" go with "userId" or in "connections", not with "userIds"`, ErrMalformed)
	}
	if raw.UserID == nil && (raw.ConnID != nil || raw.Seq != nil) {
		return Request{}, fmt.Errorf(`%w: "connectionId" and "seq" need a "userId" beside them`, ErrMalformed)
	}
	gw := ""
	if raw.GatewayID != nil {
		var err error
		if gw, err = decodePart(raw.GatewayID, "gatewayId"); err != nil {
			return Request{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	d := connDecoder{index: map[connKey]int{}}
	if raw.UserID != nil {
		d.add(raw.UserID, raw.ConnID, nil, raw.Seq, gw)
	}
	for _, r := range raw.UserIDs {
		d.add(r, nil, nil, nil, gw)
	}
	for _, e := range raw.Conns {
		m, err := readEntry(e)
		if err != nil || m.UserID == nil {
			if err == nil {
				err = fmt.Errorf(`no "userId"`)
			}
			d.req.Rejected = append(d.req.Rejected, Rejection{UserID: shown("", e), Error: "malformed connection: " + err.Error(), Reason: "malformed"})
			continue
		}
		d.add(m.UserID, m.ConnID, m.GatewayID, m.Seq, gw)
	}
	return d.req, nil
}

type connKey struct{ user, conn string }

// connDecoder collects connection entries, merging repeats.
type connDecoder struct {
	req   Request
	index map[connKey]int
}

// add decodes one entry; gw is the message's gateway, used when the entry
// has none of its own.
func (d *connDecoder) add(user, conn, gateway, seq json.RawMessage, gw string) {
	c := Conn{GatewayID: gw}
	// The connection id is read first, so that a rejection for any reason
	// names the connection.
	var connErr error
	if conn != nil {
		c.ConnectionID, connErr = decodePart(conn, "connectionId")
		if connErr != nil {
			c.ConnectionID = shown(c.ConnectionID, conn)
		}
	}
	reject := func(err error) {
		d.req.Rejected = append(d.req.Rejected, Rejection{UserID: shown(c.UserID, user), ConnectionID: c.ConnectionID, Error: err.Error(), Reason: InvalidReason(err)})
	}
	var err error
	if c.UserID, err = decodeID(user); err != nil {
		reject(err)
		return
	}
	if connErr != nil {
		reject(connErr)
		return
	}
	if gateway != nil {
		if c.GatewayID, err = decodePart(gateway, "gatewayId"); err != nil {
			reject(err)
			return
		}
	}
	if seq != nil {
		if c.Seq, err = decodeSeq(seq); err != nil {
			reject(err)
			return
		}
	}
	k := connKey{c.UserID, c.ConnectionID}
	if i, ok := d.index[k]; ok {
		prev := &d.req.Conns[i]
		prev.Seq = max(prev.Seq, c.Seq)
		prev.GatewayID = c.GatewayID
		return
	}
	d.index[k] = len(d.req.Conns)
	d.req.Conns = append(d.req.Conns, c)
}

// decodePart decodes a connection or gateway id: a string following the
// user-id rules, or "" (none: the implicit connection, no gateway).
func decodePart(r json.RawMessage, field string) (string, error) {
	if len(r) == 0 || r[0] != '"' {
		return "", &InvalidUserIDError{Reason: "not_string", Detail: "not a string", Field: field}
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", &InvalidUserIDError{Reason: "malformed", Detail: err.Error(), Field: field}
	}
	if s == "" {
		return "", nil
	}
	if err := ValidateUserID(s); err != nil {
		e := *err.(*InvalidUserIDError)
		e.Field = field
		return s, &e
	}
	return s, nil
}

// decodeSeq decodes a seq: an integer from 0 (none) to MaxSeq.
func decodeSeq(r json.RawMessage) (int64, error) {
	n, err := strconv.ParseInt(string(r), 10, 64)
	if err != nil || n < 0 || n > MaxSeq {
		return 0, &InvalidUserIDError{Reason: "bad_seq", Detail: fmt.Sprintf("%.40s is not an integer from 0 to 2^53-1", r), Field: "seq"}
	}
	return n, nil
}

// ValidateConn checks an entry the way the decoder does, for senders that
// build entries in Go.
func ValidateConn(c Conn) error {
	if err := ValidateUserID(c.UserID); err != nil {
		return err
	}
	for _, p := range []struct{ v, field string }{{c.ConnectionID, "connectionId"}, {c.GatewayID, "gatewayId"}} {
		if p.v == "" {
			continue
		}
		if err := ValidateUserID(p.v); err != nil {
			e := *err.(*InvalidUserIDError)
			e.Field = p.field
			return &e
		}
	}
	if c.Seq < 0 || c.Seq > MaxSeq {
		return &InvalidUserIDError{Reason: "bad_seq", Detail: fmt.Sprintf("%d is not from 0 to 2^53-1", c.Seq), Field: "seq"}
	}
	return nil
}
