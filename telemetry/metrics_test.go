package telemetry

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// scrape returns the text exposition of m's registry.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.AdminHandler(func(*http.Request) any { return nil }).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// Every per-target series carries the pool it belongs to, so that one address in two
// pools has two series, and forgetting it in one pool keeps the other's.
func TestPoolMetrics_LabelEveryTargetSeriesWithThePool(t *testing.T) {
	m := New()
	api, web := m.Pool("api"), m.Pool("web")
	for _, p := range []*PoolMetrics{api, web} {
		p.TargetHealthy("127.0.0.1:8000", true)
		p.HealthCheck("127.0.0.1:8000", false, "Target.Timeout")
		p.PassiveEjection("127.0.0.1:8000")
	}
	m.Retry("api", "127.0.0.1:8000")
	m.FailOpen("api")
	m.Request(200, "api", "r", "127.0.0.1:8000", 0)

	out := scrape(t, m)
	for _, want := range []string{
		`edgeproxy_target_healthy{pool="api",target="127.0.0.1:8000"} 1`,
		`edgeproxy_target_healthy{pool="web",target="127.0.0.1:8000"} 1`,
		`edgeproxy_health_checks_total{pool="web",reason="Target.Timeout",result="fail",target="127.0.0.1:8000"} 1`,
		`edgeproxy_passive_ejections_total{pool="api",target="127.0.0.1:8000"} 1`,
		`edgeproxy_retries_total{pool="api",target="127.0.0.1:8000"} 1`,
		`edgeproxy_fail_open_total{pool="api"} 1`,
		`edgeproxy_fail_open_total{pool="web"} 0`, // created at zero by Pool
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	m.ForgetTarget("api", "127.0.0.1:8000")
	m.ForgetPool("api")
	out = scrape(t, m)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `pool="api"`) {
			t.Errorf("series of the forgotten pool remain: %s", line)
		}
	}
	if !strings.Contains(out, `edgeproxy_target_healthy{pool="web",target="127.0.0.1:8000"} 1`) {
		t.Error("forgetting the target in pool api removed pool web's series too")
	}
}
