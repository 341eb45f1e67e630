package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStartTimeout bounds how long StartRedis, Start and Restart wait for
// redis-server to answer PING.
const RedisStartTimeout = 10 * time.Second

// Redis is a redis-server child process listening on 127.0.0.1 on a port of
// its own, with its working directory (AOF files, log) in a t.TempDir(). It
// is killed when the test that started it ends.
//
// The exported fields do not change after StartRedis returns. The methods
// are safe for concurrent use, but report failures with t.Fatalf and so
// belong on the test's goroutine.
type Redis struct {
	// Addr is "127.0.0.1:<Port>".
	Addr string
	// Port is the TCP port, the same across Stop and Start.
	Port int
	// Dir is the server's working directory; redis.log in it holds the
	// server's output across restarts.
	Dir string
	// Password is the password set by WithPassword, or "".
	Password string

	bin     string
	opts    redisOpts
	busPort int // the cluster bus port (cluster-port), with withClusterBus

	mu   sync.Mutex
	cmd  *exec.Cmd     // nil when stopped
	done chan struct{} // closed when cmd has exited
}

// RedisOption changes how StartRedis runs redis-server.
type RedisOption func(*redisOpts)

type redisOpts struct {
	aof      bool
	password string
	extra    []string
	sentinel string // the sentinel configuration file's first contents; "" for a server
	cluster  bool   // cluster-enabled, with a cluster bus port of its own
}

// withClusterBus runs the server with cluster-enabled yes and its cluster
// bus on a second free port, chosen with the client port (the default,
// port+10000, may be above 65535 or taken).
func withClusterBus() RedisOption {
	return func(o *redisOpts) { o.cluster = true }
}

// WithAOF turns on the append-only file with fsync on every write, so the
// data survives Stop (a SIGKILL) and is reloaded by Start.
func WithAOF() RedisOption {
	return func(o *redisOpts) { o.aof = true }
}

// WithConfig adds a configuration directive, as if "key value" were a line
// of redis.conf; it overrides the defaults StartRedis sets. For a directive
// with several arguments, pass them space-separated in value.
func WithConfig(key, value string) RedisOption {
	return func(o *redisOpts) { o.extra = append(o.extra, "--"+key, value) }
}

// WithPassword sets requirepass; URL and Client then carry the password.
func WithPassword(p string) RedisOption {
	return func(o *redisOpts) { o.password = p }
}

var errAddrInUse = errors.New("address already in use")

// StartRedis starts redis-server on 127.0.0.1 on a free port and returns once
// it answers PING. It fails the test, never skips it, when redis-server is not
// installed. The server runs with --save "" --appendonly no (unless WithAOF)
// and no keyspace notifications: the code under test sets what it needs. A
// t.Cleanup kills it and waits for it to exit.
func StartRedis(t testing.TB, opts ...RedisOption) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: install it with `apt-get install -y redis-server` (%v)", err)
		return nil
	}
	r := &Redis{bin: bin, Dir: t.TempDir()}
	for _, o := range opts {
		o(&r.opts)
	}
	r.Password = r.opts.password
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := r.stopLocked(); err != nil {
			t.Errorf("stop redis-server: %v", err)
		}
	})

	r.mu.Lock()
	defer r.mu.Unlock()
	// The port may be taken between FreePort and redis-server's bind: try
	// another one then.
	for attempt := 1; ; attempt++ {
		r.Port = FreePort(t)
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port))
		if r.opts.cluster {
			r.busPort = FreePort(t)
		}
		err := r.launchLocked()
		if err == nil {
			return r
		}
		if !errors.Is(err, errAddrInUse) || attempt == 5 {
			t.Fatalf("start redis-server: %v", err)
			return nil
		}
	}
}

// URL returns redis://[:password@]127.0.0.1:<port>/0, for redis.ParseURL and
// the REDIS_URL setting.
func (r *Redis) URL() string {
	u := url.URL{Scheme: "redis", Host: r.Addr, Path: "/0"}
	if r.Password != "" {
		u.User = url.UserPassword("", r.Password)
	}
	return u.String()
}

// Client returns a new go-redis client for the server, closed when the test
// ends. It reconnects by itself after Restart.
func (r *Redis) Client(t testing.TB) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatalf("parse %s: %v", r.URL(), err)
		return nil
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Stop kills the server with SIGKILL, like a crash, and waits for it to exit.
// Without WithAOF its data is lost. Stopping a stopped server does nothing.
func (r *Redis) Stop(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.stopLocked(); err != nil {
		t.Fatalf("stop redis-server: %v", err)
	}
}

