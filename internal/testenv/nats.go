package testenv

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATSStartTimeout bounds how long StartNATS, Start and Restart wait for the
// server to accept connections.
const NATSStartTimeout = 10 * time.Second

// NATS is an embedded nats-server listening on 127.0.0.1 on a random port,
// over real TCP. It is shut down when the test that started it ends.
//
// The methods are safe for concurrent use, but report failures with
// t.Fatalf and so belong on the test's goroutine.
type NATS struct {
	opts natsOpts

	mu   sync.Mutex
	port int            // fixed by the first start
	srv  *server.Server // nil when stopped
}

// NATSOption changes how StartNATS configures the server.
type NATSOption func(*natsOpts)

type natsOpts struct {
	jetStream bool
	storeDir  string
	configure []func(*server.Options)
}

// WithJetStream enables JetStream with its store in dir, which survives
// Restart; an empty dir means a t.TempDir().
func WithJetStream(dir string) NATSOption {
	return func(o *natsOpts) { o.jetStream, o.storeDir = true, dir }
}

// WithServerOptions lets a test change any server option (limits, accounts)
// before each start. Host and Port are set by testenv afterwards.
func WithServerOptions(f func(*server.Options)) NATSOption {
	return func(o *natsOpts) { o.configure = append(o.configure, f) }
}

// StartNATS starts an embedded nats-server on 127.0.0.1 on a random port and
// returns once it accepts connections. A t.Cleanup shuts it down.
func StartNATS(t testing.TB, opts ...NATSOption) *NATS {
	t.Helper()
	n := &NATS{port: -1}
	for _, o := range opts {
		o(&n.opts)
	}
	if n.opts.jetStream && n.opts.storeDir == "" {
		n.opts.storeDir = t.TempDir()
	}
	t.Cleanup(func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.stopLocked()
	})
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.startLocked(); err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	return n
}

// URL returns nats://127.0.0.1:<port>, the same across Stop and Start.
func (n *NATS) URL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return fmt.Sprintf("nats://127.0.0.1:%d", n.port)
}

// Server returns the running server, for inspection (NumSubscriptions,
// JetStream state), or nil when stopped.
func (n *NATS) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// Conn connects a new client, closed when the test ends. It reconnects
// forever, every 20ms, so it survives Restart.
func (n *NATS) Conn(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(n.URL(),
		nats.Name("testenv "+t.Name()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(20*time.Millisecond),
		nats.ReconnectJitter(0, 0),
		nats.Timeout(NATSStartTimeout),
	)
	if err != nil {
		t.Fatalf("connect to %s: %v", n.URL(), err)
		return nil
	}
	t.Cleanup(nc.Close)
	return nc
}

// Stop shuts the server down and waits until it is down; clients see the
// connection drop. Stopping a stopped server does nothing.
func (n *NATS) Stop(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopLocked()
}

// Start starts a stopped server again on the same port with the same options
// (and JetStream store). It fails the test if the server is running.
func (n *NATS) Start(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		t.Fatalf("start nats-server on port %d: already running", n.port)
		return
	}
	if err := n.startLocked(); err != nil {
		t.Fatalf("restart nats-server on port %d: %v", n.port, err)
	}
}

// Restart is Stop followed by Start.
func (n *NATS) Restart(t testing.TB) {
	t.Helper()
	n.Stop(t)
	n.Start(t)
}

func (n *NATS) startLocked() error {
	o := &server.Options{
		NoLog:     true,
		NoSigs:    true,
		JetStream: n.opts.jetStream,
		StoreDir:  n.opts.storeDir,
	}
	for _, f := range n.opts.configure {
		f(o)
	}
	o.Host, o.Port = "127.0.0.1", n.port
	srv, err := server.NewServer(o)
	if err != nil {
		return err
	}
	srv.Start()
	if !srv.ReadyForConnections(NATSStartTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("not accepting connections on port %d within %s", n.port, NATSStartTimeout)
	}
	n.srv = srv
	n.port = srv.Addr().(*net.TCPAddr).Port
	return nil
}

func (n *NATS) stopLocked() {
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
}

// StartNATSCluster starts n embedded nats-servers (StartNATS) on 127.0.0.1
// joined into one cluster by routes (each server has a fixed route port and
// routes to every other), and returns once each has a route to every other
// server. A server stopped and started again rejoins the cluster.
func StartNATSCluster(t testing.TB, n int, opts ...NATSOption) []*NATS {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = FreePort(t)
	}
	var ss []*NATS
	for i := range n {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
			}
		}
		cluster := WithServerOptions(func(o *server.Options) {
			o.ServerName = fmt.Sprintf("n%d", i+1)
			o.Cluster = server.ClusterOpts{Name: "testenv", Host: "127.0.0.1", Port: ports[i]}
			o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		})
		ss = append(ss, StartNATS(t, append([]NATSOption{cluster}, opts...)...))
	}
	for _, s := range ss {
		s.WaitRoutes(t, n-1)
	}
	return ss
}

// WaitRoutes waits until the server has a route to n other servers.
func (n *NATS) WaitRoutes(t testing.TB, others int) {
	t.Helper()
	Eventually(t, NATSStartTimeout, func() bool {
		srv := n.Server()
		if srv == nil {
			return false
		}
		rz, err := srv.Routez(nil)
		if err != nil {
			return false
		}
		peers := map[string]bool{}
		for _, r := range rz.Routes {
			peers[r.RemoteID] = true
		}
		return len(peers) >= others
	}, "nats-server on %s has routes to fewer than %d servers", n.URL(), others)
}
