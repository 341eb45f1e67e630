package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds returns the user+system CPU time of pid so far.
func cpuSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the fields after it start
	// after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return float64(ut+st) / clockTicks, nil
}

// memoryKB returns VmRSS and VmHWM (peak RSS) of pid, in KiB.
func memoryKB(pid int) (rss, hwm int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm, nil
}

// cpuMeter measures the CPU one process used between start and stop, as a
// percentage of one core.
type cpuMeter struct {
	pid   int
	t0    time.Time
	c0    float64
	valid bool
}

func startCPU(pid int) cpuMeter {
	c, err := cpuSeconds(pid)
	return cpuMeter{pid: pid, t0: time.Now(), c0: c, valid: err == nil && pid > 0}
}

// percent returns the CPU used since start as % of one core, or -1 when the
// process could not be read.
func (m cpuMeter) percent() float64 {
	if !m.valid {
		return -1
	}
	c, err := cpuSeconds(m.pid)
	if err != nil {
		return -1
	}
	wall := time.Since(m.t0).Seconds()
	if wall <= 0 {
		return -1
	}
	return 100 * (c - m.c0) / wall
}

// proc is a child process: a worker, nats-server. Its stderr is kept (the
// last 64 KiB) for error reports.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the exit status, valid once done is closed
	log  *tailBuffer
	http string // host:port of its HTTP endpoint, or ""
	// pprof is the host:port serving /debug/pprof, or "": presenced's
	// status address (STATUS_ADDR), the seed worker's HTTP endpoint.
	pprof string
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// startProc starts bin with args and env; the process is killed if the
// bench dies (Pdeathsig) so a crashed bench leaves no workers behind.
func startProc(name, bin string, args, env []string, httpAddr string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	tb := &tailBuffer{max: 64 << 10}
	cmd.Stdout = io.Discard
	cmd.Stderr = tb
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: tb, http: httpAddr}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to timeout, then kills the process.
func (p *proc) stop(timeout time.Duration) error {
	if p.exited() {
		return p.exitErr()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.exitErr()
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s after SIGTERM; killed", p.name, timeout)
	}
}

func (p *proc) exitErr() error {
	if p.err == nil {
		return nil
	}
	return fmt.Errorf("%s exited: %v; its log ends with:\n%s", p.name, p.err, p.log.String())
}

// waitReady polls http://<addr>/readyz until it answers 200.
func (p *proc) waitReady(ctx context.Context) error {
	if p.http == "" {
		return nil
	}
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + p.http + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return p.exitErr()
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last: %v); its log ends with:\n%s", p.name, ctx.Err(), err, p.log.String())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := string(t.b)
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return s
}

// freeAddr returns 127.0.0.1:<port> with a port that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// cleanEnv is the environment for child processes: the bench's own minus
// every setting presenced or NATS/Redis clients would read, so only the
// flags the bench passes configure them.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "PRESENCE_"), strings.HasPrefix(k, "NATS_"), strings.HasPrefix(k, "REDIS_"),
			k == "LOG_LEVEL", k == "LOG_FORMAT", k == "HTTP_ADDR", k == "STATUS_ADDR", k == "PPROF_ENABLED", k == "GOMAXPROCS":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}
