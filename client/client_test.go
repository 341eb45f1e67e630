package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The embedded nats-server and go-redis pools keep background goroutines
		// that end after the test binary's last cleanup.
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// After a test stops redis-server, go-redis redials in the background
		// and notices the client was closed only after its next 1s pause.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"),
	)
}

const wait = 10 * time.Second

// events collects what a Subscribe handler is called with.
type events chan client.Event

func (ch events) handle(ev client.Event) { ch <- ev }

// next returns the next event, failing the test if none comes within wait.
func (ch events) next(t *testing.T) client.Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(wait):
		t.Fatalf("no event within %v", wait)
		return client.Event{}
	}
}

func subscribe(t *testing.T, c *client.Client) events {
	t.Helper()
	ch := make(events, 1024)
	stop, err := c.Subscribe(context.Background(), ch.handle)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return ch
}

func TestWireMatchesBus(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 4, 5, 6, 7, 123456000, time.UTC)
	data, err := json.Marshal(contract.Event{UserID: "u-1", Status: "offline", Reason: "expired", At: at, Version: 1772600767123456})
	if err != nil {
		t.Fatal(err)
	}
	var ev client.Event
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatal(err)
	}
	if want := (client.Event{UserID: "u-1", Status: "offline", Reason: "expired", At: at, Version: 1772600767123456}); ev != want {
		t.Fatalf("decoded %+v from %s, want %+v", ev, data, want)
	}

	data, err = json.Marshal(contract.Reply{Accepted: 2, Rejected: []contract.Rejection{{UserID: "a b", Error: "invalid userId: space at byte 1", Reason: "space"}}, Error: "x"})
	if err != nil {
		t.Fatal(err)
	}
	var r client.Reply
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if r.Accepted != 2 || len(r.Rejected) != 1 || r.Rejected[0] != (client.Rejection{UserID: "a b", Error: "invalid userId: space at byte 1"}) || r.Error != "x" {
		t.Fatalf("decoded %+v from %s", r, data)
	}
}

func TestHeartbeatSubscribeQueryDisconnect(t *testing.T) {
	t.Parallel()
	p := startPresenced(t, testenv.Prefix(t), time.Minute)
	c := client.New(p.nats.Conn(t), client.WithPrefix(p.prefix))
	ctx := context.Background()
	evs := subscribe(t, c)

	r, err := c.Heartbeat(ctx, "u-1", "u-2", "u-1", "bad id")
	if err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	if r.Accepted != 2 || len(r.Rejected) != 1 || r.Rejected[0].UserID != "bad id" || !strings.Contains(r.Rejected[0].Error, "space") {
		t.Fatalf("heartbeat reply %+v", r)
	}
	got := map[string]client.Event{}
	for range 2 {
		ev := evs.next(t)
		got[ev.UserID] = ev
	}
	on := got["u-1"]
	if on.Status != "online" || on.Reason != "heartbeat" || on.Version <= 0 || time.Since(on.At).Abs() > time.Minute || got["u-2"].Status != "online" {
		t.Fatalf("events %+v", got)
	}

	if ok, err := c.IsOnline(ctx, "u-1"); err != nil || !ok {
		t.Fatalf("IsOnline(u-1) = %v, %v", ok, err)
	}
	if ok, err := c.IsOnline(ctx, "nobody"); err != nil || ok {
		t.Fatalf("IsOnline(nobody) = %v, %v", ok, err)
	}
	st, err := c.Status(ctx, "u-1")
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if !st.Online || st.Version != on.Version || !st.Since.Equal(on.At) || st.ExpiresAt.Sub(st.Since).Round(time.Second) != time.Minute {
		t.Fatalf("status %+v, online event %+v", st, on)
	}
	if online, err := c.Online(ctx, []string{"nobody", "u-2", "u-1", "u-2"}); err != nil || !slices.Equal(online, []string{"u-2", "u-1"}) {
		t.Fatalf("Online = %q, %v", online, err)
	}
	if n, err := c.Count(ctx); err != nil || n != 2 {
		t.Fatalf("Count = %d, %v", n, err)
	}
	var listed []string
	for page, err := range c.List(ctx, 0) {
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		listed = append(listed, page...)
	}
	slices.Sort(listed)
	if !slices.Equal(listed, []string{"u-1", "u-2"}) {
		t.Fatalf("listed %q", listed)
	}

	if r, err := c.Disconnect(ctx, "u-1"); err != nil || r.Accepted != 1 {
		t.Fatalf("disconnect = %+v, %v", r, err)
	}
	off := evs.next(t)
	if off.UserID != "u-1" || off.Status != "offline" || off.Reason != "disconnect" || off.Version <= on.Version {
		t.Fatalf("offline event %+v after %+v", off, on)
	}
	if ok, err := c.IsOnline(ctx, "u-1"); err != nil || ok {
		t.Fatalf("IsOnline(u-1) after disconnect = %v, %v", ok, err)
	}
	if st, err := c.Status(ctx, "u-1"); err != nil || !reflect.DeepEqual(st, client.Status{UserID: "u-1"}) {
		t.Fatalf("status after disconnect = %+v, %v", st, err)
	}
}

