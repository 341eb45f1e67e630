// Package security_test proves presenced's security settings end to end:
// the shipped NATS permissions (deploy/nats/presenced.conf) and Redis ACL
// (deploy/redis/users.acl) let a real worker do its job and nothing more,
// TLS with client certificates works to both servers, and secrets never
// reach the output. The tests run the presenced binary, built once, against
// real servers.
package security_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// build builds cmd/presenced once per test binary run.
var build = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "presenced-security-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "presenced")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/presenced/presenced/cmd/presenced").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func binary(t *testing.T) string {
	t.Helper()
	bin, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer = testenv.Buffer

// proc is one presenced process; stdout and stderr go to out.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when the process has exited
}

// baseEnv is the environment every run starts from: nothing inherited, so
// only the variables a test sets reach the process; JSON logs at debug, no
// HTTP endpoint.
func baseEnv() map[string]string {
	return map[string]string{"LOG_LEVEL": "debug", "LOG_FORMAT": "json", "HTTP_ADDR": "off", "PRESENCE_CONNECT_TIMEOUT": "2s"}
}

// start runs presenced with env (over baseEnv) and args. A cleanup stops it
// with SIGTERM if it is still running when the test ends.
func start(t *testing.T, env map[string]string, args ...string) *proc {
	t.Helper()
	all := baseEnv()
	for k, v := range env {
		all[k] = v
	}
	cmd := exec.Command(binary(t), args...)
	for k, v := range all {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
			t.Errorf("presenced did not stop on SIGTERM:\n%s", p.out)
		}
	})
	return p
}

// run runs presenced to completion (bounded by timeout) and returns its exit
// code and output.
func run(t *testing.T, timeout time.Duration, env map[string]string, args ...string) (int, string) {
	t.Helper()
	p := start(t, env, args...)
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("presenced still running after %s:\n%s", timeout, p.out)
	}
	return p.cmd.ProcessState.ExitCode(), p.out.String()
}

// waitStarted waits for the worker's "worker started" line, failing early
// if the process exits.
func (p *proc) waitStarted(t *testing.T) {
	t.Helper()
	p.waitLog(t, `"msg":"worker started"`)
}

func (p *proc) waitLog(t *testing.T, substr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.out.String(), substr) {
		select {
		case <-p.done:
			t.Fatalf("presenced exited (%s) before logging %s:\n%s", p.cmd.ProcessState, substr, p.out)
		case <-time.After(testenv.PollInterval):
		}
		if time.Now().After(deadline) {
			t.Fatalf("presenced did not log %s within 20s:\n%s", substr, p.out)
		}
	}
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop(t *testing.T) int {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("presenced did not stop on SIGTERM:\n%s", p.out)
	}
	return p.cmd.ProcessState.ExitCode()
}

// assertNoSecrets fails if out contains any of the secrets.
func assertNoSecrets(t *testing.T, what, out string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("%s shows the secret %q:\n%s", what, s, out)
		}
	}
}

// heartbeat sends a heartbeat request for ids on nc and checks the reply.
func heartbeat(t *testing.T, nc *nats.Conn, subjects contract.Subjects, ids ...string) {
	t.Helper()
	request(t, nc, subjects.Heartbeat(), ids)
}

func disconnect(t *testing.T, nc *nats.Conn, subjects contract.Subjects, ids ...string) {
	t.Helper()
	request(t, nc, subjects.Disconnect(), ids)
}

func request(t *testing.T, nc *nats.Conn, subject string, ids []string) {
	t.Helper()
	if r := send(t, nc, subject, map[string]any{"userIds": ids}); r.Accepted != len(ids) {
		t.Fatalf("reply to %s: %+v, want %d accepted", subject, r, len(ids))
	}
}

// send requests body on subject and fails when the reply says "error" or
// rejects anything; it returns the reply read as a contract.Reply.
func send(t *testing.T, nc *nats.Conn, subject string, body any) contract.Reply {
	t.Helper()
	data, _ := json.Marshal(body)
	msg, err := nc.Request(subject, data, 10*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	// A lease reply has "error" too; its other members are ignored.
	var r contract.Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil || r.Error != "" || len(r.Rejected) > 0 {
		t.Fatalf("reply to %s %s: %s (%v)", subject, data, msg.Data, err)
	}
	return r
}

// waitEvent waits until c has an event for user with the given status.
func waitEvent(t *testing.T, c *testenv.Collector, user, status string) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, func() bool {
		for _, m := range c.Msgs() {
			var ev contract.Event
			if json.Unmarshal(m.Data, &ev) == nil && ev.UserID == user && string(ev.Status) == status {
				return true
			}
		}
		return false
	}, "no %s event for %s: %d messages on %s", status, user, c.Len(), status)
}

