//go:build linux

package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The stand-ins for the images docker-compose.yml and the Dockerfile name,
// made on the machine: no registry is needed.
const (
	redisImage   = "presenced-e2e/redis:bookworm" // Debian's redis-server
	runtimeImage = "presenced-e2e/static:nonroot" // for gcr.io/distroless/static-debian12:nonroot
)

// caCerts is the machine's CA bundle; the Go image needs it to reach the
// module proxy.
const caCerts = "/etc/ssl/certs/ca-certificates.crt"

// cacheDir is where the test keeps what it can reuse between runs (the
// Debian root filesystem, the nats-server binary): $PRESENCED_E2E_CACHE, or
// presenced-e2e in the user's cache directory ($XDG_CACHE_HOME or ~/.cache).
// Deleting it makes the next run cold.
func cacheDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PRESENCED_E2E_CACHE")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			t.Fatalf("no cache directory: set PRESENCED_E2E_CACHE (%v)", err)
		}
		dir = filepath.Join(base, "presenced-e2e")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// aptMirror returns the Debian archive this machine installs from (the
// first deb URI in /etc/apt/sources.list and sources.list.d whose path ends
// in /debian), or deb.debian.org when none is found.
func aptMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			fields := strings.Fields(line)
			var uris []string
			switch {
			case strings.HasSuffix(f, ".sources") && len(fields) > 1 && fields[0] == "URIs:": // deb822
				uris = fields[1:]
			case len(fields) > 2 && fields[0] == "deb": // one-line: deb [options] uri suite ...
				for _, s := range fields[1:] {
					if !strings.HasPrefix(s, "[") && !strings.HasSuffix(s, "]") {
						uris = []string{s}
						break
					}
				}
			}
			for _, u := range uris {
				if strings.HasSuffix(strings.TrimSuffix(u, "/"), "/debian") {
					return strings.TrimSuffix(u, "/")
				}
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// debianRootfs returns a tar of a Debian bookworm root filesystem with
// redis-server (debootstrap --variant=minbase from the machine's mirror),
// made once and kept in the cache.
func debianRootfs(t *testing.T, ctx context.Context, cache string) string {
	t.Helper()
	out := filepath.Join(cache, "debian-bookworm-minbase-redis.tar")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	debootstrap, err := exec.LookPath("debootstrap")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/debootstrap"); serr != nil {
			t.Fatalf("debootstrap not found: install it with `apt-get install -y debootstrap` (%v)", err)
		}
		debootstrap = "/usr/sbin/debootstrap"
	}
	work, err := os.MkdirTemp(cache, "rootfs-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unmountUnder(work); err != nil {
			t.Errorf("unmount under %s: %v", work, err)
		}
		if err := os.RemoveAll(work); err != nil {
			t.Errorf("remove %s: %v", work, err)
		}
	}()
	root := filepath.Join(work, "rootfs")
	mirror := aptMirror()
	t.Logf("debootstrap bookworm from %s (once; kept in %s)", mirror, out)
	cmd := exec.CommandContext(ctx, debootstrap, "--variant=minbase", "--include=redis-server", "bookworm", root, mirror)
	cmd.WaitDelay = 10 * time.Second
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, tail(string(b), 40))
	}
	// Downloaded packages and package lists are not needed in the image.
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"} {
		m, _ := filepath.Glob(filepath.Join(root, pattern))
		for _, p := range m {
			_ = os.RemoveAll(p)
		}
	}
	tmp := filepath.Join(work, "rootfs.tar")
	if b, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "-C", root, "-cf", tmp, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar the root filesystem: %v\n%s", err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// goEnv returns `go env name`.
func goEnv(t *testing.T, name string) string {
	t.Helper()
	b, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatalf("go env %s: %v", name, err)
	}
	return strings.TrimSpace(string(b))
}