// publish sends an event by hand, as a replayed or republished one would
// arrive, with the header presenced sets.
func publish(t *testing.T, nc *nats.Conn, subjects contract.Subjects, ev contract.Event) {
	t.Helper()
	data, err := ev.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	m := &nats.Msg{Subject: subjects.Event(ev.Status), Data: data, Header: nats.Header{}}
	m.Header.Set(nats.MsgIdHdr, ev.MsgID())
	if err := nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
}

func TestSubscribeDropsStaleEvents(t *testing.T) {
	t.Parallel()
	p := startPresenced(t, testenv.Prefix(t), time.Minute)
	nc := p.nats.Conn(t)
	c := client.New(nc, client.WithPrefix(p.prefix))
	ctx := context.Background()
	evs := subscribe(t, c)

	if _, err := c.Heartbeat(ctx, "u-1"); err != nil {
		t.Fatal(err)
	}
	on := evs.next(t)
	if _, err := c.Disconnect(ctx, "u-1"); err != nil {
		t.Fatal(err)
	}
	off := evs.next(t)
	if on.Status != "online" || off.Status != "offline" {
		t.Fatalf("events %+v %+v", on, off)
	}

	// Replays of both events and the older online after the offline: all
	// dropped. Then a marker on the same publisher and subject, which
	// arrives after them: the next event handled must be the marker.
	pub := p.nats.Conn(t)
	publish(t, pub, p.subjects, contract.Event{UserID: "u-1", Status: "online", Reason: "heartbeat", At: on.At, Version: on.Version})
	publish(t, pub, p.subjects, contract.Event{UserID: "u-1", Status: "offline", Reason: "disconnect", At: off.At, Version: off.Version})
	publish(t, pub, p.subjects, contract.Event{UserID: "u-1", Status: "online", Reason: "heartbeat", At: on.At, Version: off.Version - 1})
	publish(t, pub, p.subjects, contract.Event{UserID: "marker", Status: "offline", Reason: "disconnect", At: off.At, Version: 1})
	if ev := evs.next(t); ev.UserID != "marker" {
		t.Fatalf("handled %+v, want the stale events dropped and the marker next", ev)
	}

	// A new session has a higher version and passes.
	if _, err := c.Heartbeat(ctx, "u-1"); err != nil {
		t.Fatal(err)
	}
	if ev := evs.next(t); ev.UserID != "u-1" || ev.Status != "online" || ev.Version <= off.Version {
		t.Fatalf("new session event %+v", ev)
	}
}

// TestSubscribeForgetsTombstones needs only NATS: events are published by
// hand. Once the tombstone TTL has passed, the offline version is forgotten,
// which bounds memory, and an older event is applied again.
func TestSubscribeForgetsTombstones(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	subjects := contract.Subjects{Prefix: testenv.Prefix(t)}
	c := client.New(n.Conn(t), client.WithPrefix(subjects.Prefix), client.WithTombstoneTTL(time.Nanosecond))
	evs := subscribe(t, c)
	pub := n.Conn(t)
	at := time.Now()
	publish(t, pub, subjects, contract.Event{UserID: "u-1", Status: "online", Reason: "heartbeat", At: at, Version: 10})
	publish(t, pub, subjects, contract.Event{UserID: "u-1", Status: "online", Reason: "heartbeat", At: at, Version: 10})
	publish(t, pub, subjects, contract.Event{UserID: "u-1", Status: "offline", Reason: "expired", At: at, Version: 20})
	publish(t, pub, subjects, contract.Event{UserID: "u-1", Status: "online", Reason: "heartbeat", At: at, Version: 10})
	var got []string
	for range 3 {
		ev := evs.next(t)
		got = append(got, fmt.Sprintf("%s:%d", ev.Status, ev.Version))
	}
	// The duplicate online is dropped (online versions are kept); the old
	// online after the expired tombstone is not.
	if want := []string{"online:10", "offline:20", "online:10"}; !slices.Equal(got, want) {
		t.Fatalf("handled %q, want %q", got, want)
	}
}

