package presence

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// idSet agrees with a Go map through random adds and removes, across grows
// and shrinks, with keys crowded onto few home slots (long probe runs that
// wrap around the end) as well as spread ones.
func TestIDSetMatchesMap(t *testing.T) {
	for _, crowd := range []uint64{0, 64} {
		rng := rand.New(rand.NewPCG(crowd, 9))
		s := newIDSet(0)
		m := map[idKey]bool{}
		keys := make([]idKey, 5000)
		for i := range keys {
			a := rng.Uint64()
			if crowd > 0 && i%10 == 0 {
				a = uint64(idSetMin) - 1 - rng.Uint64N(crowd) // near the end: runs wrap
			}
			keys[i] = idKey{a, rng.Uint64() | 1}
		}
		for step := 0; step < 200_000; step++ {
			k := keys[rng.IntN(len(keys))]
			// Phases: grow to all keys, shrink to few, grow again.
			addBias := 70
			if step/50_000%2 == 1 {
				addBias = 20
			}
			if rng.IntN(100) < addBias {
				s.add(k)
				m[k] = true
			} else {
				s.remove(k)
				delete(m, k)
			}
			if s.len() != len(m) {
				t.Fatalf("crowd %d step %d: len %d, map %d", crowd, step, s.len(), len(m))
			}
			if step%1000 == 0 {
				for _, k := range keys {
					if s.has(k) != m[k] {
						t.Fatalf("crowd %d step %d: has(%v) = %v, map %v", crowd, step, k, s.has(k), m[k])
					}
				}
			}
		}
	}
}

// BenchmarkViewLookup10k looks up 10000 ids, half of them present, in a
// set of 1M users (a 32 MiB table, far larger than the caches): the view's
// part of a 10k-id online query.
func BenchmarkViewLookup10k(b *testing.B) {
	v := NewView(nil, nil)
	v.online = newIDSet(1_000_000)
	for i := range 1_000_000 {
		v.online.add(v.key(fmt.Sprintf("us%08d", i)))
	}
	ids := make([]string, 10_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("us%08d", i*97)
		if i%2 == 1 {
			ids[i] = fmt.Sprintf("zz-%07d", i)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if got := v.lookup(ids); len(got) != 5_000 {
			b.Fatalf("%d online, want 5000", len(got))
		}
	}
}
