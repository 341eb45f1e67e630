package worker

import (
	"testing"
	"time"
)

// TestBudget: take blocks while the ids are out and wakes when they are
// given back; a take larger than the budget takes all of it; a stop ends a
// waiting take with nothing taken.
func TestBudget(t *testing.T) {
	b := newBudget(100)
	stop := make(chan struct{})
	if got := b.take(60, stop); got != 60 {
		t.Fatalf("take 60 of 100 = %d", got)
	}
	took := make(chan int)
	go func() { took <- b.take(50, stop) }()
	select {
	case n := <-took:
		t.Fatalf("took %d with only 40 free", n)
	case <-time.After(50 * time.Millisecond):
	}
	b.give(10)
	select {
	case n := <-took:
		if n != 50 {
			t.Fatalf("take 50 = %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("take did not wake when 50 were free")
	}
	// 0 free: a message larger than the whole budget waits for all of it.
	go func() { took <- b.take(1000, stop) }()
	b.give(50)
	select {
	case n := <-took:
		t.Fatalf("took %d with 50 free", n)
	case <-time.After(50 * time.Millisecond):
	}
	b.give(50)
	select {
	case n := <-took:
		if n != 100 {
			t.Fatalf("take 1000 of a budget of 100 = %d, want 100", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("take of more than the budget did not wake when it was all free")
	}
	go func() { took <- b.take(1, stop) }()
	close(stop)
	select {
	case n := <-took:
		if n != 0 {
			t.Fatalf("take after stop = %d, want 0", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not end a waiting take")
	}
	b.give(100)
	if b.free != 100 {
		t.Fatalf("%d free after everything was given back, want 100", b.free)
	}
}