// TestSubscribeReset needs only NATS: events are published by hand. A reset
// is passed on once, and events older than it are dropped.
func TestSubscribeReset(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	subjects := contract.Subjects{Prefix: testenv.Prefix(t)}
	c := client.New(n.Conn(t), client.WithPrefix(subjects.Prefix))
	evs := subscribe(t, c)
	pub := n.Conn(t)
	at := time.Now()
	reset := contract.Event{Status: contract.StatusReset, Reason: "data_loss", At: at, Version: 100}
	publish(t, pub, subjects, contract.Event{UserID: "u-1", Status: "online", Reason: "heartbeat", At: at, Version: 10})
	publish(t, pub, subjects, reset)
	publish(t, pub, subjects, contract.Event{UserID: "u-2", Status: "online", Reason: "heartbeat", At: at, Version: 50}) // lost with the data
	publish(t, pub, subjects, reset)                                                                                     // a republish
	publish(t, pub, subjects, contract.Event{UserID: "u-1", Status: "online", Reason: "heartbeat", At: at, Version: 150})
	var got []string
	for range 3 {
		ev := evs.next(t)
		got = append(got, fmt.Sprintf("%s:%s:%d", ev.UserID, ev.Status, ev.Version))
	}
	if want := []string{"u-1:online:10", ":reset:100", "u-1:online:150"}; !slices.Equal(got, want) {
		t.Fatalf("handled %q, want %q", got, want)
	}
}

// TestSubscribeLateReset needs only NATS: events are published by hand. A
// reset whose outbox entry was republished late, after newer events, must
// not wipe the users those events brought online, and must not let an old
// republished event of the lost data set bring a user back. The handler
// keeps the online set as Subscribe's documentation says: on a reset it
// clears only the users whose last version is below the reset's.
func TestSubscribeLateReset(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	subjects := contract.Subjects{Prefix: testenv.Prefix(t)}
	c := client.New(n.Conn(t), client.WithPrefix(subjects.Prefix))
	var (
		handled []string
		online  = map[string]int64{} // the handler's view: user -> version of the online event
		done    = make(chan struct{})
	)
	stop, err := c.Subscribe(context.Background(), func(ev client.Event) {
		handled = append(handled, fmt.Sprintf("%s:%s:%d", ev.UserID, ev.Status, ev.Version))
		switch ev.Status {
		case client.StatusOnline:
			online[ev.UserID] = ev.Version
		case client.StatusOffline:
			delete(online, ev.UserID)
		case client.StatusReset:
			maps.DeleteFunc(online, func(_ string, v int64) bool { return v < ev.Version })
		}
		if ev.UserID == "marker" {
			close(done)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })

	pub := n.Conn(t)
	at := time.Now()
	ev := func(id, status string, v int64) contract.Event {
		reason := map[string]string{"online": "heartbeat", "offline": "disconnect", "reset": "data_loss"}[status]
		return contract.Event{UserID: id, Status: contract.Status(status), Reason: contract.Reason(reason), At: at, Version: v}
	}
	for _, e := range []contract.Event{
		ev("u-0", "online", 2),   // a session of the data set that is lost
		ev("u-1", "online", 10),  // a session after the loss
		ev("u-4", "online", 11),  // another, already ended
		ev("u-4", "offline", 12), //
		ev("", "reset", 5),       // the reset, republished after the events above
		ev("u-2", "online", 3),   // a lost session's online, republished late: below the reset
		ev("u-4", "online", 11),  // u-4's online again, late: below its offline
		ev("u-1", "online", 10),  // a duplicate
		ev("", "reset", 5),       // the reset again
		ev("u-0", "offline", 4),  // the lost session's offline, late
		ev("marker", "online", 20),
	} {
		publish(t, pub, subjects, e)
	}
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("marker not handled within %v; handled %q", wait, handled)
	}
	if err := stop(); err != nil { // the handler's last call has returned
		t.Fatal(err)
	}
	want := []string{"u-0:online:2", "u-1:online:10", "u-4:online:11", "u-4:offline:12", ":reset:5", "marker:online:20"}
	if !slices.Equal(handled, want) {
		t.Errorf("handled %q, want %q", handled, want)
	}
	if want := map[string]int64{"u-1": 10, "marker": 20}; !maps.Equal(online, want) {
		t.Errorf("online after the late reset = %v, want %v", online, want)
	}
}