// Start starts a stopped server again on the same port and directory with
// the same options, and waits for PING; with WithAOF the data is reloaded
// first. It fails the test if the server is running.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		t.Fatalf("start redis-server on %s: already running", r.Addr)
		return
	}
	if err := r.launchLocked(); err != nil {
		t.Fatalf("restart redis-server on %s: %v", r.Addr, err)
	}
}

// Restart is Stop followed by Start.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	r.Stop(t)
	r.Start(t)
}

func (r *Redis) args() []string {
	if r.opts.sentinel != "" {
		return append([]string{r.sentinelConf(), "--sentinel",
			"--port", strconv.Itoa(r.Port),
			"--bind", "127.0.0.1",
			"--dir", r.Dir,
			"--daemonize", "no",
		}, r.opts.extra...)
	}
	a := []string{
		"--port", strconv.Itoa(r.Port),
		"--bind", "127.0.0.1",
		"--dir", r.Dir,
		"--daemonize", "no",
		"--save", "",
		"--appendonly", "no",
	}
	if r.opts.aof {
		a = append(a, "--appendonly", "yes", "--appendfsync", "always")
	}
	if r.opts.password != "" {
		a = append(a, "--requirepass", r.opts.password)
	}
	if r.opts.cluster {
		a = append(a, "--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(r.busPort),
			"--cluster-config-file", "nodes.conf")
	}
	return append(a, r.opts.extra...)
}

// launchLocked starts redis-server and waits until it answers PING or exits.
func (r *Redis) launchLocked() error {
	logPath := filepath.Join(r.Dir, "redis.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	logStart, _ := logFile.Seek(0, io.SeekEnd)
	if err := r.writeSentinelConf(); err != nil {
		logFile.Close()
		return err
	}
	cmd := exec.Command(r.bin, r.args()...)
	cmd.Dir = r.Dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	detach(cmd)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("run %s: %w", r.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	r.cmd, r.done = cmd, done

	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	deadline := time.Now().Add(RedisStartTimeout)
	var pingErr error
	for {
		select {
		case <-done:
			r.cmd = nil
			out := readFrom(logPath, logStart)
			if strings.Contains(out, "Address already in use") {
				return fmt.Errorf("port %d: %w", r.Port, errAddrInUse)
			}
			return fmt.Errorf("redis-server exited (%s):\n%s", cmd.ProcessState, out)
		default:
		}
		if pingErr = ping(r.Addr, r.opts.password); pingErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			_ = r.stopLocked()
			return fmt.Errorf("no PONG within %s (last: %v):\n%s", RedisStartTimeout, pingErr, readFrom(logPath, logStart))
		}
		select {
		case <-tick.C:
		case <-done:
		}
	}
}

// running reports whether the server process is up (not stopped).
func (r *Redis) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil
}

func (r *Redis) stopLocked() error {
	if r.cmd == nil {
		return nil
	}
	cmd, done := r.cmd, r.done
	r.cmd = nil
	_ = killGroup(cmd) // fails only if it already exited
	select {
	case <-done:
		return nil
	case <-time.After(RedisStartTimeout):
		return fmt.Errorf("pid %d still running %s after SIGKILL", cmd.Process.Pid, RedisStartTimeout)
	}
}

// ping sends AUTH (if password is set) and PING over a fresh connection and
// wants +PONG; a server still loading its AOF answers -LOADING instead.
func ping(addr, password string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	var req bytes.Buffer
	if password != "" {
		writeCommand(&req, "AUTH", password)
	}
	writeCommand(&req, "PING")
	if _, err := c.Write(req.Bytes()); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	want := []string{"+PONG"}
	if password != "" {
		want = []string{"+OK", "+PONG"}
	}
	for _, w := range want {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if line = strings.TrimRight(line, "\r\n"); line != w {
			return fmt.Errorf("got %q, want %q", line, w)
		}
	}
	return nil
}

func writeCommand(b *bytes.Buffer, args ...string) {
	fmt.Fprintf(b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(b, "$%d\r\n%s\r\n", len(a), a)
	}
}

// readFrom returns the end of the log written since offset, for error
// messages.
func readFrom(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(read log: %v)", err)
	}
	if offset < int64(len(b)) {
		b = b[offset:]
	} else {
		b = nil
	}
	const max = 4 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}
