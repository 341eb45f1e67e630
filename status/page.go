package status

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/contract"
)

//go:embed web/index.html
var pageHTML []byte

// Limits of the status page.
const (
	// PageRecent is how many of the latest events the page keeps and shows.
	PageRecent = 50
	// PageMaxClients bounds the /events streams open at once; more get 503.
	PageMaxClients = 64

	pageTick       = 250 * time.Millisecond // one update to every client per tick
	pageCountEvery = time.Second            // count poll when no event arrived
	pageRateWindow = 5 * time.Second        // rates are averaged over this
	pageClientBuf  = 16                     // updates queued per client (4s)
	pageKeepAlive  = 15 * time.Second       // SSE comment on an idle stream
	pageWriteLimit = 10 * time.Second       // a write stuck longer ends the stream
)

// Page is the live status page: GET / serves a small HTML page and GET
// /events streams Server-Sent Events to it: the number of users online, the
// rates of online and offline events and the latest events.
//
// The page subscribes to <prefix>.online and <prefix>.offline on the NATS
// connection it is given (plain subscriptions, so every replica's page sees
// every event) and polls the online count. One goroutine, started by Start
// and waited for by Stop, batches what arrived into one update per 250ms and
// hands it to every open stream through a bounded per-client buffer; a
// client that falls that far behind is disconnected (its EventSource
// reconnects and gets a fresh snapshot), so a slow browser never holds up
// the others or the NATS subscription.
//
// The methods are safe for concurrent use. Start and Stop are called once.
type Page struct {
	c     *client.Client
	count func(context.Context) (int64, error)
	log   *slog.Logger

	stopSub func() error // ends the client's subscription
	cancel  context.CancelFunc
	loop    sync.WaitGroup
	done    chan struct{} // closed by Stop: open streams end

	mu      sync.Mutex
	started bool
	stopped bool
	pending []contract.Event // events arrived since the last tick, at most PageRecent
	skipped int              // arrivals since the last tick not in pending
	arrived [2]int64         // online, offline arrivals since the last tick
	recent  []contract.Event // the latest PageRecent events, oldest first
	state   pageState        // the last update's figures
	clients map[*pageClient]struct{}
}

// pageState is what the page shows besides the events.
type pageState struct {
	Online      *int64  `json:"online"` // null until the first count
	CountError  string  `json:"countError,omitempty"`
	OnlineRate  float64 `json:"onlineRate"`  // online events per second
	OfflineRate float64 `json:"offlineRate"` // offline events per second
}

// pageUpdate is the data of one SSE message. A "snapshot" carries the recent
// events (the page replaces its list); an "update" carries the events that
// arrived since the previous update (the page prepends them).
type pageUpdate struct {
	pageState
	Events []contract.Event `json:"events"` // oldest first
	// Skipped counts events since the previous update left out because more
	// than PageRecent arrived.
	Skipped int    `json:"skipped,omitempty"`
	Time    string `json:"time"`
}

type pageClient struct {
	ch chan []byte // encoded SSE messages; closed when the client is dropped
}

// NewPage returns a page that follows presenced's online and offline
// events through the Go client c (a consumer like any other: duplicates
// and late republishes are dropped by version) and calls count for the
// number of users online (for example c.Count). It does no I/O until
// Start.
func NewPage(c *client.Client, count func(context.Context) (int64, error), log *slog.Logger) *Page {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Page{
		c:       c,
		count:   count,
		log:     log,
		done:    make(chan struct{}),
		clients: make(map[*pageClient]struct{}),
	}
}

// UseClient sets the client and the count, for a page made before its
// connection was (the application's NATS connection starts later).
func (p *Page) UseClient(c *client.Client, count func(context.Context) (int64, error)) {
	p.c, p.count = c, count
}

// Start subscribes to the events through the client and starts the update
// loop. It returns an error if the subscription fails.
func (p *Page) Start(ctx context.Context) error {
	if p.c == nil {
		return errors.New("start status page: no client")
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	stop, err := p.c.Subscribe(loopCtx, p.receive)
	if err != nil {
		cancel()
		return fmt.Errorf("status page: %w", err)
	}
	p.stopSub = stop
	p.cancel = cancel
	p.mu.Lock()
	p.started = true
	p.mu.Unlock()
	p.loop.Add(1)
	go func() {
		defer p.loop.Done()
		p.run(loopCtx)
	}()
	return nil
}

// Stop unsubscribes, stops the update loop and ends every open stream.
// Bounded by ctx.
func (p *Page) Stop(ctx context.Context) error {
	p.unsubscribe()
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return nil
	}
	p.stopped = true
	close(p.done)
	for c := range p.clients {
		delete(p.clients, c)
		close(c.ch)
	}
	p.mu.Unlock()
	if p.cancel == nil {
		return nil
	}
	p.cancel()
	waited := make(chan struct{})
	go func() {
		p.loop.Wait()
		close(waited)
	}()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop status page: %w", ctx.Err())
	}
}