// userWhere returns the first of u-0, u-1, ... that ok accepts: a user of a
// given partition.
func userWhere(t *testing.T, ok func(id string) bool) string {
	t.Helper()
	for i := range 100000 {
		if id := fmt.Sprintf("u-%d", i); ok(id) {
			return id
		}
	}
	t.Fatal("no such user id")
	return ""
}

// scopedHandler keeps the online set as Subscribe's documentation says: on
// a reset it clears only the users the reset covers whose last version is
// below the reset's. It records what it handled, and closes done at the
// user "marker".
type scopedHandler struct {
	handled []string
	online  map[string]int64
	done    chan struct{}
}

func (h *scopedHandler) handle(ev client.Event) {
	if ev.Status == client.StatusReset {
		h.handled = append(h.handled, fmt.Sprintf("reset %d/%d:%d", ev.Partition, ev.Partitions, ev.Version))
	} else {
		h.handled = append(h.handled, fmt.Sprintf("%s:%s:%d", ev.UserID, ev.Status, ev.Version))
	}
	switch ev.Status {
	case client.StatusOnline:
		h.online[ev.UserID] = ev.Version
	case client.StatusOffline:
		delete(h.online, ev.UserID)
	case client.StatusReset:
		maps.DeleteFunc(h.online, func(id string, v int64) bool { return v < ev.Version && ev.Covers(id) })
	}
	if ev.UserID == "marker" {
		close(h.done)
	}
}

