package worker

import "sync"

// budget is a counting semaphore of ids: the dispatcher takes a message's
// ids before queueing it, the executors give them back once stored.
type budget struct {
	mu   sync.Mutex
	size int
	free int
	wake chan struct{} // closed (and replaced) when ids are given back
}

func newBudget(size int) *budget {
	return &budget{size: size, free: size, wake: make(chan struct{})}
}

// take takes n ids (at most the whole budget, so a message larger than it
// waits for an empty queue) and returns how many it took, or 0 if stop was
// closed first.
func (b *budget) take(n int, stop <-chan struct{}) int {
	n = min(n, b.size)
	for {
		b.mu.Lock()
		if b.free >= n {
			b.free -= n
			b.mu.Unlock()
			return n
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-stop:
			return 0
		}
	}
}

func (b *budget) give(n int) {
	b.mu.Lock()
	b.free += n
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}
