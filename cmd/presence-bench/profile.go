package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// profile fetches a CPU profile of replica 0 of im into --pprof-dir, in
// one-second pieces (pprof's unit), until stop closes or --pprof-seconds
// are covered, and merges the pieces; the channel it returns closes when
// the profile is written. So a phase shorter than --pprof-seconds is
// profiled for its own length (rounded up to a second), and no phase is
// stretched to fill a profile. A nil stop profiles --pprof-seconds.
// `go tool pprof -top` of the profile is saved beside it and added to the
// report.
func (b *bench) profile(im impl, label string, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	if len(b.c.workers) == 0 || b.c.workers[0].pprof == "" {
		close(done)
		return done
	}
	addr := b.c.workers[0].pprof
	limit := b.cfg.pprofSeconds
	go func() {
		defer close(done)
		pr := Profile{Impl: im.name, Phase: label}
		defer func() {
			b.profMu.Lock()
			b.rep.Profiles = append(b.rep.Profiles, pr)
			b.profMu.Unlock()
		}()
		if err := os.MkdirAll(b.cfg.pprofDir, 0o755); err != nil {
			pr.Error = err.Error()
			return
		}
		pr.File = filepath.Join(b.cfg.pprofDir, fmt.Sprintf("%s-%s.pprof", im.name, label))
		client := &http.Client{Timeout: 30 * time.Second}
		t0 := time.Now()
		var pieces []string
		defer func() {
			for _, f := range pieces {
				_ = os.Remove(f)
			}
		}()
		// When the phase ended: stop is only looked at between pieces.
		stopAt := make(chan time.Time, 1)
		if stop != nil {
			go func() { <-stop; stopAt <- time.Now() }()
		}
		stopped := false
		for len(pieces) < limit && !stopped {
			f := fmt.Sprintf("%s.%d", pr.File, len(pieces))
			if err := fetchProfile(client, addr, f); err != nil {
				pr.Error = err.Error()
				return
			}
			pieces = append(pieces, f)
			select {
			case at := <-stopAt:
				stopped = true
				pr.PhaseEndedAfter = at.Sub(t0).Seconds()
			default:
			}
		}
		pr.Seconds = len(pieces)
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "go"
		}
		// pprof merges several profiles of one program into one.
		merged, err := exec.Command(goBin, append([]string{"tool", "pprof", "-proto"}, pieces...)...).Output()
		if err == nil {
			err = os.WriteFile(pr.File, merged, 0o644)
		}
		if err != nil {
			pr.Error = fmt.Sprintf("merge %d profiles: %v", len(pieces), err)
			return
		}
		out, err := exec.Command(goBin, "tool", "pprof", "-top", "-nodecount=25", pr.File).CombinedOutput()
		if err != nil {
			pr.Error = fmt.Sprintf("go tool pprof: %v", err)
			return
		}
		pr.Top = string(out)
		_ = os.WriteFile(strings.TrimSuffix(pr.File, ".pprof")+".top.txt", out, 0o644)
	}()
	return done
}

// fetchProfile writes a one-second CPU profile of the process serving
// pprof at addr to file.
func fetchProfile(client *http.Client, addr, file string) error {
	resp, err := client.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=1", addr))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