// runScoped publishes evs and a marker to a new subscriber, and returns
// what its scopedHandler handled and kept once the marker is handled.
func runScoped(t *testing.T, evs []contract.Event) (handled []string, online map[string]int64) {
	t.Helper()
	n := testenv.StartNATS(t)
	subjects := contract.Subjects{Prefix: testenv.Prefix(t)}
	c := client.New(n.Conn(t), client.WithPrefix(subjects.Prefix))
	h := &scopedHandler{online: map[string]int64{}, done: make(chan struct{})}
	stop, err := c.Subscribe(context.Background(), h.handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	pub := n.Conn(t)
	for _, e := range append(evs, contract.Event{UserID: "marker", Status: "online", Reason: "heartbeat", At: time.Now(), Version: 1000}) {
		publish(t, pub, subjects, e)
	}
	select {
	case <-h.done:
	case <-time.After(wait):
		t.Fatalf("marker not handled within %v; handled %q", wait, h.handled)
	}
	if err := stop(); err != nil { // the handler's last call has returned
		t.Fatal(err)
	}
	return h.handled, h.online
}

func online(id string, v int64) contract.Event {
	return contract.Event{UserID: id, Status: contract.StatusOnline, Reason: contract.ReasonHeartbeat, At: time.Now(), Version: v}
}

func reset(partition, partitions int, v int64) contract.Event {
	return contract.Event{Status: contract.StatusReset, Reason: contract.ReasonDataLoss, At: time.Now(), Version: v, Partition: partition, Partitions: partitions}
}

// TestSubscribePartitionReset needs only NATS: events are published by
// hand. A reset of one partition (presenced on Redis Cluster) concerns the
// users of that partition only: it clears none of another partition's, and
// its floor drops late events of its own users while an event of another
// partition's user at the same version is applied. Each partition's reset
// is passed on once, even at a version another partition's reset had.
func TestSubscribePartitionReset(t *testing.T) {
	t.Parallel()
	in := func(p int) func(string) bool { return func(id string) bool { return contract.PartitionOf(id, 4) == p } }
	var a, b [5]string // users of partitions 1 and 2 among 4
	for i := range a {
		a[i] = userWhere(t, func(id string) bool { return in(1)(id) && !slices.Contains(a[:i], id) })
		b[i] = userWhere(t, func(id string) bool { return in(2)(id) && !slices.Contains(b[:i], id) })
	}
	handled, got := runScoped(t, []contract.Event{
		online(a[0], 10), // lost with partition 1's writes
		online(b[0], 10), // in partition 2, which lost nothing yet
		online(a[1], 30), // after the loss
		online(b[1], 30), //
		reset(1, 4, 20),  // partition 1 lost its writes: clears a0 only
		online(a[2], 20), // late, not above partition 1's floor: dropped
		online(b[2], 20), // the same version in partition 2: applied
		online(a[0], 15), // a0's lost session again, late: dropped
		reset(1, 4, 20),  // a republish: dropped
		reset(2, 4, 20),  // partition 2 at the same version: clears b0
		online(b[3], 20), // now below partition 2's floor too: dropped
		reset(0, 0, 25),  // the whole data set: clears b2 (a1, b1 are above)
		online(a[3], 25), // not above the whole set's floor: dropped
		online(a[4], 26), // applied
		reset(1, 4, 25),  // not above the whole set's reset: dropped
		reset(1, 4, 40),  // partition 1 again: clears a1 and a4
		online(b[4], 31), // partition 2's floor is 25: applied
	})
	want := []string{
		a[0] + ":online:10", b[0] + ":online:10", a[1] + ":online:30", b[1] + ":online:30",
		"reset 1/4:20", b[2] + ":online:20",
		"reset 2/4:20",
		"reset 0/0:25", a[4] + ":online:26",
		"reset 1/4:40", b[4] + ":online:31",
		"marker:online:1000",
	}
	if !slices.Equal(handled, want) {
		t.Errorf("handled %q\nwant    %q", handled, want)
	}
	if want := map[string]int64{b[1]: 30, b[4]: 31, "marker": 1000}; !maps.Equal(got, want) {
		t.Errorf("online after the resets = %v, want %v", got, want)
	}
}

// TestSubscribePartitionResetsOfTwoCounts: resets of partitions among 2 and
// among 3 (the partition count changed) each keep their own floor; a user's
// floor is the highest of those covering them.
func TestSubscribePartitionResetsOfTwoCounts(t *testing.T) {
	t.Parallel()
	of := func(in2, in3 bool, not ...string) string {
		return userWhere(t, func(id string) bool {
			return (contract.PartitionOf(id, 2) == 0) == in2 && (contract.PartitionOf(id, 3) == 1) == in3 && !slices.Contains(not, id)
		})
	}
	both, only2, only3, neither := of(true, true), of(true, false), of(false, true), of(false, false)
	other := of(false, false, neither)
	handled, got := runScoped(t, []contract.Event{
		online(only2, 5),   // cleared by partition 0 of 2
		online(only3, 5),   // cleared by partition 1 of 3
		online(neither, 5), // kept
		reset(0, 2, 10),
		reset(1, 3, 20),
		reset(0, 2, 10),    // a republish: dropped
		online(both, 15),   // floor 20: dropped
		online(only2, 10),  // floor 10: dropped
		online(only2, 15),  // applied
		online(only3, 15),  // floor 20: dropped
		online(neither, 4), // below its own version: dropped
		online(other, 1),   // no reset covers it: applied
	})
	want := []string{
		only2 + ":online:5", only3 + ":online:5", neither + ":online:5",
		"reset 0/2:10", "reset 1/3:20",
		only2 + ":online:15", other + ":online:1",
		"marker:online:1000",
	}
	if !slices.Equal(handled, want) {
		t.Errorf("handled %q\nwant    %q", handled, want)
	}
	if want := map[string]int64{neither: 5, only2: 15, other: 1, "marker": 1000}; !maps.Equal(got, want) {
		t.Errorf("online after the resets = %v, want %v", got, want)
	}
}

func TestSubscribeStop(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	c := client.New(n.Conn(t), client.WithPrefix(testenv.Prefix(t)))
	before := n.Server().NumSubscriptions()

	stop, err := c.Subscribe(context.Background(), func(client.Event) {})
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Server().NumSubscriptions(); got != before+3 {
		t.Fatalf("%d subscriptions after Subscribe returned, want %d (online, offline, reset)", got, before+3)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	testenv.Eventually(t, wait, func() bool { return n.Server().NumSubscriptions() == before }, "subscriptions removed after stop")

	// Cancelling the context ends it too; stop then only waits.
	ctx, cancel := context.WithCancel(context.Background())
	stop, err = c.Subscribe(ctx, func(client.Event) {})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	testenv.Eventually(t, wait, func() bool { return n.Server().NumSubscriptions() == before }, "subscriptions removed after cancel")
	if err := stop(); err != nil {
		t.Fatalf("stop after cancel: %v", err)
	}
}

func TestHeartbeatSplitsRequests(t *testing.T) {
	t.Parallel()
	p := startPresenced(t, testenv.Prefix(t), time.Minute)
	nc := p.nats.Conn(t)
	c := client.New(nc, client.WithPrefix(p.prefix))
	ctx := context.Background()

	// 12,000 short ids: two requests by count (the worker refuses more than
	// 10,000 in one). 5,000 ids of 250 bytes (1.26 MB): split to fit the
	// 1 MiB max payload. Two invalid ids are rejected without costing the rest.
	var ids []string
	for i := range 12_000 {
		ids = append(ids, fmt.Sprintf("short-%d", i))
	}
	for i := range 5_000 {
		ids = append(ids, fmt.Sprintf("%0250d", i))
	}
	ids = append(ids, "bad id", strings.Repeat("x", 300))
	sent := testenv.Collect(t, p.nats.Conn(t), p.subjects.Heartbeat())
	r, err := c.Heartbeat(ctx, ids...)
	if err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	if r.Accepted != 17_000 || len(r.Rejected) != 2 {
		t.Fatalf("accepted %d, rejected %+v", r.Accepted, r.Rejected)
	}
	if n, err := c.Count(ctx); err != nil || n != 17_000 {
		t.Fatalf("Count = %d, %v", n, err)
	}
	// On the wire: 10,000 short ids; the other 2,000 and as many long ones
	// as fit 1 MiB; the rest.
	msgs := sent.WaitFor(t, 3, wait)
	total := 0
	for i, m := range msgs {
		var req struct{ UserIDs []string }
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Fatal(err)
		}
		if len(req.UserIDs) > 10_000 || int64(len(m.Data)) > nc.MaxPayload() {
			t.Fatalf("request %d: %d ids in %d bytes", i, len(req.UserIDs), len(m.Data))
		}
		total += len(req.UserIDs)
	}
	if len(msgs) != 3 || total != len(ids) {
		t.Fatalf("%d requests with %d ids, want 3 with %d", len(msgs), total, len(ids))
	}
	online, err := c.Online(ctx, ids[:17_000])
	if err != nil {
		t.Fatalf("online: %v", err)
	}
	if len(online) != 17_000 || online[0] != "short-0" || online[16_999] != fmt.Sprintf("%0250d", 4999) {
		t.Fatalf("online: %d ids, first %q", len(online), online[0])
	}
	r, err = c.Disconnect(ctx, ids[:17_000]...)
	if err != nil || r.Accepted != 17_000 {
		t.Fatalf("disconnect: %+v, %v", r.Accepted, err)
	}
	if n, err := c.Count(ctx); err != nil || n != 0 {
		t.Fatalf("Count after disconnect = %d, %v", n, err)
	}
}

func TestListPages(t *testing.T) {
	t.Parallel()
	p := startPresenced(t, testenv.Prefix(t), time.Minute)
	c := client.New(p.nats.Conn(t), client.WithPrefix(p.prefix))
	ctx := context.Background()
	var ids []string
	for i := range 5000 {
		ids = append(ids, fmt.Sprintf("u-%d", i))
	}
	if _, err := c.Heartbeat(ctx, ids...); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	pages := 0
	for page, err := range c.List(ctx, 100) {
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		pages++
		for _, id := range page {
			seen[id] = true
		}
	}
	if len(seen) != len(ids) || pages < 10 {
		t.Fatalf("%d distinct ids in %d pages, want %d in pages of about 100", len(seen), pages, len(ids))
	}
	// Breaking out of the loop stops the listing.
	pages = 0
	for range c.List(ctx, 100) {
		pages++
		break
	}
	if pages != 1 {
		t.Fatalf("%d pages after break", pages)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	p := startPresenced(t, testenv.Prefix(t), time.Minute)
	nc := p.nats.Conn(t)
	c := client.New(nc, client.WithPrefix(p.prefix))
	ctx := context.Background()

	var se *client.ServiceError
	_, err := c.Status(ctx, "bad id")
	if !errors.As(err, &se) || se.Code != client.CodeBadRequest || se.Description != "invalid userId: space at byte 3" {
		t.Fatalf("status of an invalid id: %v", err)
	}
	_, err = c.Online(ctx, []string{"ok", "a*"})
	if !errors.As(err, &se) || se.Code != client.CodeBadRequest || !strings.Contains(se.Description, "userIds[1]: invalid userId: glob character") {
		t.Fatalf("online with an invalid id: %v", err)
	}
	var pageErr error
	for _, err := range c.List(ctx, -1) {
		pageErr = err
	}
	if !errors.As(pageErr, &se) || se.Code != client.CodeBadRequest {
		t.Fatalf("list with a negative limit: %v", pageErr)
	}

	// Nobody serves another prefix.
	other := client.New(nc, client.WithPrefix("nobody"), client.WithTimeout(time.Second))
	if _, err := other.Count(ctx); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("count without a service: %v", err)
	}
	r, err := other.Heartbeat(ctx, "u-1")
	if !errors.Is(err, nats.ErrNoResponders) || r.Accepted != 0 {
		t.Fatalf("heartbeat without a worker: %+v, %v", r, err)
	}

	// Redis down: the store fails; heartbeats fail as a whole (ErrFailed),
	// queries with CodeStoreFailure.
	p.redis.Stop(t)
	r, err = c.Heartbeat(ctx, "u-1")
	if !errors.Is(err, client.ErrFailed) || r.Accepted != 0 {
		t.Fatalf("heartbeat with redis down: %+v, %v", r, err)
	}
	if _, err := c.Count(ctx); !errors.As(err, &se) || se.Code != client.CodeStoreFailure {
		t.Fatalf("count with redis down: %v", err)
	}
}

// BenchmarkClientOnline10k is Client.Online with 10000 ids of ten bytes,
// every other one online, against a real presenced (query service, embedded
// NATS, redis-server): the client's encoding and decoding around the round
// trip that bus.BenchmarkQueryOnline10k measures.
func BenchmarkClientOnline10k(b *testing.B) {
	p := startPresenced(b, testenv.Prefix(b), time.Hour)
	c := client.New(p.nats.Conn(b), client.WithPrefix(p.prefix))
	ctx := context.Background()
	online := make([]string, 20_000)
	for i := range online {
		online[i] = fmt.Sprintf("us%08d", i)
	}
	if _, err := c.Heartbeat(ctx, online...); err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 10_000)
	for j := range ids {
		ids[j] = fmt.Sprintf("zz-%07d", j)
		if j%2 == 0 {
			ids[j] = online[j]
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		got, err := c.Online(ctx, ids)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) != 5_000 {
			b.Fatalf("%d online, want 5000", len(got))
		}
	}
}

