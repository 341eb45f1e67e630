// Package query is presenced's query service: a NATS micro service named
// "presence" (presence.query.status, .online, .list, .count and .gateway) that
// answers who is online from a consumer-side Store (presence.Store, or the
// query View that follows the outbox).
package query

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/presence"
)

// The query service: a nats.go micro service named QueryServiceName that
// answers who is online. Its endpoints are <prefix>.query.status, .online,
// .list, .count and .gateway; it is discoverable with $SRV.PING, $SRV.INFO and
// $SRV.STATS like any micro service. A failed request is answered with the
// micro error headers (Nats-Service-Error-Code, Nats-Service-Error) and an
// empty body: QueryBadRequest when the request itself is wrong,
// QueryStoreFailure when Redis did not answer.

// Store is what the query service needs from the store (implemented by
// *presence.Store and *presence.View). GetOnlineUsers is given the ids as
// the request lists them, repeats included, and returns each online id
// once, in the order of first appearance.
type Store interface {
	Status(ctx context.Context, id string) (presence.Status, error)
	GetOnlineUsers(ctx context.Context, ids []string) ([]string, error)
	List(ctx context.Context, cursor string, limit int) (presence.Page, error)
	Count(ctx context.Context) (int64, error)
	Gateway(ctx context.Context, gateway string) (presence.GatewayStatus, error)
}

