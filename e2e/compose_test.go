//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/testenv"
)

// composeBudget bounds TestComposeDemo once its cached inputs are there:
// the engine, the images, the build, the demo's run and its removal.
const composeBudget = 5 * time.Minute

// gatewayUsers is how many users the demo's gateway simulates ("--users" in
// docker-compose.yml), with ids user-0 to user-999.
const gatewayUsers = 1000

// TestComposeDemo runs the compose demo for real: a private Docker engine
// (dockerd with the vfs driver, no bridge, everything in a temporary
// directory), stand-ins for the images it would pull, presenced's image
// built by docker-compose from the Dockerfile with the classic builder, and
// docker-compose.yml brought up on the host network (e2e/compose.hostnet.yml,
// loopback ports only). It checks what a user would see: the three replicas
// ready, the gateway's users online (events over NATS), `presenced check`
// passing in a replica's container, the users expiring once the gateway is
// killed, and `docker-compose down -v` leaving no container, volume or
// network behind. It needs root, dockerd, docker-compose and debootstrap
// (scripts/test installs Debian's docker.io, docker-compose and debootstrap).
func TestComposeDemo(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatalf("docker-compose not found: install it with `apt-get install -y docker-compose` (%v)", err)
	}

	// The inputs kept between runs; made on a cold cache only.
	prep, cancelPrep := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancelPrep()
	began := time.Now()
	cache := cacheDir(t)
	rootfs := debianRootfs(t, prep, cache)
	natsBin, natsVersion := natsServer(t, prep, cache, root)
	goCache := goBuildCache(t, prep, cache, root)
	t.Logf("cached inputs (%s) ready in %s", cache, time.Since(began).Round(time.Second))

	began = time.Now()
	ctx, cancel := context.WithTimeoutCause(context.Background(), composeBudget,
		fmt.Errorf("over the test's bound of %s for the engine, images, build and run", composeBudget))
	defer cancel()
	phase := time.Now()
	step := func(what string) {
		t.Logf("%s: %s", what, time.Since(phase).Round(100*time.Millisecond))
		phase = time.Now()
	}

	interfaces := netInterfaces(t)
	e := startEngine(t, ctx)
	t.Logf("versions: %s; engine %s; docker CLI %s (%s); docker-compose %s", firstLine(e.run(t, ctx, nil, e.env(), "", e.dockerd, "--version")),
		strings.TrimSpace(e.docker(t, ctx, nil, "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})")),
		strings.TrimSpace(e.docker(t, ctx, nil, "version", "--format", "{{.Client.Version}}")), e.cli,
		strings.TrimSpace(e.run(t, ctx, nil, e.env(), "", compose, "version", "--short")))
	step("engine started")

	natsImage, goImage := standInImages(t, ctx, e, rootfs, natsBin, natsVersion, goCache)
	step("stand-in images made")

	ports := map[string]int{}
	for _, name := range []string{"REDIS", "NATS", "NATS_HTTP", "PRESENCED_1", "PRESENCED_2", "PRESENCED_3"} {
		ports[name] = testenv.FreePort(t)
	}
	env := e.env(
		"DOCKER_BUILDKIT=0", // the classic builder: what docker-compose 1.29 uses without buildx
		"REDIS_IMAGE="+redisImage, "NATS_IMAGE="+natsImage,
		"GO_IMAGE="+goImage, "RUNTIME_IMAGE="+runtimeImage,
	)
	for name, p := range ports {
		env = append(env, "HOSTNET_"+name+"_PORT="+strconv.Itoa(p))
	}
	const project = "presenced-e2e"
	composeArgs := []string{"-p", project, "-f", "docker-compose.yml", "-f", "e2e/compose.hostnet.yml"}
	dc := func(args ...string) string {
		t.Helper()
		return e.run(t, ctx, nil, env, root, compose, append(slices.Clone(composeArgs), args...)...)
	}
	removed := false
	t.Cleanup(func() { // before the engine's cleanup (cleanups run last first)
		c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			out, _ := e.try(c, nil, env, root, compose, append(slices.Clone(composeArgs), "logs", "--no-color", "--tail", "30")...)
			t.Logf("docker-compose logs:\n%s\ndockerd log:\n%s", tail(out, 200), tail(e.log.String(), 30))
		}
		if !removed {
			if out, err := e.try(c, nil, env, root, compose, append(slices.Clone(composeArgs), "down", "-v", "-t", "5")...); err != nil {
				t.Errorf("docker-compose down -v: %v\n%s", err, tail(out, 20))
			}
		}
	})

	// One build: the four services that run presenced's image share it (the
	// same image name and build section); building each would only hit the
	// cache, at the cost of a copy of the build stage per service on vfs.
	build := e.runStamped(t, ctx, env, root, compose, append(slices.Clone(composeArgs), "build", "presenced-1")...)
	var stepLines []string
	for _, l := range strings.Split(build, "\n") {
		if strings.Contains(l, "] Step ") || strings.Contains(l, "] Building ") {
			stepLines = append(stepLines, l)
		}
	}
	t.Logf("docker-compose build, each step with the time it started:\n%s", strings.Join(stepLines, "\n"))
	step("docker-compose build")

	// Everything but the gateway first, so that the test hears its users
	// come online.
	dc("up", "-d", "--no-build", "redis", "nats", "presenced-1", "presenced-2", "presenced-3")
	for _, name := range []string{"PRESENCED_1", "PRESENCED_2", "PRESENCED_3"} {
		url := fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[name])
		testenv.Eventually(t, 60*time.Second, func() bool {
			code, _, err := get(url)
			return err == nil && code == 200
		}, "%s is not 200", url)
	}
	step("replicas ready")

	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", ports["NATS"]), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subjects := contract.Subjects{Prefix: "presence"}
	online := testenv.Collect(t, nc, subjects.Online())
	offline := testenv.Collect(t, nc, subjects.Offline())

	dc("up", "-d", "--no-build") // the rest: the gateway
	waitForUsers(t, online, "online", "heartbeat")
	step("the gateway's users online")

	if out := dc("exec", "-T", "presenced-1", "/presenced", "check"); !strings.Contains(out, "presenced check: 0 failed") {
		t.Fatalf("presenced check in presenced-1:\n%s", out)
	}
	// Nothing but the host network and loopback: no network but the
	// engine's two, no new interface on the machine.
	if got := lines(e.docker(t, ctx, nil, "network", "ls", "--format", "{{.Name}}")); !slices.Equal(got, []string{"host", "none"}) {
		t.Fatalf("networks while the demo runs: %v, want host and none only", got)
	}
	if now := netInterfaces(t); !slices.Equal(now, interfaces) {
		t.Fatalf("network interfaces %v while the demo runs, %v before the engine started", now, interfaces)
	}
	if got := lines(e.docker(t, ctx, nil, "volume", "ls", "--format", "{{.Name}}")); !slices.Equal(got, []string{project + "_redis-data"}) {
		t.Fatalf("volumes while the demo runs: %v, want Redis's", got)
	}
	step("presenced check")

	// A gateway that dies says nothing: its lease lapses, and its users go
	// offline (gateway_lost) before their connections would expire.
	gateway := strings.TrimSpace(dc("ps", "-q", "gateway"))
	dc("kill", "gateway")
	waitForUsers(t, offline, "offline", "gateway_lost")
	if state := strings.TrimSpace(e.docker(t, ctx, nil, "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", gateway)); state != "exited 0" {
		t.Fatalf("the killed gateway is %q, want \"exited 0\" (not restarted)", state)
	}
	step("the killed gateway's users offline")

	dc("down", "-v")
	removed = true
	for what, args := range map[string][]string{
		"containers": {"ps", "-a", "--format", "{{.Names}}"},
		"volumes":    {"volume", "ls", "--format", "{{.Name}}"},
	} {
		if left := lines(e.docker(t, ctx, nil, args...)); len(left) > 0 {
			t.Errorf("%s left after docker-compose down -v: %v", what, left)
		}
	}
	if got := lines(e.docker(t, ctx, nil, "network", "ls", "--format", "{{.Name}}")); !slices.Equal(got, []string{"host", "none"}) {
		t.Errorf("networks after docker-compose down -v: %v, want the engine's host and none", got)
	}
	for name, p := range ports {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), time.Second); err == nil {
			c.Close()
			t.Errorf("%s's port %d still accepts connections after docker-compose down -v", name, p)
		}
	}
	step("docker-compose down -v")
	t.Logf("engine, images, build and run: %s (bound %s)", time.Since(began).Round(time.Second), composeBudget)
}