// TestHeartbeatRetriedUntilStored: with Redis down, presenced answers a
// heartbeat with an error marked retry and then leaves the queue group (no
// responders); the client keeps sending the batch with backoff, and it is
// stored once Redis is back.
func TestHeartbeatRetriedUntilStored(t *testing.T) {
	t.Parallel()
	p := startPresenced(t, testenv.Prefix(t), time.Minute)
	c := client.New(p.nats.Conn(t), client.WithPrefix(p.prefix), client.WithTimeout(2*time.Second), client.WithRetries(40))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.redis.Stop(t)
	type result struct {
		r   client.Reply
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := c.Heartbeat(ctx, "retried-1", "retried-2")
		done <- result{r, err}
	}()
	select {
	case res := <-done:
		t.Fatalf("heartbeat returned while Redis was down: %+v, %v", res.r, res.err)
	case <-time.After(time.Second):
	}
	p.redis.Start(t)
	res := <-done
	if res.err != nil || res.r.Accepted != 2 {
		t.Fatalf("heartbeat after Redis came back: %+v, %v", res.r, res.err)
	}
	if n := p.rdb.Exists(ctx, p.prefix+":user:retried-1", p.prefix+":user:retried-2").Val(); n != 2 {
		t.Fatalf("%d of 2 presence keys exist", n)
	}

	// Without retries the first failure is final (an error reply, or no
	// responders once the replica has left the queue group).
	noRetry := client.New(p.nats.Conn(t), client.WithPrefix(p.prefix), client.WithRetries(-1))
	p.redis.Stop(t)
	if _, err := noRetry.Heartbeat(ctx, "once"); !errors.Is(err, client.ErrFailed) && !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("heartbeat without retries, Redis down: %v", err)
	}
}
