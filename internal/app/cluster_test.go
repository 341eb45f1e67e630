package app

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/testenv"
	"github.com/presenced/presenced/presence"
)

// TestAppOnRedisCluster starts the application as cmd/presenced wires it
// with REDIS_CLUSTER_ADDRS: users heartbeat through NATS, the query
// service answers from the cluster (online, status, count, a list walked
// over the partitions in small pages), the seed's keys exist on the
// cluster, and a disconnect's offline arrives once and removes the key.
func TestAppOnRedisCluster(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0)
	n := testenv.StartNATS(t)
	p := testenv.Prefix(t)
	cfg := config.Default()
	cfg.NATSURL, cfg.RedisClusterAddrs = n.URL(), strings.Join(rc.Addrs(), ",")
	cfg.RedisClusterPartitions = 6
	cfg.KeyPrefix, cfg.SubjectPrefix = p+":", p
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.ReconcileInterval = 50 * time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	app := fx.New(Modules(cfg, slog.New(slog.DiscardHandler)), fx.NopLogger)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := app.Start(ctx); err != nil {
		t.Fatalf("start app: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := app.Stop(ctx); err != nil {
			t.Errorf("stop app: %v", err)
		}
	})

	c := client.New(n.Conn(t), client.WithPrefix(p))
	var offlines []client.Event
	offline := make(chan client.Event, 100)
	stop, err := c.Subscribe(ctx, func(ev client.Event) {
		if ev.Status == client.StatusOffline {
			offline <- ev
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stop() }()

	var ids []string
	for i := range 50 {
		ids = append(ids, fmt.Sprintf("user-%d", i))
	}
	if r, err := c.Heartbeat(ctx, ids...); err != nil || r.Accepted != len(ids) {
		t.Fatalf("heartbeat: %+v, %v", r, err)
	}
	online, err := c.Online(ctx, append([]string{"nobody"}, ids...))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(online)
	want := slices.Clone(ids)
	sort.Strings(want)
	if !slices.Equal(online, want) {
		t.Fatalf("online = %v, want %v", online, want)
	}
	if n, err := c.Count(ctx); err != nil || n != int64(len(ids)) {
		t.Fatalf("count = %d, %v; want %d", n, err, len(ids))
	}
	st, err := c.Status(ctx, "user-7")
	if err != nil || !st.Online {
		t.Fatalf("status of user-7 = %+v, %v", st, err)
	}
	var listed []string
	for page, err := range c.List(ctx, 7) {
		if err != nil {
			t.Fatal(err)
		}
		listed = append(listed, page...)
	}
	sort.Strings(listed)
	if !slices.Equal(listed, want) {
		t.Fatalf("listed %d users %v, want %v", len(listed), listed, want)
	}
	cc := rc.Client(t)
	mirror := presence.NewKeys(cfg.KeyPrefix).User("user-7")
	if cc.Exists(ctx, mirror).Val() != 1 {
		t.Fatalf("%s does not exist while user-7 is online", mirror)
	}

	if r, err := c.Disconnect(ctx, "user-7"); err != nil || r.Accepted != 1 {
		t.Fatalf("disconnect: %+v, %v", r, err)
	}
	select {
	case ev := <-offline:
		offlines = append(offlines, ev)
	case <-time.After(10 * time.Second):
		t.Fatal("no offline for user-7")
	}
	if offlines[0].UserID != "user-7" || offlines[0].Reason != "disconnect" {
		t.Fatalf("offline %+v", offlines[0])
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return cc.Exists(ctx, mirror).Val() == 0 }, "%s still exists after user-7's offline", mirror)
	if st, err := c.Status(ctx, "user-7"); err != nil || st.Online {
		t.Fatalf("status of user-7 after disconnect = %+v, %v", st, err)
	}
	select {
	case ev := <-offline:
		t.Fatalf("a second offline: %+v", ev)
	case <-time.After(500 * time.Millisecond):
	}
}