// waitForUsers waits until col holds an event with the given status and
// reason for every one of the gateway's users.
func waitForUsers(t *testing.T, col *testenv.Collector, status, reason string) {
	t.Helper()
	seen := map[string]bool{}
	next := 0
	deadline := time.Now().Add(90 * time.Second)
	for len(seen) < gatewayUsers {
		if time.Now().After(deadline) {
			t.Fatalf("after 90s, %s events (reason %s) for %d of the gateway's %d users (%d messages)", status, reason, len(seen), gatewayUsers, next)
		}
		time.Sleep(100 * time.Millisecond)
		msgs := col.Msgs()
		for _, m := range msgs[next:] {
			var ev struct {
				UserID string `json:"userId"`
				Status string `json:"status"`
				Reason string `json:"reason"`
			}
			if json.Unmarshal(m.Data, &ev) == nil && ev.Status == status && ev.Reason == reason && strings.HasPrefix(ev.UserID, "user-") {
				seen[ev.UserID] = true
			}
		}
		next = len(msgs)
	}
	for i := range gatewayUsers {
		if id := "user-" + strconv.Itoa(i); !seen[id] {
			t.Fatalf("%s events for %d users, but none for %s", status, len(seen), id)
		}
	}
}

// netInterfaces lists the machine's network interfaces with their addresses.
func netInterfaces(t *testing.T) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var l []string
	for _, i := range ifs {
		addrs, _ := i.Addrs()
		l = append(l, fmt.Sprintf("%s%v", i.Name, addrs))
	}
	slices.Sort(l)
	return l
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}
