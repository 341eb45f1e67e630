package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/presenced/presenced/client"
)

// demoLease is the demo's gateway lease (PRESENCE_GATEWAY_LEASE): short,
// so that a crashed gateway's users go offline within about a second.
const demoLease = time.Second

// demoGateways are the demo's two gateways, gw-1 and gw-2, each a
// client.Gateway in the demo process, and the connections the simulated
// users hold on them.
type demoGateways struct {
	c   *client.Client
	ttl time.Duration
	p   *printer

	mu    sync.Mutex
	gws   [2]*client.Gateway        // nil while crashed
	conns map[string]map[string]int // user -> connection id -> gateway index
}

// heldConn is a connection a simulated user holds: its id, and the
// gateway instance it was opened on.
type heldConn struct {
	id string
	i  int
	g  *client.Gateway
}

func gatewayName(i int) string { return fmt.Sprintf("gw-%d", i+1) }

// start starts gateway i (again, after a crash: a new instance).
func (d *demoGateways) start(ctx context.Context, i int) error {
	g := client.NewGateway(d.c, gatewayName(i), client.WithLease(demoLease), client.WithHeartbeatInterval(d.ttl/3))
	if err := g.Start(ctx); err != nil {
		return fmt.Errorf("start gateway %s: %w", gatewayName(i), err)
	}
	d.mu.Lock()
	d.gws[i] = g
	d.mu.Unlock()
	return nil
}

// shutdown closes the running gateways cleanly: their connections are
// disconnected and their leases end.
func (d *demoGateways) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d.mu.Lock()
	gws := d.gws
	d.mu.Unlock()
	for _, g := range gws {
		if g != nil {
			_ = g.Close(ctx)
		}
	}
}

// simulate plays a user whose devices connect through the gateways homes:
// a session opens a connection on each, holds for a few TTLs while tabs
// come and go (a new connection opens, then an old one closes: no event,
// as another is live), and ends with every connection closed (one offline);
// a pause, and again. Connections on a gateway that crashed are gone: the
// user reconnects once it is back.
func (d *demoGateways) simulate(ctx context.Context, user string, homes ...int) {
	if !sleepCtx(ctx, time.Duration(rand.Int64N(int64(min(2*time.Second, d.ttl))))) {
		return
	}
	n := 0
	var open []heldConn
	connect := func(i int) {
		if h, ok := d.open(ctx, user, i, &n); ok {
			open = append(open, h)
		}
	}
	for {
		for _, i := range homes {
			connect(i)
		}
		end := time.Now().Add(time.Duration(2+rand.IntN(4)) * d.ttl)
		for {
			if !sleepCtx(ctx, d.ttl/2+time.Duration(rand.Int64N(int64(d.ttl/2)))) {
				return
			}
			open = d.prune(user, open)
			if time.Now().After(end) {
				break
			}
			switch {
			case len(open) == 0:
				for _, i := range homes {
					connect(i)
				}
			case rand.IntN(3) == 0:
				connect(homes[rand.IntN(len(homes))])
				if len(open) > 1 {
					d.close(ctx, user, open[0])
					open = open[1:]
				}
			}
		}
		for _, h := range open {
			d.close(ctx, user, h)
		}
		open = nil
		if !sleepCtx(ctx, d.ttl/2+time.Duration(rand.Int64N(int64(d.ttl)))) {
			return
		}
	}
}

// open connects user on gateway i under a new connection id, unless the
// gateway is down.
func (d *demoGateways) open(ctx context.Context, user string, i int, n *int) (heldConn, bool) {
	d.mu.Lock()
	g := d.gws[i]
	d.mu.Unlock()
	if g == nil {
		return heldConn{}, false
	}
	*n++
	h := heldConn{id: fmt.Sprintf("c%d", *n), i: i, g: g}
	// Registered before it is sent, so that a crash meanwhile counts it.
	d.mu.Lock()
	if d.conns[user] == nil {
		d.conns[user] = map[string]int{}
	}
	d.conns[user][h.id] = i
	d.mu.Unlock()
	if err := g.Connect(ctx, user, h.id); err != nil {
		d.mu.Lock()
		delete(d.conns[user], h.id)
		d.mu.Unlock()
		return heldConn{}, false
	}
	return h, true
}

// close disconnects h, unless its gateway crashed since it was opened.
func (d *demoGateways) close(ctx context.Context, user string, h heldConn) {
	d.mu.Lock()
	live := d.gws[h.i] == h.g
	delete(d.conns[user], h.id)
	d.mu.Unlock()
	if live {
		_ = h.g.Disconnect(ctx, user, h.id)
	}
}

// prune drops the connections whose gateway crashed since they were
// opened: presenced ended them.
func (d *demoGateways) prune(user string, open []heldConn) []heldConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.DeleteFunc(open, func(h heldConn) bool { return d.gws[h.i] != h.g })
}

// crashLoop crashes gw-2 about every every: it stops renewing its lease
// and heartbeating without a word to presenced, which ends its connections
// when the lease lapses; after a while it comes back as a new instance.
func (d *demoGateways) crashLoop(ctx context.Context, every time.Duration) {
	const victim = 1
	for {
		if !sleepCtx(ctx, every/2+time.Duration(rand.Int64N(int64(every)))) {
			return
		}
		var stay, lose []string
		d.mu.Lock()
		g := d.gws[victim]
		if g == nil { // its restart failed: try again
			d.mu.Unlock()
			d.restart(ctx, victim)
			continue
		}
		d.gws[victim] = nil
		for user, conns := range d.conns {
			on, elsewhere := false, false
			for id, i := range conns {
				if i == victim {
					on = true
					delete(conns, id)
				} else {
					elsewhere = true
				}
			}
			switch {
			case on && elsewhere:
				stay = append(stay, user)
			case on:
				lose = append(lose, user)
			}
		}
		d.mu.Unlock()
		g.Abandon()
		d.p.note("💥 gateway %s crashed (instance %.8s): no disconnects; presenced ends its connections when its lease lapses (%v). Also on %s, staying online: %s. Only on %s, going offline (gateway_lost): %s.",
			gatewayName(victim), g.InstanceID(), demoLease, gatewayName(1-victim), list(stay), gatewayName(victim), list(lose))
		if !sleepCtx(ctx, demoLease+d.ttl) {
			return
		}
		d.restart(ctx, victim)
	}
}

// restart starts gateway i as a new instance after a crash.
func (d *demoGateways) restart(ctx context.Context, i int) {
	if err := d.start(ctx, i); err != nil {
		if ctx.Err() == nil {
			d.p.note("gateway %s did not restart: %v", gatewayName(i), err)
		}
		return
	}
	d.mu.Lock()
	g := d.gws[i]
	d.mu.Unlock()
	d.p.note("🔁 gateway %s restarted as instance %.8s; its users reconnect", gatewayName(i), g.InstanceID())
}

// list is the ids sorted and joined, or "none".
func list(ids []string) string {
	if len(ids) == 0 {
		return "none"
	}
	slices.Sort(ids)
	return strings.Join(ids, ", ")
}

// sleepCtx waits d, or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
