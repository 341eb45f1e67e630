package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Buffer is a bytes.Buffer safe for a child process's writes and the
// test's reads at the same time (use it as cmd.Stdout or cmd.Stderr).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	buildMu  sync.Mutex
	binaries = map[string]string{}
)

// Binary builds the main package pkg (an import path such as
// "github.com/presenced/presenced/cmd/presenced") once per test binary and
// returns the executable's path. Without -race, as it would be deployed.
func Binary(t testing.TB, pkg string, tags ...string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	key := pkg + " " + strings.Join(tags, ",")
	if bin, ok := binaries[key]; ok {
		return bin
	}
	dir, err := os.MkdirTemp("", "presenced-bin-")
	if err != nil {
		t.Fatalf("build %s: %v", pkg, err)
	}
	bin := filepath.Join(dir, filepath.Base(pkg))
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	if out, err := exec.Command("go", append(args, pkg)...).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	binaries[key] = bin
	return bin
}

// Presenced is Binary for cmd/presenced, as shipped.
func Presenced(t testing.TB) string {
	t.Helper()
	return Binary(t, "github.com/presenced/presenced/cmd/presenced")
}

// PresencedWithFaults is cmd/presenced built with -tags faultinject: the
// fault suite's hooks (PRESENCED_TEST_* variables) work in it.
func PresencedWithFaults(t testing.TB) string {
	t.Helper()
	return Binary(t, "github.com/presenced/presenced/cmd/presenced", "faultinject")
}
