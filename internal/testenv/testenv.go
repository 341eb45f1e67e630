// Package testenv starts real servers for integration tests: a redis-server
// child process (or several: Sentinel, StartSentinels; Redis Cluster,
// StartRedisCluster) and an embedded nats-server, all on 127.0.0.1 over
// real TCP, all stopped when the test ends. There are no mocks here.
//
// Tests share nothing but the machine: each StartRedis or StartNATS gives the
// calling test its own server, and Prefix gives each test its own key and
// subject namespace for when servers are shared between subtests.
//
// Every function that takes a testing.TB reports failure with t.Fatalf, so it
// must be called from the goroutine running the test.
package testenv

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// PollInterval is how often Eventually checks its condition.
const PollInterval = 10 * time.Millisecond

var (
	prefixCounter atomic.Uint64
	// processNonce keeps prefixes apart between test binaries that share a
	// server: two packages may hold tests of the same name.
	processNonce = strconv.FormatUint(rand.Uint64(), 36)
)

// Prefix returns a prefix unique to this call in this process, made of
// letters and digits only, so it is safe in Redis keys and NATS subject
// tokens: "t" + 8 hex digits of a hash of t.Name() and a per-process nonce
// + a decimal counter. Use it as the key prefix Prefix(t)+":" and as the
// subject prefix.
func Prefix(t testing.TB) string {
	h := fnv.New32a()
	h.Write([]byte(t.Name()))
	h.Write([]byte{0})
	h.Write([]byte(processNonce))
	return fmt.Sprintf("t%08x%d", h.Sum32(), prefixCounter.Add(1))
}

// Eventually calls cond every PollInterval until it returns true, and fails
// the test with the formatted message if it has not within timeout. cond runs
// on the calling goroutine and is called at least once. The message is
// formatted only on failure, but args are evaluated at the call like any Go
// arguments: a count passed there is the count before waiting.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %s: %s", timeout, fmt.Sprintf(format, args...))
			return
		}
		<-tick.C
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process may take it before the caller binds it; StartRedis retries on that.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
