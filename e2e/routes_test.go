package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// apiBackend is a Go API on its own loopback address: /healthz answers 200, every other
// path "api PATH".
func apiBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", testutil.LoopbackAddr(t, "127.0.0.4"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			fmt.Fprint(w, "ok")
			return
		}
		fmt.Fprint(w, "api "+r.URL.Path)
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return ln.Addr().String()
}

// routesConfig is a routing table after the ALB documentation's examples: a fixed
// response, a host-based redirect, host-based and path-based forwarding to an API, and a
// default route to Django. The two pools have their own health checks.
func routesConfig(t *testing.T, django, api string) string {
	cert, key, _ := testutil.CertFiles(t, t.TempDir(), "app.test", "api.app.test", "old.app.test")
	return fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %[1]q, key: %[2]q}]
pools:
  django:
    targets: [%[3]q]
    health_check: {path: /admin/login/, host: app.test, interval: %[5]v, timeout: %[6]v, healthy_threshold: 2}
  api:
    targets: [{addr: %[4]q, weight: 1}]
    balance: least_outstanding_requests
    health_check: {path: /healthz, interval: %[5]v, timeout: %[6]v, healthy_threshold: 2}
routes:
  - {name: lb-status, path: /lb-status, fixed_response: {status: 200, content_type: text/plain, body: "edge ok\n"}}
  - {name: old-site, hosts: [old.app.test], redirect: {host: app.test, status: 301}}
  - {name: api-host, hosts: [api.app.test], pool: api}
  - {name: api-path, path_prefix: /api/, methods: [GET, POST], pool: api}
  - {name: default, pool: django}
log:
  access: true
`, cert, key, django, api, interval, checkTimeout)
}

// Two real apps behind one edge: every request lands in the pool its route names, on
// both data paths, redirects and fixed responses are the edge's, and the metrics and
// /targets say which pool and route.
func TestRoutes_ALBExamplesOnBothPaths(t *testing.T) {
	django := djangoPool(t, 1)[0]
	api := apiBackend(t)
	e := startEdge(t, routesConfig(t, django.Addr, api))
	for pool, addr := range map[string]string{"django": django.Addr, "api": api} {
		deadline := time.Now().Add(10 * time.Second)
		for e.targetsOf(t, pool)[addr].State != "healthy" {
			if time.Now().After(deadline) {
				t.Fatalf("pool %s: target %s not healthy within 10s: %+v", pool, addr, e.targetsOf(t, pool))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	tests := []struct {
		name, method, url string
		wantStatus        int
		wantBody          string // a prefix
		wantLocation      string
	}{
		{"fixed response", "GET", "https://app.test/lb-status", 200, "edge ok\n", ""},
		{"host redirect keeps path and query", "GET", "https://old.app.test/blog/1?x=2", 301, "301 Moved Permanently", "https://app.test/blog/1?x=2"},
		{"API by host", "GET", "https://api.app.test/v1/orders", 200, "api /v1/orders", ""},
		{"API by path", "GET", "https://app.test/api/users", 200, "api /api/users", ""},
		{"API path with another method goes to the default", "DELETE", "https://app.test/api/users", 404, "", ""},
		// Routed by its normal form, /whoami: to Django (whose 404 page says it does not
		// normalise it), not to the API.
		{"dot segments do not escape the API route", "GET", "https://app.test/api/%2e%2e/whoami", 404, "\n<!doctype html>", ""},
		{"default to Django", "GET", "https://app.test/whoami", 200, "{", ""},
	}
	for proto, c := range clientsFor(t, e) {
		noRedirect := *c
		noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		for _, tt := range tests {
			t.Run(proto+"/"+tt.name, func(t *testing.T) {
				req, _ := http.NewRequest(tt.method, tt.url, nil)
				resp, err := noRedirect.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tt.wantStatus || !strings.HasPrefix(string(body), tt.wantBody) {
					t.Errorf("%s %s: %d %q; want %d %q...", tt.method, tt.url, resp.StatusCode, body, tt.wantStatus, tt.wantBody)
				}
				if loc := resp.Header.Get("Location"); loc != tt.wantLocation {
					t.Errorf("Location %q; want %q", loc, tt.wantLocation)
				}
			})
		}
	}
	m := e.metrics(t)
	for _, series := range []string{
		`edgeproxy_requests_total{code="200",pool="api",route="api-host",target="` + api + `"}`,
		`edgeproxy_requests_total{code="200",pool="api",route="api-path",target="` + api + `"}`,
		`edgeproxy_requests_total{code="200",pool="django",route="default",target="` + django.Addr + `"}`,
		`edgeproxy_requests_total{code="200",pool="none",route="lb-status",target="none"}`,
		`edgeproxy_requests_total{code="301",pool="none",route="old-site",target="none"}`,
	} {
		if got := counterValue(m, series); got != 2 {
			t.Errorf("%s = %v; want 2 (one request per data path)", series, got)
		}
	}
	if !strings.Contains(e.Output(), "route=api-path pool=api") {
		t.Errorf("access log lacks the route and pool:\n%s", e.Output())
	}
}