// Options configures the query service. Zero values take the
// documented defaults.
type Options struct {
	// Subjects; zero means prefix "presence".
	Subjects contract.Subjects
	// Queue is the micro queue group the replicas share; zero means
	// "presenced".
	Queue string
	// MaxIDs is the most ids one online query may carry; zero means 10000.
	MaxIDs int
	// MaxList is the largest page a list request may ask for; zero means
	// 10000 (1M users in 100 pages; ten-byte ids make a page of about
	// 130 KB). Pages are further capped to fit the connection's max payload
	// (see ListRequest). A larger page saves little: the time goes to
	// Redis, per id, not per page; and each page is one Redis script call
	// that blocks every other client of that Redis while it runs.
	MaxList int
	// Version is the service version shown by $SRV.INFO; it must be SemVer.
	// Zero means "0.0.0".
	Version string
	// Timeout bounds the store call of one request; zero means 5s.
	Timeout time.Duration
	Logger  *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Subjects.Prefix == "" {
		o.Subjects.Prefix = "presence"
	}
	if o.Queue == "" {
		o.Queue = "presenced"
	}
	if o.MaxIDs <= 0 {
		o.MaxIDs = 10000
	}
	if o.MaxList <= 0 {
		o.MaxList = 10000
	}
	if o.Version == "" {
		o.Version = "0.0.0"
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

const (
	defaultListLimit = 1000
	// listOverhead bounds a page's bytes other than its ids:
	// {"userIds":[],"cursor":"<uint64>"}.
	listOverhead = 64
	// maxDescription bounds an error description (a header value).
	maxDescription = 512
)

// queryError is a failed request: the micro error code and why.
type queryError struct {
	code string
	err  error
}

func (e *queryError) Error() string { return e.err.Error() }
func (e *queryError) Unwrap() error { return e.err }

func badRequest(format string, args ...any) error {
	return &queryError{code: contract.QueryBadRequest, err: fmt.Errorf(format, args...)}
}

func storeFailure(err error) error {
	return &queryError{code: contract.QueryStoreFailure, err: err}
}

type queryService struct {
	nc    *nats.Conn
	store Store
	opts  Options
	log   *slog.Logger
	// listIDBytes is the JSON bytes per id of the last list page served
	// (0 before the first): the first scan step of a page is sized so that
	// a page like it fits the max payload.
	listIDBytes atomic.Int64
}

// Start adds the query service on nc and returns it once the
// server has its subscriptions (failing if that is not confirmed within
// Timeout). The caller stops it with Stop, which drains its subscriptions so
// requests being handled are answered, before draining or closing nc.
//
// micro installs its own closed and error handlers on nc and chains to the
// ones set before: set nc's handlers first, and do not replace them while
// the service runs (Stop restores them).
//
// Each endpoint handles its requests one at a time, in order, on its
// subscription's goroutine; replicas in the queue group share the load.
func Start(nc *nats.Conn, store Store, opts Options) (micro.Service, error) {
	opts = opts.withDefaults()
	q := &queryService{nc: nc, store: store, opts: opts, log: opts.Logger}
	svc, err := micro.AddService(nc, micro.Config{
		Name:        contract.QueryServiceName,
		Version:     opts.Version,
		Description: "who is online: status, online, list, count, gateway",
		Metadata:    map[string]string{"prefix": opts.Subjects.Prefix},
		QueueGroup:  opts.Queue,
		ErrorHandler: func(_ micro.Service, err *micro.NATSError) {
			q.log.Warn("query service error", "subject", err.Subject, "err", err.Description)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("add query service: %w", err)
	}
	g := svc.AddGroup(opts.Subjects.QueryGroup())
	endpoints := []struct {
		name string
		fn   func(context.Context, []byte) (any, error)
	}{
		{contract.QueryStatus, q.status},
		{contract.QueryOnline, q.online},
		{contract.QueryList, q.list},
		{contract.QueryCount, q.count},
		{contract.QueryGateway, q.gateway},
	}
	for _, ep := range endpoints {
		if err := g.AddEndpoint(ep.name, q.handler(ep.name, ep.fn),
			micro.WithEndpointPendingLimits(65536, 64<<20)); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("add query endpoint %s: %w", ep.name, err)
		}
	}
	// Once the server has the subscriptions, requests find a responder.
	if err := nc.FlushTimeout(opts.Timeout); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("add query service: flush subscriptions: %w", err)
	}
	return svc, nil
}

// handler runs fn with a timeout and answers with its reply or error.
func (q *queryService) handler(name string, fn func(context.Context, []byte) (any, error)) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		ctx, cancel := context.WithTimeout(context.Background(), q.opts.Timeout)
		defer cancel()
		reply, err := fn(ctx, req.Data())
		if err == nil {
			data, ok := reply.([]byte) // online and list encode their own
			if !ok {
				data, err = contract.Marshal(reply)
			}
			if err == nil {
				if err := req.Respond(data); err != nil {
					q.log.Debug("query reply failed", "endpoint", name, "err", err)
				}
				return
			}
			err = storeFailure(fmt.Errorf("encode reply: %w", err))
		}
		code := contract.QueryStoreFailure
		var qe *queryError
		if errors.As(err, &qe) {
			code = qe.code
		}
		if code == contract.QueryStoreFailure {
			q.log.Warn("query failed", "endpoint", name, "err", err)
		} else {
			q.log.Debug("bad query", "endpoint", name, "err", err)
		}
		if err := req.Error(code, description(err), nil); err != nil {
			q.log.Debug("query error reply failed", "endpoint", name, "err", err)
		}
	})
}

// description makes err fit a header value: one line, bounded.
func description(err error) string {
	s := strings.NewReplacer("\r", " ", "\n", " ").Replace(err.Error())
	if len(s) > maxDescription {
		s = s[:maxDescription] + "…"
	}
	return s
}

// badRequestFrom makes a request the contract refused (malformed, an
// invalid id, too many ids) a bad request, worded as the contract words it.
func badRequestFrom(err error) error {
	return &queryError{code: contract.QueryBadRequest, err: err}
}

func (q *queryService) status(ctx context.Context, data []byte) (any, error) {
	req, err := contract.DecodeStatusRequest(data)
	if err != nil {
		return nil, badRequestFrom(err)
	}
	st, err := q.store.Status(ctx, req.UserID)
	if err != nil {
		return nil, storeFailure(err)
	}
	r := contract.StatusReply{UserID: st.UserID, Online: st.Online, Version: st.Version}
	if !st.Since.IsZero() {
		r.Since = st.Since.UTC().Format(contract.TimeFormat)
	}
	if !st.ExpiresAt.IsZero() {
		r.ExpiresAt = st.ExpiresAt.UTC().Format(contract.TimeFormat)
	}
	if !st.HeldUntil.IsZero() {
		r.HeldUntil = st.HeldUntil.UTC().Format(contract.TimeFormat)
	}
	r.Connections = make([]contract.ConnectionStatus, 0, len(st.Connections))
	for _, c := range st.Connections {
		r.Connections = append(r.Connections, contract.ConnectionStatus{ConnectionID: c.ID, GatewayID: c.GatewayID,
			Since: c.Since.UTC().Format(contract.TimeFormat), ExpiresAt: c.ExpiresAt.UTC().Format(contract.TimeFormat)})
	}
	return r, nil
}