// natsServer returns a static nats-server built from the module version in
// go.mod, kept in the cache.
func natsServer(t *testing.T, ctx context.Context, cache, root string) (bin, version string) {
	t.Helper()
	const mod = "github.com/nats-io/nats-server/v2"
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Version}}", mod)
	cmd.Dir = root
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", mod, err)
	}
	version = strings.TrimSpace(string(b))
	bin = filepath.Join(cache, "nats-server-"+version+"-"+goEnv(t, "GOVERSION"))
	if _, err := os.Stat(bin); err == nil {
		return bin, version
	}
	tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid()) // another run may be building it too
	cmd = exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, mod)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.WaitDelay = 10 * time.Second
	if b, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		t.Fatalf("build nats-server %s: %v\n%s", version, err, b)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin, version
}

// goBuildCache returns a Go build cache holding what the Dockerfile's build
// stage compiles: the same commands and flags, run on this machine's
// toolchain (the one the Go image carries). With -trimpath the cache keys do
// not depend on where the sources are, so the build in the image finds the
// packages compiled and only the changed ones are compiled again; without
// it the image's build compiles everything on each run. Kept in the cache;
// a cache miss (the Dockerfile's flags changed) only costs time.
func goBuildCache(t *testing.T, ctx context.Context, cache, root string) string {
	t.Helper()
	dir := filepath.Join(cache, "go-build-"+goEnv(t, "GOVERSION"))
	for _, args := range [][]string{
		{"build", "-trimpath", "-ldflags", "-s -w -X main.version=compose", "-o", os.DevNull, "./cmd/presenced"},
		{"build", "-trimpath", "-ldflags", "-s -w", "-o", os.DevNull, "./examples/gateway"},
	} {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOCACHE="+dir, "GOFLAGS=")
		cmd.WaitDelay = 10 * time.Second
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	return dir
}

// tarWriter writes image root filesystems: everything owned by root unless
// said otherwise.
type tarWriter struct{ *tar.Writer }

func (w tarWriter) dir(name string, mode int64, uid int) error {
	return w.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid})
}

func (w tarWriter) file(name string, mode int64, data []byte) error {
	if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}

// addTree copies the directory src into the archive as name, leaving out
// the directories skip says to (given their path relative to src).
func (w tarWriter) addTree(src, name string, skip func(rel string, d fs.DirEntry) bool) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if rel != "." && skip(rel, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = path.Join(name, filepath.ToSlash(rel))
		if d.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := w.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	})
}

// shellFrom copies from a Debian root filesystem tar what /bin/sh needs:
// dash, the C library and the dynamic loader, the usr-merge links, and
// /etc/passwd and /etc/group.
func (w tarWriter) shellFrom(rootfs string) error {
	f, err := os.Open(rootfs)
	if err != nil {
		return err
	}
	defer f.Close()
	want := func(name string, typ byte) bool {
		switch name {
		case "bin", "lib", "lib64", "sbin", "usr", "usr/bin", "usr/lib", "usr/lib64", "etc",
			"usr/bin/dash", "usr/bin/sh", "etc/passwd", "etc/group":
			return true
		}
		if m, _ := path.Match("usr/lib/*-linux-gnu", name); m && typ == tar.TypeDir {
			return true
		}
		if m, _ := path.Match("usr/lib64/*", name); m {
			return true
		}
		base := path.Base(name)
		m, _ := path.Match("usr/lib/*-linux-gnu/*", name)
		return m && (base == "libc.so.6" || strings.HasPrefix(base, "ld-linux"))
	}
	found := map[string]bool{}
	tr := tar.NewReader(bufio.NewReader(f))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", rootfs, err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		if !want(name, h.Typeflag) {
			continue
		}
		found[path.Base(name)] = true
		if err := w.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(w, tr); err != nil {
			return err
		}
	}
	for _, n := range []string{"dash", "sh", "libc.so.6", "passwd"} {
		if !found[n] {
			return fmt.Errorf("%s has no %s", rootfs, n)
		}
	}
	return nil
}

// importImage runs `docker import` of the archive that write produces, with
// the given Dockerfile instructions (--change). The archive is written on
// its own goroutine, which has ended when importImage returns.
func (e *engine) importImage(t *testing.T, ctx context.Context, name string, changes []string, write func(w tarWriter) error) {
	t.Helper()
	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		tw := tarWriter{tar.NewWriter(pw)}
		err := write(tw)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
		written <- err
	}()
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	args = append(args, "-", name)
	out, err := e.try(ctx, pr, e.env(), "", e.cli, args...)
	pr.CloseWithError(errors.New("docker import ended")) // unblocks the writer if docker stopped reading
	if werr := <-written; werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		t.Fatalf("docker import %s: %v\n%s", name, err, tail(out, 20))
	}
}

