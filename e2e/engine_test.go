//go:build linux

package e2e

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
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testenv"
)

// engine is a private Docker engine (dockerd) that a test started: its data,
// state, socket and pid file live in one temporary directory, it has no
// bridge and touches no iptables rule, so its containers can only use the
// host network (or none). It is stopped and its directory removed when the
// test ends, also when the test fails.
type engine struct {
	dir     string // everything the engine writes
	dockerd string // the dockerd binary
	sock    string // its API socket
	cli     string // the docker CLI used against it
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	log     *testenv.Buffer
}

// dockerCLI returns the docker CLI that goes with Debian's engine
// (/usr/bin/docker, package docker.io) when it is there, else the first on
// PATH.
func dockerCLI(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker"
	}
	p, err := exec.LookPath("docker")
	if err != nil {
		t.Fatalf("docker CLI not found: install it with `apt-get install -y docker.io` (%v)", err)
	}
	return p
}

// startEngine starts dockerd and waits until its API answers. It fails the
// test, with the engine's log, when dockerd cannot start.
func startEngine(t *testing.T, ctx context.Context) *engine {
	t.Helper()
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/dockerd"); serr != nil {
			t.Fatalf("dockerd not found: install it with `apt-get install -y docker.io` (%v)", err)
		}
		dockerd = "/usr/sbin/dockerd"
	}
	if os.Geteuid() != 0 {
		t.Fatalf("a private dockerd needs root (running as uid %d)", os.Geteuid())
	}
	// A short directory: unix socket paths are limited to 108 bytes, and
	// containerd's live under the exec root.
	dir, err := os.MkdirTemp("", "pe2e-")
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{dir: dir, dockerd: dockerd, sock: filepath.Join(dir, "docker.sock"), cli: dockerCLI(t), exited: make(chan struct{}), log: &testenv.Buffer{}}
	t.Cleanup(func() { e.stop(t) })

	// An empty config file, so that the machine's /etc/docker/daemon.json
	// (which may name another storage driver or a bridge) does not apply.
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := filepath.Base(dir) // containerd namespaces of its own, should a system containerd be used
	args := []string{
		"--config-file", filepath.Join(dir, "daemon.json"),
		"--storage-driver=vfs",
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"-H", "unix://" + e.sock,
		"--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
		"--containerd-namespace", ns, "--containerd-plugins-namespace", ns + "-plugins",
	}
	// timeout(1) bounds the engine should this test process die without
	// its cleanup (a go test -timeout panic): the engine gets SIGTERM after
	// 15 minutes, SIGKILL 30 s later. Signals sent to timeout reach dockerd.
	e.cmd = exec.Command("timeout", append([]string{"-k", "30s", "15m", dockerd}, args...)...)
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	go func() { _ = e.cmd.Wait(); close(e.exited) }()

	hc := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.sock)
		}},
	}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := hc.Get("http://docker/_ping")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return e
			}
		}
		select {
		case <-e.exited:
			t.Fatalf("dockerd exited before its API answered (%v):\n%s", e.cmd.ProcessState, tail(e.log.String(), 40))
		case <-ctx.Done():
			t.Fatalf("dockerd: %v before its API answered:\n%s", ctx.Err(), tail(e.log.String(), 40))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd's API did not answer within 60s (last: %v):\n%s", err, tail(e.log.String(), 40))
		}
	}
}

// stop ends dockerd (which stops what it runs and its containerd), then
// whatever it started that is still there, unmounts what it left mounted
// under its directory and removes the directory.
func (e *engine) stop(t *testing.T) {
	t.Helper()
	if e.cmd != nil && e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.exited:
		case <-time.After(45 * time.Second):
			t.Errorf("dockerd still running 45s after SIGTERM: killing it")
			_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
			<-e.exited
		}
	}
	// containerd and its shims are not in dockerd's process group; they
	// name the engine's directory on their command line.
	for _, pid := range pidsMentioning(e.dir) {
		t.Logf("killing process %d left by dockerd", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := unmountUnder(e.dir); err != nil {
		t.Errorf("unmount under %s: %v", e.dir, err)
	}
	if err := os.RemoveAll(e.dir); err != nil {
		t.Errorf("remove the engine's directory: %v", err)
	}
}

// env is the environment for the docker CLI and docker-compose: the
// caller's, less any DOCKER_* and COMPOSE_* setting, pointed at this engine,
// with the CLI's directory first on PATH (docker-compose runs `docker build`).
func (e *engine) env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DOCKER_") || strings.HasPrefix(kv, "COMPOSE_") || strings.HasPrefix(kv, "PATH=") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "DOCKER_HOST=unix://"+e.sock, "PATH="+filepath.Dir(e.cli)+":"+os.Getenv("PATH"))
	return append(env, extra...)
}

// run runs a command against the engine and returns its combined output,
// failing the test with that output when it fails.
func (e *engine) run(t *testing.T, ctx context.Context, stdin io.Reader, env []string, dir, name string, args ...string) string {
	t.Helper()
	out, err := e.try(ctx, stdin, env, dir, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, tail(out, 60))
	}
	return out
}

// try is run without the failure: it returns the output and the error.
func (e *engine) try(ctx context.Context, stdin io.Reader, env []string, dir, name string, args ...string) (string, error) {
	var out bytes.Buffer
	return e.exec(ctx, stdin, &out, &out, env, dir, name, args...)
}

// runStamped is run with each line of the output prefixed by the time since
// the command started.
func (e *engine) runStamped(t *testing.T, ctx context.Context, env []string, dir, name string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	out2, err := e.exec(ctx, nil, &out, &stampWriter{w: &out, start: time.Now()}, env, dir, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, tail(out2, 60))
	}
	return out2
}

// exec runs the command with its output written to w and returns out's
// contents.
func (e *engine) exec(ctx context.Context, stdin io.Reader, out *bytes.Buffer, w io.Writer, env []string, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env, cmd.Dir, cmd.Stdin = env, dir, stdin
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
	}
	return out.String(), err
}

// stampWriter prefixes each line written to w with the time since start.
type stampWriter struct {
	w       io.Writer
	start   time.Time
	midLine bool
}

func (s *stampWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if !s.midLine {
			fmt.Fprintf(s.w, "[%6.1fs] ", time.Since(s.start).Seconds())
		}
		line, rest, found := bytes.Cut(p, []byte("\n"))
		s.w.Write(line)
		if found {
			s.w.Write([]byte("\n"))
		}
		s.midLine, p = !found, rest
	}
	return n, nil
}

// docker runs the docker CLI against the engine.
func (e *engine) docker(t *testing.T, ctx context.Context, stdin io.Reader, args ...string) string {
	t.Helper()
	return e.run(t, ctx, stdin, e.env(), "", e.cli, args...)
}

// lines splits a command's output into its non-empty lines, sorted.
func lines(out string) []string {
	var l []string
	for _, s := range strings.Split(out, "\n") {
		if s = strings.TrimSpace(s); s != "" {
			l = append(l, s)
		}
	}
	sort.Strings(l)
	return l
}

// pidsMentioning lists the processes whose command line contains s.
func pidsMentioning(s string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(cmdline, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unmountUnder detaches every mount point under dir, deepest first
// (dockerd leaves its network namespace file mounted under the exec root;
// debootstrap mounts /proc in its target).
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := unescapeMount(f[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = append([]string{fmt.Sprintf("[... %d lines ...]", len(l)-n)}, l[len(l)-n:]...)
	}
	return strings.Join(l, "\n")
}
