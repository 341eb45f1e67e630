// Package e2e tests presenced as an operator runs it: the whole local
// topology started by scripts/local-cluster (real redis-server, nats-server,
// three presenced processes and the example gateway), the compose demo run
// in a private Docker engine (compose_test.go), and the deployment files
// (docker-compose.yml, Prometheus, Grafana).
package e2e

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/metrics"
)

// exportedMetrics returns the name of every metric presenced exports.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New()
	zero := func() int64 { return 0 }
	m.Observe(metrics.Sources{NATSReconnects: zero, SubscriberReconnects: zero, SlowConsumerDrops: zero, ExpiryDropped: zero, IntakeBytes: zero, IntakeHighWater: zero})
	names := map[string]bool{}
	// Vectors without children are not gathered: describe the fields.
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok || v.Type().Field(i).Name == "Registry" {
			continue
		}
		ch := make(chan *prometheus.Desc, 16)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			if s := fqName.FindStringSubmatch(d.String()); s != nil {
				names[s[1]] = true
			}
		}
	}
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		names[f.GetName()] = true
	}
	return names
}

// TestGrafanaDashboard checks that deploy/grafana/presenced.json is valid
// JSON that Grafana can load and that every presenced_* metric its queries
// use is one presenced exports.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("../deploy/grafana/presenced.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("presenced.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("presenced.json: uid %q, title %q, %d panels", dash.UID, dash.Title, len(dash.Panels))
	}
	exported := exportedMetrics(t)
	used := map[string]bool{}
	ids := map[int]bool{}
	metricName := regexp.MustCompile(`\bpresenced_[a-z_]+`)
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, n := range metricName.FindAllString(tg.Expr, -1) {
				base := n
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(n, suf); ok && exported[b] {
						base = b
					}
				}
				if !exported[base] {
					t.Errorf("panel %q uses %s, which presenced does not export", p.Title, n)
				}
				used[base] = true
			}
		}
	}
	// The dashboard shows every presenced metric.
	var missing []string
	for n := range exported {
		if strings.HasPrefix(n, "presenced_") && !used[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("no panel shows %v", missing)
	}
}

// TestPrometheusScrapesComposeReplicas checks that the Prometheus
// configuration scrapes exactly the presenced services of docker-compose.yml
// (`docker-compose config`, run by .ci/compose-check, validates the rest).
func TestPrometheusScrapesComposeReplicas(t *testing.T) {
	compose, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	prom, err := os.ReadFile("../deploy/prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	services := regexp.MustCompile(`(?m)^  (presenced-\d+):`).FindAllStringSubmatch(string(compose), -1)
	if len(services) != 3 {
		t.Fatalf("docker-compose.yml has %d presenced-N services, want 3", len(services))
	}
	for _, s := range services {
		if !strings.Contains(string(prom), `"`+s[1]+`:8080"`) {
			t.Errorf("prometheus.yml does not scrape %s:8080", s[1])
		}
	}
	targets := regexp.MustCompile(`targets: \[(.*)\]`).FindStringSubmatch(string(prom))
	if targets == nil || len(strings.Split(targets[1], ",")) != len(services) {
		t.Errorf("prometheus.yml targets %q, want the %d replicas", targets, len(services))
	}
}