func (q *queryService) gateway(ctx context.Context, data []byte) (any, error) {
	req, err := contract.DecodeGatewayRequest(data)
	if err != nil {
		return nil, badRequestFrom(err)
	}
	g, err := q.store.Gateway(ctx, req.GatewayID)
	if err != nil {
		return nil, storeFailure(err)
	}
	r := contract.GatewayReply{GatewayID: g.GatewayID, Leased: g.Leased, InstanceID: g.InstanceID, Connections: g.Connections}
	if !g.ExpiresAt.IsZero() {
		r.ExpiresAt = g.ExpiresAt.UTC().Format(contract.TimeFormat)
	}
	return r, nil
}

func (q *queryService) online(ctx context.Context, data []byte) (any, error) {
	// The ids only live as long as the request: they may share one copy
	// of the body.
	req, err := contract.DecodeOnlineRequest(data, q.opts.MaxIDs)
	if err != nil {
		return nil, badRequestFrom(err)
	}
	online, err := q.store.GetOnlineUsers(ctx, req.UserIDs)
	if err != nil {
		return nil, storeFailure(err)
	}
	// The reply fits the max payload whenever the request did: it holds a
	// subset of the request's ids, each encoded no longer than any valid
	// JSON encoding of it, under a shorter key.
	return contract.OnlineReply{Online: online}.AppendJSON(nil), nil
}

func (q *queryService) list(ctx context.Context, data []byte) (any, error) {
	req, err := contract.DecodeListRequest(data)
	if err != nil {
		return nil, badRequestFrom(err)
	}
	if req.Limit == 0 {
		req.Limit = defaultListLimit
	}
	maxPayload := q.nc.MaxPayload()
	limit := min(req.Limit, q.opts.MaxList)
	if per := q.listIDBytes.Load(); per > 0 {
		// Leave a third for a page exceeding its limit by one shard and for
		// ids longer than the last page's.
		limit = min(limit, max(1, int((maxPayload-listOverhead)*2/3/per)))
	}
	var out []byte
	for {
		page, err := q.store.List(ctx, req.Cursor, limit)
		if errors.Is(err, presence.ErrInvalidCursor) {
			return nil, badRequest("%v", err)
		}
		if err != nil {
			return nil, storeFailure(err)
		}
		out = contract.ListReply{UserIDs: page.UserIDs, Cursor: page.Cursor}.AppendJSON(out[:0])
		if len(page.UserIDs) > 0 {
			q.listIDBytes.Store(max(1, int64(len(out)/len(page.UserIDs))))
		}
		if int64(len(out)) <= maxPayload {
			return out, nil
		}
		// Long ids get here. Repeating the step from the same cursor with a
		// smaller limit reads fewer shards (or a smaller HSCAN step of an
		// oversized shard), so the listing keeps its guarantees.
		if limit == 1 {
			return nil, storeFailure(fmt.Errorf("list page of %d ids is %d bytes, over the max payload of %d even with limit 1", len(page.UserIDs), len(out), maxPayload))
		}
		q.log.Debug("list page over max payload; retrying smaller", "ids", len(page.UserIDs), "bytes", len(out), "limit", limit)
		limit = max(1, int(int64(limit)*maxPayload/int64(len(out))/2))
	}
}

func (q *queryService) count(ctx context.Context, _ []byte) (any, error) {
	n, err := q.store.Count(ctx)
	if err != nil {
		return nil, storeFailure(err)
	}
	return contract.CountReply{Online: n}, nil
}
