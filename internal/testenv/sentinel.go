package testenv

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelConfig is how StartSentinel's sentinels watch their master.
type SentinelConfig struct {
	// Master is the name the master is monitored under.
	Master string
	// Quorum is the number of sentinels that must agree the master is down.
	Quorum int
	// DownAfter is down-after-milliseconds: how long the master may not
	// answer before a sentinel thinks it down.
	DownAfter time.Duration
	// FailoverTimeout is failover-timeout (also how long a sentinel waits
	// before failing the same master over again).
	FailoverTimeout time.Duration
}

// WithReplicaOf makes the server a replica of master (replicaof).
func WithReplicaOf(master *Redis) RedisOption {
	return WithConfig("replicaof", "127.0.0.1 "+strconv.Itoa(master.Port))
}

// StartSentinel starts a Redis Sentinel (redis-server --sentinel) on
// 127.0.0.1 on a free port, watching master under c's settings, with its
// configuration file (which a sentinel rewrites as it learns) in its Dir.
// It returns once the sentinel answers PING; it is killed when the test
// ends. Stop, Start and Restart work as for a server, the configuration
// it rewrote kept.
func StartSentinel(t testing.TB, master *Redis, c SentinelConfig, opts ...RedisOption) *Redis {
	t.Helper()
	conf := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d %d\n"+
		"sentinel down-after-milliseconds %s %d\n"+
		"sentinel failover-timeout %s %d\n"+
		"sentinel parallel-syncs %s 1\n",
		c.Master, master.Port, c.Quorum,
		c.Master, c.DownAfter.Milliseconds(),
		c.Master, c.FailoverTimeout.Milliseconds(),
		c.Master)
	if master.Password != "" {
		conf += fmt.Sprintf("sentinel auth-pass %s %s\n", c.Master, master.Password)
	}
	return StartRedis(t, append([]RedisOption{func(o *redisOpts) { o.sentinel = conf }}, opts...)...)
}

// StartSentinels starts n sentinels watching master (StartSentinel) and
// waits until each knows the other n-1, so that they can reach a quorum.
func StartSentinels(t testing.TB, master *Redis, n int, c SentinelConfig) []*Redis {
	t.Helper()
	var ss []*Redis
	for range n {
		ss = append(ss, StartSentinel(t, master, c))
	}
	for _, s := range ss {
		cli := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
		Eventually(t, 20*time.Second, func() bool {
			others, err := cli.Sentinels(context.Background(), c.Master).Result()
			return err == nil && len(others) == n-1
		}, "sentinel %s does not know the other %d sentinels", s.Addr, n-1)
		_ = cli.Close()
	}
	return ss
}

// MasterAddr asks the sentinel for the address of the master named name;
// "" when it does not answer.
func (r *Redis) MasterAddr(name string) string {
	cli := redis.NewSentinelClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, DialTimeout: time.Second})
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	a, err := cli.GetMasterAddrByName(ctx, name).Result()
	if err != nil || len(a) != 2 {
		return ""
	}
	return net.JoinHostPort(a[0], a[1])
}

func (r *Redis) sentinelConf() string { return filepath.Join(r.Dir, "sentinel.conf") }

// writeSentinelConf writes a sentinel's configuration file before its first
// start; later starts keep the file as the sentinel rewrote it.
func (r *Redis) writeSentinelConf() error {
	if r.opts.sentinel == "" {
		return nil
	}
	if _, err := os.Stat(r.sentinelConf()); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.WriteFile(r.sentinelConf(), []byte(r.opts.sentinel), 0o644)
}
