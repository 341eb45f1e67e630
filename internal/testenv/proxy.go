package testenv

import (
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a fault-injecting TCP proxy on 127.0.0.1 between a client under
// test and a real server: it adds latency, cuts connections, or turns them
// half-open (bytes vanish, nothing is closed), like a network would.
type Proxy struct {
	Addr   string // listen address for the client
	target string
	ln     net.Listener

	mu       sync.Mutex
	latency  time.Duration
	mode     proxyMode
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
	closed   bool
	accepted int
}

type proxyMode int

const (
	proxyOpen      proxyMode = iota
	proxyCut                 // connections are refused (accepted and closed at once)
	proxyBlackhole           // connections stay open, data is dropped both ways
)

// StartProxy forwards 127.0.0.1:<port> to target until the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// SetLatency delays every chunk forwarded in either direction by d.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Cut closes every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.mode = proxyCut
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
}

// Blackhole makes connections half-open until Restore: existing and new
// connections stay up but every byte is dropped, so only timeouts and
// health checks can notice.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	p.mode = proxyBlackhole
	p.mu.Unlock()
}

// Restore ends Cut or Blackhole. Connections blackholed meanwhile are closed
// (their byte streams are corrupt), as a recovering network would reset them.
func (p *Proxy) Restore() {
	p.mu.Lock()
	if p.mode == proxyBlackhole {
		for c := range p.conns {
			_ = c.Close()
		}
	}
	p.mode = proxyOpen
	p.mu.Unlock()
}

// Accepted returns how many client connections were accepted so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.accepted++
		if p.closed || p.mode == proxyCut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		_ = client.Close()
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	p.conns[client] = struct{}{}
	p.conns[server] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client) }()
	go func() { defer wg.Done(); p.pipe(client, server) }()
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
}

// pipe copies src to dst chunk by chunk, applying the current faults; when
// either side ends, both are closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer func() {
		_ = dst.Close()
		_ = src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			latency, mode := p.latency, p.mode
			p.mu.Unlock()
			if latency > 0 {
				time.Sleep(latency)
			}
			if mode != proxyBlackhole {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return // EOF or a closed side: the other direction ends too
		}
	}
}
