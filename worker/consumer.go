package worker

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
)

// ConsumerName is a name unique to this process for the outbox group:
// hostname, pid and a random suffix (pids repeat across containers).
func ConsumerName() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}
