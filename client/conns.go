package client

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/presenced/presenced/contract"
)

// Conn is one connection of a user on a gateway (contract.Conn): a user is
// online while any of their connections is live, and a connection lives one
// TTL after its last heartbeat, or until its gateway loses its lease.
// ConnectionID "" is the user's implicit connection (the one Heartbeat
// keeps); GatewayID "" is none; Seq 0 is none. Gateway sets all three.
type Conn = contract.Conn

// HeartbeatConns starts or refreshes connections. A user's first live
// connection brings them online (one online event); further connections,
// and their refreshes, publish nothing. Repeats of one connection are
// merged (the highest Seq and the last GatewayID win); more connections
// than the batch size, or than fit the max payload, go as several requests,
// each sent again on a failure that may pass, as for Heartbeat. Entries
// whose Seq is not above the last applied for their connection are ignored
// by presenced (counted as accepted, not stored). Rejected entries (an
// invalid id, too many live connections for the user) are listed in the
// Reply with their ConnectionID; the entries beside them are stored.
func (c *Client) HeartbeatConns(ctx context.Context, conns ...Conn) (Reply, error) {
	return c.sendConns(ctx, "heartbeat", c.subjects().Heartbeat(), conns)
}

// DisconnectConns ends connections now. A user whose last live connection
// ends goes offline (reason "disconnect", after presenced's offline grace
// if it has one); a user still connected elsewhere publishes nothing. A
// disconnect is final for its connection: a heartbeat with a lower Seq that
// arrives after it does not reopen it. Batching, the Reply and errors are
// as for HeartbeatConns.
func (c *Client) DisconnectConns(ctx context.Context, conns ...Conn) (Reply, error) {
	return c.sendConns(ctx, "disconnect", c.subjects().Disconnect(), conns)
}

// Kick ends every connection of ids, implicit and named, on any gateway: a
// moderation or operator "force offline". Each user that was online gets an
// offline event with reason "kicked". Batching, the Reply and errors are as
// for Disconnect.
func (c *Client) Kick(ctx context.Context, ids ...string) (Reply, error) {
	parts := c.chunks(contract.AppendUnique(make([]string, 0, len(ids)), ids))
	return c.sendAll(ctx, "kick", c.subjects().Disconnect(), len(parts), func(i int) (any, string) {
		return kickRequest{UserIDs: parts[i]}, fmt.Sprintf("%d ids", len(parts[i]))
	})
}

// Gateway returns a gateway's lease (held or not, by which instance, until
// when) and how many connections are registered under it. An invalid id is
// a *ServiceError with CodeBadRequest.
func (c *Client) Gateway(ctx context.Context, gatewayID string) (GatewayStatus, error) {
	var r contract.GatewayReply
	if err := c.query(ctx, contract.QueryGateway, contract.GatewayRequest{GatewayID: gatewayID}, loose[contract.GatewayReply]{&r}); err != nil {
		return GatewayStatus{}, err
	}
	g := GatewayStatus{GatewayID: r.GatewayID, Leased: r.Leased, InstanceID: r.InstanceID, Connections: r.Connections}
	if err := parseTime(&g.ExpiresAt, "expiresAt", r.ExpiresAt); err != nil {
		return GatewayStatus{}, fmt.Errorf("presence gateway: %w", err)
	}
	return g, nil
}

func (c *Client) sendConns(ctx context.Context, op, subject string, conns []Conn) (Reply, error) {
	budget := int(c.nc.MaxPayload()) - requestOverhead
	parts := chunk(uniqueConns(conns), c.batch, budget, connLen)
	return c.sendAll(ctx, op, subject, len(parts), func(i int) (any, string) {
		return connsRequest(parts[i]), fmt.Sprintf("%d connections", len(parts[i]))
	})
}

// lease sends a gateway lease message (subject GatewayHeartbeat or
// GatewayDisconnect) with retries, as Heartbeat does, and returns the
// reply; an error reply is an error wrapping ErrFailed.
func (c *Client) lease(ctx context.Context, subject string, req contract.GatewayLeaseRequest) (contract.GatewayLeaseReply, error) {
	var r contract.GatewayLeaseReply
	if err := c.sendPart(ctx, subject, req, leaseOutcome{&r}); err != nil {
		return r, fmt.Errorf("gateway %q lease: %w", req.GatewayID, err)
	}
	return r, nil
}

