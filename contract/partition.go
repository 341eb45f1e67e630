package contract

// PartitionOf returns the partition, 0 to n-1, that holds userID when the
// presence data is split into n partitions (presenced on Redis Cluster,
// REDIS_CLUSTER_PARTITIONS): FNV-1a, 32 bits, of the id's bytes, modulo n.
// Every presenced replica and every consumer computes the same partition,
// so a reset that covers one partition (Event.Partitions > 0) names the
// users it concerns without listing them. n <= 1 means one partition: 0.
func PartitionOf(userID string, n int) int {
	if n <= 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(userID); i++ {
		h ^= uint32(userID[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// Covers reports whether the reset e concerns userID: every user for a
// reset of the whole data set (Partitions 0), else the users of partition
// Partition among Partitions (PartitionOf).
func (e Event) Covers(userID string) bool {
	return e.Partitions <= 0 || PartitionOf(userID, e.Partitions) == e.Partition
}
