package worker

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/internal/testenv"
)

// TestMsgCostCoversHeap: the intake's bound is honest. Messages received
// from a real nats-server (with and without a reply subject) are held as
// the intake holds them, and the heap they take is at most what msgCost
// charges for them.
func TestMsgCostCoversHeap(t *testing.T) {
	n := testenv.StartNATS(t)
	nc := n.Conn(t)
	rx := n.Conn(t)
	for _, reply := range []string{"", "_INBOX.abcdefghijklmnopqrstuv.12345678"} {
		t.Run(fmt.Sprintf("reply=%t", reply != ""), func(t *testing.T) {
			const count = 50_000
			in := newIntake(1 << 40)
			sub, err := rx.ChanSubscribe("cost.test", in.ch)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			if err := rx.Flush(); err != nil {
				t.Fatal(err)
			}
			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			go func() {
				for i := range count {
					_ = nc.PublishMsg(&nats.Msg{Subject: "cost.test", Reply: reply, Data: fmt.Appendf(nil, `{"userId":"storm-%06d"}`, i)})
				}
				_ = nc.Flush()
			}()
			got := 0
			batch := make([]*nats.Msg, 0, 1)
			deadline := time.After(30 * time.Second)
			for got < count {
				select {
				case m := <-in.ch:
					batch = append(batch[:0], m)
					if d := in.pushAll(batch, nil); len(d) > 0 {
						t.Fatal("dropped below the limit")
					}
					got++
				case <-deadline:
					t.Fatalf("received %d of %d", got, count)
				}
			}
			runtime.GC()
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			held, _ := in.held()
			heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			t.Logf("heap %d bytes for %d messages (%.0f each); charged %d (%.0f each)", heap, count, float64(heap)/count, held, float64(held)/count)
			if heap > held {
				t.Fatalf("messages take %d bytes of heap, more than the %d the intake charges", heap, held)
			}
			runtime.KeepAlive(in)
		})
	}
}

// BenchmarkIntake is the pump's and the dispatcher's share of a message:
// a batch of 64 pushed under one lock, then popped one by one.
func BenchmarkIntake(b *testing.B) {
	in := newIntake(1 << 40)
	msgs := make([]*nats.Msg, 64)
	for i := range msgs {
		msgs[i] = &nats.Msg{Subject: "presence.heartbeat", Data: []byte(`{"userId":"u-123456"}`)}
	}
	b.ReportAllocs()
	for b.Loop() {
		in.pushAll(msgs, nil)
		for range msgs {
			if _, _, ok := in.pop(); !ok {
				b.Fatal("empty")
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(msgs)), "ns/msg")
}
