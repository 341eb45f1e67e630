package client_test

import (
	"context"
	"fmt"
	"time"

	"github.com/presenced/presenced/client"
)

// A gateway reports its connections; any service asks who is online.
func Example() {
	nc, shutdown := runPresenced("Example") // NATS, Redis and presenced for this example
	defer shutdown()
	ctx := context.Background()
	c := client.New(nc)

	r, err := c.Heartbeat(ctx, "alice", "bob", "not valid")
	if err != nil {
		fmt.Println("heartbeat:", err)
		return
	}
	fmt.Println("accepted:", r.Accepted)
	for _, rej := range r.Rejected {
		fmt.Printf("rejected %q: %s\n", rej.UserID, rej.Error)
	}

	online, _ := c.IsOnline(ctx, "alice")
	n, _ := c.Count(ctx)
	fmt.Println("alice online:", online, "users online:", n)

	if _, err := c.Disconnect(ctx, "alice"); err != nil {
		fmt.Println("disconnect:", err)
		return
	}
	online, _ = c.IsOnline(ctx, "alice")
	fmt.Println("alice online:", online)
	// Output:
	// accepted: 2
	// rejected "not valid": invalid userId: space at byte 3
	// alice online: true users online: 2
	// alice online: false
}

func ExampleClient_Subscribe() {
	nc, shutdown := runPresenced("ExampleClient_Subscribe")
	defer shutdown()
	ctx := context.Background()
	c := client.New(nc)

	events := make(chan client.Event, 16)
	stop, err := c.Subscribe(ctx, func(ev client.Event) { events <- ev })
	if err != nil {
		fmt.Println("subscribe:", err)
		return
	}
	defer stop()

	_, _ = c.Heartbeat(ctx, "alice")
	printNext(events)
	_, _ = c.Heartbeat(ctx, "alice") // a refresh: no event
	_, _ = c.Disconnect(ctx, "alice")
	printNext(events)
	// Output:
	// alice online heartbeat
	// alice offline disconnect
}

func ExampleClient_List() {
	nc, shutdown := runPresenced("ExampleClient_List")
	defer shutdown()
	ctx := context.Background()
	c := client.New(nc)

	for i := range 250 {
		_, _ = c.Heartbeat(ctx, fmt.Sprintf("user-%d", i))
	}
	online := map[string]bool{} // a listing may repeat an id
	for page, err := range c.List(ctx, 100) {
		if err != nil {
			fmt.Println("list:", err)
			return
		}
		for _, id := range page {
			online[id] = true
		}
	}
	fmt.Println(len(online), "users online")
	// Output:
	// 250 users online
}

// A gateway process reports its users' connections; a user is online while
// any of them is live, on any gateway.
func ExampleGateway() {
	nc, shutdown := runPresenced("ExampleGateway")
	defer shutdown()
	ctx := context.Background()
	c := client.New(nc)

	events := make(chan client.Event, 16)
	stop, err := c.Subscribe(ctx, func(ev client.Event) { events <- ev })
	if err != nil {
		fmt.Println("subscribe:", err)
		return
	}
	defer stop()

	// One Gateway per process, under a stable id (the host name, say);
	// WithLease and WithHeartbeatInterval follow presenced's
	// PRESENCE_GATEWAY_LEASE and PRESENCE_TTL (defaults 15s and 60s).
	gw := client.NewGateway(c, "gw-1", client.WithLease(15*time.Second), client.WithHeartbeatInterval(30*time.Second))
	if err := gw.Start(ctx); err != nil {
		fmt.Println("start:", err)
		return
	}
	// On a clean shutdown: disconnect what is still open, end the lease.
	defer gw.Close(ctx)

	// alice opens two tabs: one online event.
	_ = gw.Connect(ctx, "alice", "tab-1")
	_ = gw.Connect(ctx, "alice", "tab-2")
	st, _ := c.Status(ctx, "alice")
	fmt.Println("alice online:", st.Online, "connections:", len(st.Connections))

	// Closing one tab publishes nothing; closing the last one, the offline.
	_ = gw.Disconnect(ctx, "alice", "tab-1")
	_ = gw.Disconnect(ctx, "alice", "tab-2")
	printNext(events)
	printNext(events)
	// Output:
	// alice online: true connections: 2
	// alice online heartbeat
	// alice offline disconnect
}

// printNext prints the next event a Subscribe handler passed on.
func printNext(events <-chan client.Event) {
	select {
	case ev := <-events:
		fmt.Println(ev.UserID, ev.Status, ev.Reason)
	case <-time.After(10 * time.Second):
		fmt.Println("no event")
	}
}
