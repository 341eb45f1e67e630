package presence

import (
	"strconv"
	"strings"
)

// ClusterSlots is the number of hash slots of a Redis Cluster.
const ClusterSlots = 16384

// KeySlot returns the Redis Cluster hash slot of key: CRC16 (XMODEM) of
// the key, or of its hash tag (the text between the first "{" and the
// next "}", when not empty), modulo 16384.
func KeySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % ClusterSlots
}

// PartitionTags returns the hash tags of n partitions: tag p is the first
// of "0", "1", "2", ... (base 36) whose slot lies in the p-th of n equal
// shares of the slots. Masters own contiguous slot ranges (redis-cli
// --cluster create splits them equally), so n partitions spread over m
// masters within one partition of n/m each. The tags are part of the data
// layout: they never change for a given n.
func PartitionTags(n int) []string {
	tags := make([]string, n)
	for p := range n {
		lo, hi := p*ClusterSlots/n, (p+1)*ClusterSlots/n
		for k := 0; ; k++ {
			t := strconv.FormatInt(int64(k), 36)
			if s := KeySlot("{" + t + "}"); s >= lo && s < hi {
				tags[p] = t
				break
			}
		}
	}
	return tags
}
