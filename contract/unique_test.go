package contract

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAppendUniqueMatchesMap compares AppendUnique with a map over sizes on both sides
// of the small-slice path and over how many repeats there are, in place and
// onto a non-empty dst.
func TestAppendUniqueMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 16, 17, 100, 10_000} {
		for _, distinct := range []int{1, 3, n/2 + 1, n + 1} {
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("u%d", rng.IntN(distinct))
			}
			var want []string
			seen := map[string]bool{}
			for _, id := range ids {
				if !seen[id] {
					seen[id] = true
					want = append(want, id)
				}
			}
			if got := AppendUnique(nil, ids); !slices.Equal(got, want) {
				t.Fatalf("AppendUnique(nil, %d ids, %d distinct) = %d ids, want %d in first-seen order", n, distinct, len(got), len(want))
			}
			// dst's own strings are not compared with the ids.
			prefix := []string{"u0", "u1"}
			if got := AppendUnique(slices.Clone(prefix), ids); !slices.Equal(got, append(slices.Clone(prefix), want...)) {
				t.Fatalf("AppendUnique(%v, %d ids, %d distinct) = %v..., want the prefix then %d ids", prefix, n, distinct, got[:min(len(got), 4)], len(want))
			}
			// Hashes that collide a lot still keep unequal ids apart.
			hashes := make([]uint64, len(ids))
			for i, id := range ids {
				hashes[i] = uint64(len(id)) << 40
			}
			if got := AppendUniqueHashed(nil, ids, hashes); !slices.Equal(got, want) {
				t.Fatalf("AppendUniqueHashed(nil, %d ids, %d distinct, colliding hashes) = %d ids, want %d in first-seen order", n, distinct, len(got), len(want))
			}
			in := slices.Clone(ids)
			if got := AppendUnique(in[:0], in); !slices.Equal(got, want) {
				t.Fatalf("AppendUnique in place of %d ids (%d distinct) = %d ids, want %d in first-seen order", n, distinct, len(got), len(want))
			}
		}
	}
}

func BenchmarkAppendUnique10k(b *testing.B) {
	ids := make([]string, 10_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("us%08d", i)
	}
	dst := make([]string, 0, len(ids))
	b.ReportAllocs()
	for b.Loop() {
		if len(AppendUnique(dst[:0], ids)) != len(ids) {
			b.Fatal("lost ids")
		}
	}
}