func (p *Page) unsubscribe() {
	if p.stopSub != nil {
		_ = p.stopSub() // waits for the handler's last call
		p.stopSub = nil
	}
}

// receive is the client's event handler: it counts an event by its status
// and keeps the last PageRecent of a tick. Resets are not shown.
func (p *Page) receive(ev client.Event) {
	if ev.Status != contract.StatusOnline && ev.Status != contract.StatusOffline {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ev.Status == contract.StatusOnline {
		p.arrived[0]++
	} else {
		p.arrived[1]++
	}
	if len(p.pending) == PageRecent {
		copy(p.pending, p.pending[1:])
		p.pending = p.pending[:PageRecent-1]
		p.skipped++
	}
	p.pending = append(p.pending, ev)
}

// run sends one update per tick until ctx is done.
func (p *Page) run(ctx context.Context) {
	tick := time.NewTicker(pageTick)
	defer tick.Stop()
	window := int(pageRateWindow / pageTick)
	rates := make([][2]int64, 0, window) // arrivals per tick, newest last
	var lastCount time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.mu.Lock()
		events, skipped, arrived := p.pending, p.skipped, p.arrived
		p.pending, p.skipped, p.arrived = nil, 0, [2]int64{}
		state := p.state
		p.mu.Unlock()

		if len(rates) == window {
			rates = append(rates[:0], rates[1:]...)
		}
		rates = append(rates, arrived)
		var sum [2]int64
		for _, r := range rates {
			sum[0] += r[0]
			sum[1] += r[1]
		}
		secs := (time.Duration(len(rates)) * pageTick).Seconds()
		state.OnlineRate, state.OfflineRate = float64(sum[0])/secs, float64(sum[1])/secs

		if len(events) > 0 || time.Since(lastCount) >= pageCountEvery {
			lastCount = time.Now()
			cctx, cancel := context.WithTimeout(ctx, pageCountEvery)
			n, err := p.count(cctx)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				state.CountError = err.Error()
			} else {
				state.Online, state.CountError = &n, ""
			}
		}
		p.publish(state, events, skipped)
	}
}

// publish records an update and queues it for every client, dropping the
// clients whose buffer is full.
func (p *Page) publish(state pageState, events []contract.Event, skipped int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = state
	p.recent = append(p.recent, events...)
	if n := len(p.recent); n > PageRecent {
		p.recent = append(p.recent[:0:0], p.recent[n-PageRecent:]...)
	}
	if len(p.clients) == 0 {
		return
	}
	msg := encodeSSE("update", pageUpdate{pageState: state, Events: nonNil(events), Skipped: skipped, Time: now()})
	for c := range p.clients {
		select {
		case c.ch <- msg:
		default:
			delete(p.clients, c)
			close(c.ch)
			p.log.Debug("status page: dropped a slow client")
		}
	}
}

// attach registers a stream and returns its channel and first message.
func (p *Page) attach() (*pageClient, []byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !p.started || p.stopped:
		return nil, nil, errors.New("status page not running")
	case len(p.clients) >= PageMaxClients:
		return nil, nil, fmt.Errorf("too many status page clients (%d)", PageMaxClients)
	}
	c := &pageClient{ch: make(chan []byte, pageClientBuf)}
	p.clients[c] = struct{}{}
	snap := encodeSSE("snapshot", pageUpdate{pageState: p.state, Events: nonNil(append([]contract.Event(nil), p.recent...)), Time: now()})
	return c, snap, nil
}

func (p *Page) detach(c *pageClient) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.clients[c]; ok {
		delete(p.clients, c)
		close(c.ch)
	}
}

// Handler serves GET / (the page) and GET /events (the stream); mount it at
// the root of a mux.
func (p *Page) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(pageHTML)
	})
	mux.HandleFunc("GET /events", p.serveEvents)
	return mux
}

func (p *Page) serveEvents(w http.ResponseWriter, r *http.Request) {
	c, snap, err := p.attach()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer p.detach(c)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(pageWriteLimit)) // unsupported only in tests' recorders
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write(append([]byte("retry: 2000\n"), snap...)) {
		return
	}
	keepAlive := time.NewTicker(pageKeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-p.done:
			return
		case <-keepAlive.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		case msg, ok := <-c.ch:
			if !ok || !write(msg) {
				return
			}
		}
	}
}

// encodeSSE returns one Server-Sent Event. JSON has no raw newlines, so the
// data fits one data: line.
func encodeSSE(event string, v any) []byte {
	data, err := json.Marshal(v)
	if err != nil { // contract.Event and the state always encode
		data = []byte(`{}`)
	}
	var b bytes.Buffer
	b.Grow(len(event) + len(data) + 16)
	b.WriteString("event: ")
	b.WriteString(event)
	b.WriteString("\ndata: ")
	b.Write(data)
	b.WriteString("\n\n")
	return b.Bytes()
}

func nonNil(evs []contract.Event) []contract.Event {
	if evs == nil {
		return []contract.Event{}
	}
	return evs
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }
