package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"edgeproxy/internal/testutil"
)

const (
	rulesFile      = "../deploy/prometheus/edgeproxy-rules.yml"
	rulesTestFile  = "../deploy/prometheus/edgeproxy-rules.test.yml"
	alertsFile     = "../deploy/prometheus/edgeproxy-alerts.yml"
	alertsTestFile = "../deploy/prometheus/edgeproxy-alerts.test.yml"
	dashboardFile  = "../deploy/grafana/edgeproxy.json"
)

// The recording rules, the alerting rules and the Grafana dashboard in deploy/ answer
// from a real Prometheus scraping a real edge under load, with node_exporter beside it:
// promtool accepts the rules and passes their unit tests, every rule and every panel
// query returns data, every alert evaluates without error on series the edge exports,
// and the shares and per-request figures are in range. A rule that names a metric the
// edge does not export, a join that never matches or a query that does not parse fails
// here, not on an operator's dashboard or pager.
func TestMonitoring_RulesAndDashboardAnswerFromARealPrometheus(t *testing.T) {
	promtool := testutil.RequireTool(t, "promtool")
	prometheus := testutil.RequireTool(t, "prometheus")
	nodeExporter := testutil.RequireTool(t, "prometheus-node-exporter")
	if out, err := exec.Command(promtool, "check", "rules", rulesFile, alertsFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	unit := exec.Command(promtool, "test", "rules", filepath.Base(rulesTestFile), filepath.Base(alertsTestFile))
	unit.Dir = filepath.Dir(rulesTestFile)
	if out, err := unit.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	rules := recordingRules(t, rulesFile)
	alerts := recordingRules(t, alertsFile)

	e, c := limitsEdge(t, "", "  max_header_bytes: 65536\n")
	node := testutil.LoopbackAddr(t, "127.0.0.1")
	testutil.StartProc(t, nodeExporter, "--web.listen-address="+node,
		"--collector.disable-defaults", "--collector.cpu")
	prom := startPrometheus(t, prometheus, e.Metrics, node)
	stopLoad := monitoringLoad(t, c)
	defer stopLoad()

	queries := map[string]string{}
	for _, r := range rules {
		queries["rule "+r.Record] = r.Record
	}
	// Every series an alert reads exists (alerts on absent series never fire).
	seriesName := regexp.MustCompile(`\b(edgeproxy_[a-z_]+|edgeproxy:[a-z_:]+|instance:[a-z0-9_:]+)\b`)
	for _, r := range alerts {
		for _, name := range seriesName.FindAllString(r.Expr, -1) {
			queries["series "+name] = "count(" + name + ")"
		}
	}
	queries["certificate lifetime"] = "edgeproxy_certificate_expiry_timestamp_seconds - edgeproxy_certificate_not_before_timestamp_seconds"
	for title, expr := range dashboardQueries(t) {
		// Grafana's variables: all instances, and a rate window of a few scrapes.
		expr = strings.NewReplacer(`$instance`, `.*`, `$__rate_interval`, `10s`).Replace(expr)
		queries["panel "+title] = expr
	}
	prom.waitForAnswers(t, queries, 60*time.Second)
	// The first answers may come from a scrape or two before the load began; the figures
	// are read once the rules' 10 s windows hold nothing but the load.
	time.Sleep(11 * time.Second)
	values := prom.waitForAnswers(t, queries, 10*time.Second)

	inRange := func(name string, lo, hi float64) {
		t.Helper()
		if _, ok := values[name]; !ok {
			t.Fatalf("no query %q", name)
		}
		t.Logf("%s = %v", name, values[name])
		for _, v := range values[name] {
			if !(v > lo && v <= hi) {
				t.Errorf("%s = %g; want in (%g, %g]", name, v, lo, hi)
			}
		}
	}
	inRange("rule instance:edgeproxy_requests:rate5m", 5, 1000) // 3 requests every 20 ms at most
	inRange("rule instance:edgeproxy_tls_cpu_share:ratio_rate5m", 0, 1)
	inRange("rule instance:edgeproxy_tls_cpu_seconds_per_request:rate5m", 0, 0.01)
	inRange("rule instance:edgeproxy_tls_handshake_cpu_seconds:mean5m", 1e-6, 0.1)
	inRange("rule instance:edgeproxy_tls_resumed:ratio_rate5m", 0, 1) // the load resumes some
	inRange("rule instance:edgeproxy_tls_cpu_machine_share:ratio_rate5m", 0, 1)
	inRange("rule instance:edgeproxy_tls_record_cpu_seconds_per_byte:rate5m", 0, 1e-6)
	inRange("panel Share of CPU that is TLS", 0, 1)
	inRange("certificate lifetime", 3600, 400*86400)
	prom.checkAlertRules(t, alerts)

	// The dashboard's instance variable lists the edge.
	var labels struct {
		Data []string `json:"data"`
	}
	prom.get(t, "/api/v1/label/instance/values?match[]=edgeproxy_tls_cpu_seconds_total", &labels)
	if len(labels.Data) != 1 || labels.Data[0] != e.Metrics {
		t.Errorf("instance values %v; want [%s]", labels.Data, e.Metrics)
	}
}

// recordingRule is one rule of the rules file.
type recordingRule struct {
	Record string `yaml:"record"`
	Alert  string `yaml:"alert"`
	Expr   string `yaml:"expr"`
}

// recordingRules reads the rules of every group of file (recording or alerting: Record
// or Alert is set).
func recordingRules(t *testing.T, file string) []recordingRule {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []recordingRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var rules []recordingRule
	for _, g := range doc.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("no rules in %s", file)
	}
	return rules
}

// dashboardQueries returns the dashboard's panel queries by panel title (and query
// number, when a panel has more than one).
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string                  `json:"title"`
		Targets []struct{ Expr string } `json:"targets"`
		Panels  []json.RawMessage       `json:"panels"`
	}
	var dash struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	queries := map[string]string{}
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("%s: %v", dashboardFile, err)
			}
			walk(p.Panels)
			for i, target := range p.Targets {
				queries[fmt.Sprintf("%s #%d", p.Title, i+1)] = target.Expr
			}
		}
	}
	walk(dash.Panels)
	if len(queries) == 0 {
		t.Fatalf("no panel queries in %s", dashboardFile)
	}
	// The first query of a one-query panel goes by its title alone.
	for name := range queries {
		if title, ok := strings.CutSuffix(name, " #1"); ok && queries[title+" #2"] == "" {
			queries[title] = queries[name]
			delete(queries, name)
		}
	}
	return queries
}

// promProc is a Prometheus server scraping one edge and a node_exporter every second,
// with the rules file evaluated every second.
type promProc struct {
	*testutil.Proc
	addr string
}

func startPrometheus(t *testing.T, bin, metricsAddr, nodeAddr string) *promProc {
	t.Helper()
	dir := t.TempDir()
	rules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	// The shipped group evaluates every 30 s over 5-minute windows; a test waits for
	// seconds. (rate over a window longer than the series' life divides by the whole
	// window: the absolute figures would read low for 5 minutes.)
	fast := strings.NewReplacer("interval: 30s", "interval: 1s", "[5m]", "[10s]").Replace(string(rules))
	if !strings.Contains(fast, "interval: 1s") || strings.Contains(fast, "[5m]") || !strings.Contains(fast, "[10s]") {
		t.Fatalf("%s: no `interval: 30s` or no [5m] window to shorten", rulesFile)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), []byte(fast), 0o600); err != nil {
		t.Fatal(err)
	}
	// The alerts as shipped: their windows and `for:` are longer than a test, but they
	// evaluate every second on what the edge exports.
	alerts, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), alerts, 0o600); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [rules.yml, alerts.yml]