// pki is a test CA with a server certificate for 127.0.0.1 and localhost
// and a client certificate, all as PEM files in one directory.
type pki struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
	// OtherCA signs nothing used here: trusting only it must fail.
	OtherCA string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	p := pki{
		CA: filepath.Join(dir, "ca.pem"), OtherCA: filepath.Join(dir, "other-ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
	}
	caKey, caCert := newCA(t, "presenced test CA", p.CA)
	newCA(t, "another CA", p.OtherCA)
	issue(t, caKey, caCert, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, p.ServerCert, p.ServerKey)
	issue(t, caKey, caCert, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "presenced"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, p.ClientCert, p.ClientKey)
	return p
}

var serial atomicSerial

type atomicSerial struct {
	mu sync.Mutex
	n  int64
}

func (s *atomicSerial) next() *big.Int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return big.NewInt(s.n)
}

func newCA(t *testing.T, name, path string) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key := genKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial.next(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "CERTIFICATE", der)
	return key, cert
}

func issue(t *testing.T, caKey *ecdsa.PrivateKey, ca *x509.Certificate, tmpl *x509.Certificate, certPath, keyPath string) {
	t.Helper()
	key := genKey(t)
	tmpl.SerialNumber = serial.next()
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, certPath, "CERTIFICATE", der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyPath, "PRIVATE KEY", kder)
}

func genKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// clientTLS is the TLS configuration of a test client with the client
// certificate.
func (p pki) clientTLS(t *testing.T) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(p.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	pair, err := tls.LoadX509KeyPair(p.ClientCert, p.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
}

// tlsRedis is a redis-server that accepts only TLS connections with a
// client certificate signed by the test CA.
type tlsRedis struct {
	Addr string
	Dir  string
}

// startTLSRedis starts redis-server with TLS only (--port 0) and waits until
// a TLS client gets PONG. testenv.StartRedis pings in plain text, hence this.
func startTLSRedis(t *testing.T, p pki, extra ...string) tlsRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: %v", err)
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := testenv.FreePort(t)
		addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
		args := append([]string{
			"--port", "0", "--tls-port", fmt.Sprint(port), "--bind", "127.0.0.1",
			"--tls-cert-file", p.ServerCert, "--tls-key-file", p.ServerKey,
			"--tls-ca-cert-file", p.CA, "--tls-auth-clients", "yes",
			"--dir", dir, "--save", "", "--appendonly", "no", "--daemonize", "no",
		}, extra...)
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("redis-%d.log", attempt)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, args...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			logf.Close()
			close(exited)
		}()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		if lastErr = waitTLSPing(addr, p.clientTLS(t), exited); lastErr == nil {
			t.Cleanup(stop)
			return tlsRedis{Addr: addr, Dir: dir}
		}
		stop()
		log, _ := os.ReadFile(logf.Name())
		if !strings.Contains(string(log), "Address already in use") {
			t.Fatalf("start redis-server with TLS: %v\n%s", lastErr, log)
		}
	}
	t.Fatalf("start redis-server with TLS: %v", lastErr)
	return tlsRedis{}
}

// waitTLSPing sends PING over TLS until it gets +PONG or redis-server exits.
func waitTLSPing(addr string, tc *tls.Config, exited <-chan struct{}) error {
	deadline := time.Now().Add(testenv.RedisStartTimeout)
	for {
		err := tlsPing(addr, tc)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited: %w", err)
		case <-time.After(testenv.PollInterval):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG within %s: %w", testenv.RedisStartTimeout, err)
		}
	}
}

func tlsPing(addr string, tc *tls.Config) error {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 200 * time.Millisecond}, Config: tc}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 7)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if got := string(buf[:n]); got != "+PONG\r\n" {
		return errors.New("got " + got)
	}
	return nil
}

// queryEveryEndpoint asks each query endpoint once about u-4 (and u-5) and
// fails on an error reply.
func queryEveryEndpoint(t *testing.T, nc *nats.Conn, subjects contract.Subjects) {
	t.Helper()
	for ep, body := range map[string]any{
		contract.QueryStatus: map[string]any{"userId": "u-4"},
		contract.QueryOnline: map[string]any{"userIds": []string{"u-4", "u-5"}},
		contract.QueryList:   map[string]any{},
		contract.QueryCount:  map[string]any{},
	} {
		data, _ := json.Marshal(body)
		msg, err := nc.Request(subjects.Query(ep), data, 10*time.Second)
		if err != nil {
			t.Fatalf("query %s: %v", ep, err)
		}
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			t.Fatalf("query %s: error %s %s", ep, code, msg.Header.Get(micro.ErrorHeader))
		}
	}
}
