package worker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testenv"
)

// TestNetworkFaults puts a fault-injecting proxy between the worker and each
// server and checks that, after each fault, every session's online and
// offline arrive exactly once.
func TestNetworkFaults(t *testing.T) {
	t.Parallel()
	faults := []struct {
		name   string
		inject func(redisP, natsP *testenv.Proxy)
		heal   func(redisP, natsP *testenv.Proxy)
	}{
		{"redis latency", func(r, _ *testenv.Proxy) { r.SetLatency(100 * time.Millisecond) }, func(r, _ *testenv.Proxy) { r.SetLatency(0) }},
		{"nats latency", func(_, n *testenv.Proxy) { n.SetLatency(100 * time.Millisecond) }, func(_, n *testenv.Proxy) { n.SetLatency(0) }},
		{"redis cut", func(r, _ *testenv.Proxy) { r.Cut() }, func(r, _ *testenv.Proxy) { r.Restore() }},
		{"nats cut", func(_, n *testenv.Proxy) { n.Cut() }, func(_, n *testenv.Proxy) { n.Restore() }},
		{"redis half-open", func(r, _ *testenv.Proxy) { r.Blackhole() }, func(r, _ *testenv.Proxy) { r.Restore() }},
		{"nats half-open", func(_, n *testenv.Proxy) { n.Blackhole() }, func(_, n *testenv.Proxy) { n.Restore() }},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, time.Second)
			redisP := testenv.StartProxy(t, e.redis.Addr)
			natsP := testenv.StartProxy(t, strings.TrimPrefix(e.nats.URL(), "nats://"))
			e.startReplicaVia("redis://"+redisP.Addr+"/0", "nats://"+natsP.Addr)
			name := strings.ReplaceAll(f.name, " ", "-")
			before := ids(name+"-a", 20)
			e.heartbeat(before...)
			e.waitEvents(len(before), 10*time.Second)
			f.inject(redisP, natsP)
			// The fault lasts past the sessions' deadlines (1s TTL).
			ctx := context.Background()
			testenv.Eventually(t, 10*time.Second, func() bool {
				return e.rdb.Exists(ctx, e.prefix+"user:"+before[0]).Val() == 0
			}, "sessions did not lapse during the fault")
			f.heal(redisP, natsP)
			// A new wave after healing works end to end too.
			after := ids(name+"-b", 20)
			testenv.Eventually(t, 30*time.Second, func() bool {
				msg, err := e.nc.Request(e.subjects.Heartbeat(), []byte(fmt.Sprintf(`{"userIds":["%s"]}`, strings.Join(after, `","`))), 2*time.Second)
				return err == nil && strings.Contains(string(msg.Data), `"accepted":20`)
			}, "worker does not accept heartbeats after %s healed", f.name)
			e.expectSessions(append(before, after...), 40*time.Second)
		})
	}
}