scrape_configs:
  - job_name: edgeproxy
    static_configs: [{targets: [%q]}]
  - job_name: node
    static_configs: [{targets: [%q]}]
`, metricsAddr, nodeAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &promProc{addr: testutil.LoopbackAddr(t, "127.0.0.1")}
	p.Proc = testutil.StartProc(t, bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr,
		"--log.level=warn")
	testutil.WaitHTTP(t, "http://"+p.addr+"/-/ready", nil, http.StatusOK, 30*time.Second)
	return p
}

// checkAlertRules checks that Prometheus has loaded every alert of want and evaluated
// each without error.
func (p *promProc) checkAlertRules(t *testing.T, want []recordingRule) {
	t.Helper()
	var answer struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	p.get(t, "/api/v1/rules?type=alert", &answer)
	health := map[string]string{}
	for _, g := range answer.Data.Groups {
		for _, r := range g.Rules {
			health[r.Name] = r.Health + " " + r.LastError
		}
	}
	for _, r := range want {
		if r.Alert == "" {
			continue
		}
		if h, ok := health[r.Alert]; !ok || strings.TrimSpace(h) != "ok" {
			t.Errorf("alert %s: loaded %v, health %q; want ok", r.Alert, ok, h)
		}
	}
}

// get decodes the JSON answer to an API path into v.
func (p *promProc) get(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, body)
	}
}

// query runs an instant query and returns its sample values; a query Prometheus refuses
// fails the test.
func (p *promProc) query(t *testing.T, expr string) []float64 {
	t.Helper()
	var answer struct {
		Status string `json:"status"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	p.get(t, "/api/v1/query?query="+url.QueryEscape(expr), &answer)
	if answer.Status != "success" || answer.Data.ResultType != "vector" {
		t.Fatalf("query %q: status %q, result type %q", expr, answer.Status, answer.Data.ResultType)
	}
	var values []float64
	for _, r := range answer.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("query %q: value %q: %v", expr, s, err)
		}
		values = append(values, v)
	}
	return values
}

// waitForAnswers queries each of queries until every one returns samples, none NaN or
// infinite, and returns the last values by name.
func (p *promProc) waitForAnswers(t *testing.T, queries map[string]string, timeout time.Duration) map[string][]float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		values := map[string][]float64{}
		var waiting []string
		for name, expr := range queries {
			vs := p.query(t, expr)
			ok := len(vs) > 0
			for _, v := range vs {
				ok = ok && !math.IsNaN(v) && !math.IsInf(v, 0)
			}
			if !ok {
				waiting = append(waiting, fmt.Sprintf("%s: %s = %v", name, expr, vs))
			}
			values[name] = vs
		}
		if len(waiting) == 0 {
			return values
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer after %v to:\n%s", timeout, strings.Join(waiting, "\n"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// monitoringLoad sends requests through the edge until stopped (steadyLoad's bound): a
// request every 20 ms on each of a new connection with a full handshake, one that
// resumes a session, and a keep-alive connection. Stopping it fails the test if any
// request failed.
func monitoringLoad(t *testing.T, keepAlive *http.Client) (stop func()) {
	newConn := func(sessions tls.ClientSessionCache) *http.Client {
		tr := keepAlive.Transport.(*http.Transport).Clone()
		tr.DisableKeepAlives = true
		tr.TLSClientConfig.ClientSessionCache = sessions
		return &http.Client{Transport: tr}
	}
	var stats []*loadStats
	var stops []func()
	for _, c := range []*http.Client{newConn(nil), newConn(tls.NewLRUClientSessionCache(4)), keepAlive} {
		st, stop := steadyLoad(t, c, "https://app.test/", 1, 20*time.Millisecond, nil)
		stats, stops = append(stats, st), append(stops, stop)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for i, stop := range stops {
				stop()
				if n := stats[i].failed.Load(); n > 0 {
					t.Errorf("load: %d of %d requests failed", n, stats[i].sent.Load())
				}
			}
		})
	}
}
