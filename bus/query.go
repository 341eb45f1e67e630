package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/jsonobject"
	"github.com/presenced/presenced/presence"
)

// The query service: a nats.go micro service named QueryServiceName that
// answers who is online. Its endpoints are <prefix>.query.status, .online,
// .list and .count; it is discoverable with $SRV.PING, $SRV.INFO and
// $SRV.STATS like any micro service. A failed request is answered with the
// micro error headers (Nats-Service-Error-Code, Nats-Service-Error) and an
// empty body: QueryBadRequest when the request itself is wrong,
// QueryStoreFailure when Redis did not answer.

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
)

// Query returns the subject of a query endpoint, <prefix>.query.<endpoint>.
func (s Subjects) Query(endpoint string) string { return s.queryGroup() + "." + endpoint }

func (s Subjects) queryGroup() string { return s.Prefix + ".query" }

// QueryStore is what the query service needs from the store (implemented by
// *presence.Store and *presence.View). GetOnlineUsers is given the ids as
// the request lists them, repeats included, and returns each online id
// once, in the order of first appearance.
type QueryStore interface {
	Status(ctx context.Context, id string) (presence.Status, error)
	GetOnlineUsers(ctx context.Context, ids []string) ([]string, error)
	List(ctx context.Context, cursor string, limit int) (presence.Page, error)
	Count(ctx context.Context) (int64, error)
}

// QueryOptions configures the query service. Zero values take the
// documented defaults.
type QueryOptions struct {
	// Subjects; zero means prefix "presence".
	Subjects Subjects
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

func (o QueryOptions) withDefaults() QueryOptions {
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
}

// OnlineRequest is the body of an online query: up to MaxIDs ids, all
// valid (one invalid id fails the request).
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
	return &queryError{code: QueryBadRequest, err: fmt.Errorf(format, args...)}
}

func storeFailure(err error) error {
	return &queryError{code: QueryStoreFailure, err: err}
}

type queryService struct {
	nc    *nats.Conn
	store QueryStore
	opts  QueryOptions
	log   *slog.Logger
	// listIDBytes is the JSON bytes per id of the last list page served
	// (0 before the first): the first scan step of a page is sized so that
	// a page like it fits the max payload.
	listIDBytes atomic.Int64
}

// StartQueryService adds the query service on nc and returns it once the
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
func StartQueryService(nc *nats.Conn, store QueryStore, opts QueryOptions) (micro.Service, error) {
	opts = opts.withDefaults()
	q := &queryService{nc: nc, store: store, opts: opts, log: opts.Logger}
	svc, err := micro.AddService(nc, micro.Config{
		Name:        QueryServiceName,
		Version:     opts.Version,
		Description: "who is online: status, online, list, count",
		Metadata:    map[string]string{"prefix": opts.Subjects.Prefix},
		QueueGroup:  opts.Queue,
		ErrorHandler: func(_ micro.Service, err *micro.NATSError) {
			q.log.Warn("query service error", "subject", err.Subject, "err", err.Description)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("add query service: %w", err)
	}
	g := svc.AddGroup(opts.Subjects.queryGroup())
	endpoints := []struct {
		name string
		fn   func(context.Context, []byte) (any, error)
	}{
		{QueryStatus, q.status},
		{QueryOnline, q.online},
		{QueryList, q.list},
		{QueryCount, q.count},
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
				data, err = encode(reply)
			}
			if err == nil {
				if err := req.Respond(data); err != nil {
					q.log.Debug("query reply failed", "endpoint", name, "err", err)
				}
				return
			}
			err = storeFailure(fmt.Errorf("encode reply: %w", err))
		}
		code := QueryStoreFailure
		var qe *queryError
		if errors.As(err, &qe) {
			code = qe.code
		}
		if code == QueryStoreFailure {
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

// encode marshals v without HTML escaping (so '<', '>' and '&' in ids stay
// one byte, as in OnlineReply.AppendJSON) and without a trailing newline.
func encode(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// decode unmarshals a request body, which must be one strict JSON object
// (see jsonobject: JSON white space only, exact member names, none
// repeated), into fields: member name -> destination; other members are
// ignored.
func decode(data []byte, fields map[string]any) error {
	if err := jsonobject.Decode(data, fields); err != nil {
		return badRequest("%v: %v", ErrMalformed, err)
	}
	return nil
}

func (q *queryService) status(ctx context.Context, data []byte) (any, error) {
	var req StatusRequest
	if err := decode(data, map[string]any{"userId": &req.UserID}); err != nil {
		return nil, err
	}
	if err := contract.ValidateUserID(req.UserID); err != nil {
		return nil, badRequest("%v", err)
	}
	st, err := q.store.Status(ctx, req.UserID)
	if err != nil {
		return nil, storeFailure(err)
	}
	r := StatusReply{UserID: st.UserID, Online: st.Online, Version: st.Version}
	if !st.Since.IsZero() {
		r.Since = st.Since.UTC().Format(TimeFormat)
	}
	if !st.ExpiresAt.IsZero() {
		r.ExpiresAt = st.ExpiresAt.UTC().Format(TimeFormat)
	}
	return r, nil
}

func (q *queryService) online(ctx context.Context, data []byte) (any, error) {
	// The ids only live as long as the request: they may share one copy
	// of the body.
	f, ok := parseFast(data, q.opts.MaxIDs, true)
	ids, valid := f.ids, f.valid
	if !ok || f.key != "userIds" {
		// Anything unusual (escapes, more ids than allowed, other fields)
		// goes through encoding/json, which words the errors.
		var req struct {
			UserIDs *[]string
		}
		if err := decode(data, map[string]any{"userIds": &req.UserIDs}); err != nil {
			return nil, err
		}
		if req.UserIDs == nil {
			return nil, badRequest(`%v: no "userIds"`, ErrMalformed)
		}
		ids, valid = *req.UserIDs, false
	}
	if len(ids) > q.opts.MaxIDs {
		return nil, badRequest("%v: %d ids, the maximum is %d", ErrTooMany, len(ids), q.opts.MaxIDs)
	}
	if !valid {
		for i, id := range ids {
			if err := contract.ValidateUserID(id); err != nil {
				return nil, badRequest("userIds[%d]: %v", i, err)
			}
		}
	}
	online, err := q.store.GetOnlineUsers(ctx, ids)
	if err != nil {
		return nil, storeFailure(err)
	}
	// The reply fits the max payload whenever the request did: it holds a
	// subset of the request's ids, each encoded no longer than any valid
	// JSON encoding of it, under a shorter key.
	return OnlineReply{Online: online}.AppendJSON(nil), nil
}

func (q *queryService) list(ctx context.Context, data []byte) (any, error) {
	var req ListRequest
	if err := decode(data, map[string]any{"cursor": &req.Cursor, "limit": &req.Limit}); err != nil {
		return nil, err
	}
	switch {
	case req.Limit < 0:
		return nil, badRequest("%v: negative limit %d", ErrMalformed, req.Limit)
	case req.Limit == 0:
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
		out = ListReply{UserIDs: page.UserIDs, Cursor: page.Cursor}.AppendJSON(out[:0])
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
	return CountReply{Online: n}, nil
}
