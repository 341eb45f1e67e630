package contract

// Removing repeated user ids from a list, keeping the first of each in
// order: the request decoders, the query service, the Redis store, the
// worker and the Go client all dedupe lists of up to tens of thousands of
// ids per request, and a list's meaning ("duplicates collapse") is part of
// the contract.

import (
	"hash/maphash"
	"math/bits"
	"slices"
	"sync"
)

var uniqSeed = maphash.MakeSeed()

// AppendUnique appends to dst the strings of ids without repeats, in first-seen
// order, and returns the extended slice. AppendUnique(ids[:0], ids) dedupes in
// place: it never writes past the element it reads.
func AppendUnique(dst, ids []string) []string {
	if len(ids) <= uniqSmall {
		return appendUniqueSmall(dst, ids)
	}
	t := newUniqTable(len(dst), len(ids))
	defer t.free()
	for _, id := range ids {
		dst = t.add(dst, id, maphash.String(uniqSeed, id))
	}
	return dst
}

// AppendUniqueHashed is AppendUnique for callers that already hold a well-mixed 64-bit
// hash of each id: hashes[i] is the hash of ids[i]. Equal ids must have
// equal hashes; ids are still compared, so unequal ids with equal hashes
// stay apart.
func AppendUniqueHashed(dst, ids []string, hashes []uint64) []string {
	if len(ids) <= uniqSmall {
		return appendUniqueSmall(dst, ids)
	}
	t := newUniqTable(len(dst), len(ids))
	defer t.free()
	for i, id := range ids {
		dst = t.add(dst, id, hashes[i])
	}
	return dst
}

// uniqSmall is the most ids deduped by comparing each with those kept.
const uniqSmall = 16

func appendUniqueSmall(dst, ids []string) []string {
	base := len(dst)
	for _, id := range ids {
		if !slices.Contains(dst[base:], id) {
			dst = append(dst, id)
		}
	}
	return dst
}

// uniqTable is an open-addressing set of positions in dst, at most half full:
// one allocation without pointers, where a map of strings costs a larger
// one the garbage collector scans. A slot holds the hash's high half and
// 1 + the position after base (0 is free), so strings are compared only
// when their hashes agree.
type uniqTable struct {
	slots []uint64
	mask  uint64
	base  int
}

// uniqTables holds *[]uint64 slot arrays for reuse: a 10k-id query would
// otherwise allocate 256 KB of them per call, and the garbage collector's
// work is part of the queries' latency tail.
var uniqTables sync.Pool

func newUniqTable(base, n int) uniqTable {
	size := 1 << bits.Len(uint(2*n-1))
	var slots []uint64
	if p, ok := uniqTables.Get().(*[]uint64); ok && cap(*p) >= size {
		slots = (*p)[:size]
		clear(slots)
	} else {
		slots = make([]uint64, size)
	}
	return uniqTable{slots: slots, mask: uint64(size - 1), base: base}
}

// free returns the slots for reuse; t is not used afterwards.
func (t uniqTable) free() {
	uniqTables.Put(&t.slots)
}

// add appends id to dst unless dst[t.base:] holds it.
func (t uniqTable) add(dst []string, id string, hash uint64) []string {
	tag := hash &^ (1<<32 - 1)
	for h := hash & t.mask; ; h = (h + 1) & t.mask {
		slot := t.slots[h]
		if slot == 0 {
			dst = append(dst, id)
			t.slots[h] = tag | uint64(len(dst)-t.base)
			return dst
		}
		if slot&^(1<<32-1) == tag && dst[t.base+int(uint32(slot))-1] == id {
			return dst
		}
	}
}
