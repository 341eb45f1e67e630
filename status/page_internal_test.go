package status

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/metrics"
)

// TestPageClientLimits: a client that never reads is dropped once its
// buffer is full, the others are not held up, and at most PageMaxClients
// stream at once.
func TestPageClientLimits(t *testing.T) {
	n := testenv.StartNATS(t)
	p := NewPage(client.New(n.Conn(t), client.WithPrefix(testenv.Prefix(t))), func(context.Context) (int64, error) { return 7, nil }, nil)
	if _, _, err := p.attach(); err == nil {
		t.Fatal("attach before Start succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Stop(ctx)

	// A client that never reads is dropped once its buffer is full; the
	// others are not held up.
	slow, _, err := p.attach()
	if err != nil {
		t.Fatal(err)
	}
	others := make([]*pageClient, PageMaxClients-1)
	for i := range others {
		if others[i], _, err = p.attach(); err != nil {
			t.Fatalf("client %d: %v", i+2, err)
		}
	}
	if _, _, err := p.attach(); err == nil {
		t.Fatalf("client %d attached, want at most %d", PageMaxClients+1, PageMaxClients)
	}
	for range pageClientBuf + 1 {
		for _, c := range others { // these keep up
			select {
			case <-c.ch:
			default:
			}
		}
		p.publish(pageState{}, nil, 0)
	}
	p.mu.Lock()
	_, kept := p.clients[slow]
	p.mu.Unlock()
	if kept {
		t.Fatalf("a client that read nothing of %d updates is still attached", pageClientBuf+1)
	}
	got := 0
	for range slow.ch { // the buffered updates, then closed
		got++
	}
	if got == 0 || got > pageClientBuf {
		t.Fatalf("slow client got %d updates before it was dropped, want 1..%d", got, pageClientBuf)
	}
	for i, c := range others {
		p.mu.Lock()
		_, ok := p.clients[c]
		p.mu.Unlock()
		if !ok {
			t.Fatalf("client %d that kept up was dropped", i+2)
		}
	}
	// The dropped client's place is free again.
	if _, _, err := p.attach(); err != nil {
		t.Fatalf("attach after a drop: %v", err)
	}
}

// TestServerStopEndsStreams: a request that only ends with its context (an
// SSE stream) does not hold Stop, whatever the order of the fx hooks.
func TestServerStopEndsStreams(t *testing.T) {
	entered := make(chan struct{})
	s := New(Options{Addr: "127.0.0.1:0", Metrics: metrics.New(), Extra: map[string]http.Handler{
		"GET /stream": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			_ = http.NewResponseController(w).Flush()
			close(entered)
			<-r.Context().Done()
		}),
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := http.Get("http://" + s.Addr() + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	<-entered
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("stop with a stream open: %v", err)
	}
	if _, err := io.Copy(io.Discard, res.Body); err != nil {
		t.Fatalf("stream did not end cleanly: %v", err)
	}
}
