package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionFromBuildInfo: a binary built from the git checkout reports its
// revision (not "dev"), and one built with -X main.version reports that;
// both versions are valid semantic versions for the micro service.
func TestVersionFromBuildInfo(t *testing.T) {
	// Go stamps the revision only from a checkout whose .git is a
	// directory (not from a linked worktree), so build from a local clone
	// of this one's HEAD.
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse (the test runs in a git checkout): %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if out, err := exec.Command("git", "clone", "-q", "--local", strings.TrimSpace(string(top)), src).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	rev, err := exec.Command("git", "-C", src, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		flags []string
		want  string
	}{
		// -buildvcs=true overrides a GOFLAGS=-buildvcs=false in the environment.
		// Go stamps a pseudo-version holding the revision (v0.0.0-<time>-<rev>).
		{"checkout", []string{"-buildvcs=true"}, strings.TrimSpace(string(rev))[:12]},
		{"ldflags", []string{"-ldflags", "-X main.version=v1.4.2"}, "v1.4.2"},
	} {
		bin := filepath.Join(dir, c.name)
		build := exec.Command("go", append(append([]string{"build", "-o", bin}, c.flags...), "./cmd/presenced")...)
		build.Dir = src
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", c.name, err, out)
		}
		out, err := exec.Command(bin, "version").Output()
		if err != nil {
			t.Fatal(err)
		}
		got := strings.TrimSpace(string(out))
		if !strings.HasPrefix(got, "presenced ") || !strings.Contains(got, c.want) || strings.Contains(got, "dev\n") || got == "presenced dev" {
			t.Errorf("%s build: %q, want the version holding %q", c.name, got, c.want)
		}
	}
}

// TestServiceVersionIsSemver: every form buildVersion produces passes the
// micro service's check.
func TestServiceVersionIsSemver(t *testing.T) {
	defer func(v string) { version = v }(version)
	for _, v := range []string{"", "v1.2.3", "1.2.3", "v2.0.0-rc.1", "v1.2.3-dirty+meta", "weird version/1"} {
		version = v
		text, sv := buildVersion()
		if !semverRE.MatchString(sv) {
			t.Errorf("version %q: semver %q (text %q) is not a semantic version", v, sv, text)
		}
	}
}
