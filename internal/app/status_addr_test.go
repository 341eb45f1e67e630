package app

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/testenv"
)

// get returns the status code and body of GET url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(body)
}

// TestHealthAddrServesNoUserIDsOrPprof: HTTP_ADDR, which may listen on every
// interface for probes and scrapes, serves health and metrics only; the
// status page (user ids) and pprof are on the status address, and
// /debug/pprof/cmdline (the command line, with any secret given as a flag)
// is served nowhere.
func TestHealthAddrServesNoUserIDsOrPprof(t *testing.T) {
	a := startPageApp(t, func(c *config.Config) { c.Pprof = true })
	// Ready once the expiry subscription, started after the app, is up.
	testenv.Eventually(t, 10*time.Second, func() bool {
		code, _ := get(t, a.health+"/readyz")
		return code == http.StatusOK
	}, "HTTP_ADDR never ready")
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, body := get(t, a.health+path); code != http.StatusOK {
			t.Errorf("GET %s on HTTP_ADDR: %d %s", path, code, body)
		}
	}
	for _, path := range []string{"/", "/events", "/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/symbol", "/debug/pprof/goroutine"} {
		if code, _ := get(t, a.health+path); code != http.StatusNotFound {
			t.Errorf("GET %s on HTTP_ADDR: %d, want 404", path, code)
		}
	}
	if code, body := get(t, a.url+"/"); code != http.StatusOK || !strings.Contains(body, "<html") {
		t.Errorf("GET / on STATUS_ADDR: %d %.80q", code, body)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/symbol", "/debug/pprof/goroutine?debug=1"} {
		if code, _ := get(t, a.url+path); code != http.StatusOK {
			t.Errorf("GET %s on STATUS_ADDR with pprof: %d, want 200", path, code)
		}
	}
	for _, path := range []string{"/debug/pprof/cmdline", "/debug/pprof/cmdline/", "/debug/pprof/cmdline?x=1"} {
		if code, body := get(t, a.url+path); code != http.StatusNotFound {
			t.Errorf("GET %s on STATUS_ADDR with pprof: %d %.80q, want 404", path, code, body)
		}
	}
}

// TestStatusAddrDefault: by default the status page and pprof listen
// nowhere (STATUS_ADDR "off"), so no interface serves user ids; the demo's
// and the documented example's listeners are on loopback.
func TestStatusAddrDefault(t *testing.T) {
	if def := config.Default(); def.StatusAddr != "" || def.Pprof {
		t.Fatalf("default STATUS_ADDR %q, pprof %v; want off and false", def.StatusAddr, def.Pprof)
	}
	a := startPageApp(t, func(c *config.Config) { c.StatusAddr = config.Default().StatusAddr })
	if a.url != "" {
		t.Fatalf("the status page listens on %s with the default STATUS_ADDR", a.url)
	}
	if code, _ := get(t, a.health+"/"); code != http.StatusNotFound {
		t.Fatalf("GET / on HTTP_ADDR with the default STATUS_ADDR: %d, want 404", code)
	}

	b := startPageApp(t, func(c *config.Config) { c.StatusAddr = "127.0.0.1:0" })
	host, _, err := net.SplitHostPort(b.page.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		t.Fatalf("status listener on %s, want a loopback address", b.page.Addr())
	}
	if !isLoopback(b.page.Addr()) || isLoopback("0.0.0.0:8081") || isLoopback("[::]:8081") || isLoopback("192.0.2.1:8081") {
		t.Fatal("isLoopback misjudges an address")
	}
}