// standInImages makes the images the demo names, on the engine: Redis
// (the Debian root filesystem with redis-server), NATS (nats-server alone,
// as in the official image), a Go image for the Dockerfile's build stage
// (this machine's Go toolchain, a shell, and goCache as its build cache) and
// a stand-in for distroless
// static nonroot. It returns the NATS and Go images' names.
func standInImages(t *testing.T, ctx context.Context, e *engine, rootfs, natsBin, natsVersion, goCache string) (natsImage, goImage string) {
	t.Helper()
	e.docker(t, ctx, nil, "import", "--change", "WORKDIR /data", "--change", `CMD ["redis-server"]`, rootfs, redisImage)

	certs, err := os.ReadFile(caCerts)
	if err != nil {
		t.Fatalf("the Go image needs the CA bundle to reach the module proxy: %v", err)
	}

	natsImage = "presenced-e2e/nats:" + strings.TrimPrefix(natsVersion, "v")
	e.importImage(t, ctx, natsImage, []string{`ENTRYPOINT ["/nats-server"]`, "EXPOSE 4222 6222 8222"}, func(w tarWriter) error {
		data, err := os.ReadFile(natsBin)
		if err != nil {
			return err
		}
		return errors.Join(w.dir("tmp", 0o1777, 0), w.file("nats-server", 0o755, data))
	})

	e.importImage(t, ctx, runtimeImage, []string{"USER 65532:65532", "WORKDIR /home/nonroot"}, func(w tarWriter) error {
		return errors.Join(
			w.dir("etc", 0o755, 0),
			w.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")),
			w.file("etc/group", 0o644, []byte("root:x:0:\nnonroot:x:65532:\n")),
			w.dir("etc/ssl", 0o755, 0), w.dir("etc/ssl/certs", 0o755, 0),
			w.file("etc/ssl/certs/ca-certificates.crt", 0o644, certs),
			w.dir("tmp", 0o1777, 0),
			w.dir("home", 0o755, 0), w.dir("home/nonroot", 0o700, 65532),
		)
	})

	// The toolchain without what building a program does not use (tests,
	// test data, the sources of the go command and tools, docs): each step
	// of the build copies the whole image on the vfs driver.
	goroot := goEnv(t, "GOROOT")
	goImage = "presenced-e2e/golang:" + goEnv(t, "GOVERSION")
	skip := func(rel string, d fs.DirEntry) bool {
		switch filepath.ToSlash(rel) {
		case "test", "api", "doc", "misc", "src/cmd", ".git":
			return true
		}
		return d.Name() == "testdata" || strings.HasSuffix(d.Name(), "_test.go")
	}
	e.importImage(t, ctx, goImage, []string{
		"ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"ENV GOPATH=/go", "ENV GOTOOLCHAIN=local", "WORKDIR /go",
	}, func(w tarWriter) error {
		if err := w.shellFrom(rootfs); err != nil {
			return err
		}
		return errors.Join(
			w.dir("etc/ssl", 0o755, 0), w.dir("etc/ssl/certs", 0o755, 0),
			w.file("etc/ssl/certs/ca-certificates.crt", 0o644, certs),
			w.dir("tmp", 0o1777, 0), w.dir("root", 0o700, 0),
			w.dir("usr/local", 0o755, 0),
			w.addTree(goroot, "usr/local/go", skip),
			w.dir("root/.cache", 0o755, 0),
			w.addTree(goCache, "root/.cache/go-build", func(string, fs.DirEntry) bool { return false }),
		)
	})
	// The stand-in works as the Dockerfile uses it: a shell, go and TLS.
	if out := e.docker(t, ctx, nil, "run", "--rm", "--network", "none", goImage, "sh", "-c", "go version && test -s /etc/ssl/certs/ca-certificates.crt"); !bytes.Contains([]byte(out), []byte("go version go")) {
		t.Fatalf("%s: go version says %q", goImage, out)
	}
	return natsImage, goImage
}