// leaseOutcome is a lease reply as an outcome.
type leaseOutcome struct{ r *contract.GatewayLeaseReply }

func (o leaseOutcome) UnmarshalJSON(b []byte) error { return json.Unmarshal(b, o.r) }
func (o leaseOutcome) reset()                       { *o.r = contract.GatewayLeaseReply{} }
func (o leaseOutcome) failure() (string, bool)      { return o.r.Error, o.r.Retry }

// loose decodes a reply that package contract has no strict decoder for
// with encoding/json.
type loose[T any] struct{ v *T }

func (l loose[T]) UnmarshalJSON(b []byte) error { return json.Unmarshal(b, l.v) }

// uniqueConns returns conns with the repeats of one connection merged into
// the first, as presenced merges them within a message (the highest Seq and
// the last GatewayID win), so that no connection is split across requests.
func uniqueConns(conns []Conn) []Conn {
	type key struct{ user, conn string }
	index := make(map[key]int, len(conns))
	out := make([]Conn, 0, len(conns))
	for _, cn := range conns {
		k := key{cn.UserID, cn.ConnectionID}
		if i, ok := index[k]; ok {
			out[i].Seq = max(out[i].Seq, cn.Seq)
			out[i].GatewayID = cn.GatewayID
			continue
		}
		index[k] = len(out)
		out = append(out, cn)
	}
	return out
}

// connLen bounds the bytes an entry takes in a connsRequest, its comma
// included (its gateway counted even when the request names it once for
// all, which leaves room for that).
func connLen(cn Conn) int {
	const members = len(`{"userId":,"connectionId":,"gatewayId":,"seq":},`)
	return members + encodedLen(cn.UserID) + encodedLen(cn.ConnectionID) + encodedLen(cn.GatewayID) + len(strconv.FormatInt(cn.Seq, 10))
}

// connsRequest is a heartbeat or disconnect of connections:
// {"gatewayId":"gw","connections":[{"userId":..,"connectionId":..,"seq":..},...]},
// the gateway named once when every entry has the same, else per entry.
type connsRequest []Conn

func (r connsRequest) appendJSON(dst []byte) []byte {
	gw := ""
	if len(r) > 0 {
		gw = r[0].GatewayID
	}
	common := !slices.ContainsFunc(r, func(cn Conn) bool { return cn.GatewayID != gw })
	dst = append(dst, '{')
	if common && gw != "" {
		dst = append(dst, `"gatewayId":`...)
		dst = append(appendString(dst, gw), ',')
	}
	dst = append(dst, `"connections":[`...)
	for i, cn := range r {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"userId":`...)
		dst = appendString(dst, cn.UserID)
		if cn.ConnectionID != "" {
			dst = append(dst, `,"connectionId":`...)
			dst = appendString(dst, cn.ConnectionID)
		}
		if !common && cn.GatewayID != "" {
			dst = append(dst, `,"gatewayId":`...)
			dst = appendString(dst, cn.GatewayID)
		}
		if cn.Seq != 0 {
			dst = append(dst, `,"seq":`...)
			dst = strconv.AppendInt(dst, cn.Seq, 10)
		}
		dst = append(dst, '}')
	}
	return append(dst, ']', '}')
}

// kickRequest ends every connection of its users:
// {"userIds":[...],"allConnections":true}.
type kickRequest idsRequest

func (r kickRequest) appendJSON(dst []byte) []byte {
	dst = idsRequest(r).appendJSON(dst)
	return append(dst[:len(dst)-1], `,"allConnections":true}`...)
}

// untilLapse is how long a lease reply's ExpiresAt leaves from now, or 0
// when it has none (or one that does not parse).
func untilLapse(r contract.GatewayLeaseReply) time.Duration {
	var at time.Time
	if parseTime(&at, "expiresAt", r.ExpiresAt) != nil || at.IsZero() {
		return 0
	}
	return time.Until(at)
}
