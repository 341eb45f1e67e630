package presence

// idKey is a user id as two independent seeded 64-bit hashes (see View).
// The zero key marks a free slot; View.key never returns it.
type idKey struct{ a, b uint64 }

// idSet is an open-addressing hash set of idKeys: linear probing from the
// slot given by the key's first half (already a hash), deletion by
// backward shift (no tombstones), kept at most 3/4 full and shrunk when
// under 1/8. A lookup is one or two 16-byte compares in one cache line,
// where a Go map re-hashes the key; the slots hold no pointers, so the
// garbage collector never scans them.
type idSet struct {
	slots []idKey
	n     int
}

const idSetMin = 1024

func newIDSet(hint int) idSet {
	size := idSetMin
	for size*3/4 < hint {
		size *= 2
	}
	return idSet{slots: make([]idKey, size)}
}

func (s *idSet) len() int { return s.n }

func (s *idSet) has(k idKey) bool {
	mask := uint64(len(s.slots) - 1)
	for i := k.a & mask; ; i = (i + 1) & mask {
		switch s.slots[i] {
		case k:
			return true
		case idKey{}:
			return false
		}
	}
}

func (s *idSet) add(k idKey) {
	if (s.n+1)*4 > len(s.slots)*3 {
		s.resize(len(s.slots) * 2)
	}
	mask := uint64(len(s.slots) - 1)
	for i := k.a & mask; ; i = (i + 1) & mask {
		switch s.slots[i] {
		case k:
			return
		case idKey{}:
			s.slots[i] = k
			s.n++
			return
		}
	}
}

func (s *idSet) remove(k idKey) {
	mask := uint64(len(s.slots) - 1)
	i := k.a & mask
	for ; s.slots[i] != k; i = (i + 1) & mask {
		if s.slots[i] == (idKey{}) {
			return
		}
	}
	// Shift back every following key of the run whose home slot is not
	// cyclically in (i, j], so that no lookup meets the hole before its key.
	for j := (i + 1) & mask; s.slots[j] != (idKey{}); j = (j + 1) & mask {
		home := s.slots[j].a & mask
		var stays bool
		if i <= j {
			stays = i < home && home <= j
		} else {
			stays = home > i || home <= j
		}
		if !stays {
			s.slots[i] = s.slots[j]
			i = j
		}
	}
	s.slots[i] = idKey{}
	s.n--
	if len(s.slots) > idSetMin && s.n*8 < len(s.slots) {
		s.resize(len(s.slots) / 2)
	}
}

func (s *idSet) resize(size int) {
	old := s.slots
	*s = idSet{slots: make([]idKey, size)}
	for _, k := range old {
		if k != (idKey{}) {
			s.add(k)
		}
	}
}
