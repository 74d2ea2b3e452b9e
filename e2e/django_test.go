package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// Health-check timing used by these tests: interval 200ms, timeout 150ms, healthy after
// 3 passes, unhealthy after 2 failures.
const (
	interval           = 200 * time.Millisecond
	checkTimeout       = 150 * time.Millisecond
	healthyThreshold   = 3
	unhealthyThreshold = 2
	// slack covers the ±5% jitter, the first-check delay and a loaded 2-core CI machine.
	slack = 500 * time.Millisecond
)

// djangoPool starts n real Django instances (gunicorn) on 127.0.0.2, .3, … with
// ALLOWED_HOSTS = app.test, as a real site sets it.
func djangoPool(t *testing.T, n int) []*testutil.Django {
	t.Helper()
	testutil.RequireDjango(t)
	var out []*testutil.Django
	for i := 0; i < n; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i+2)
		out = append(out, testutil.StartDjango(t, testutil.LoopbackAddr(t, ip), testutil.DjangoOptions{
			AllowedHosts: []string{"app.test"}, Instance: fmt.Sprintf("django-%d", i+1),
		}))
	}
	return out
}

func addrsOf(ds []*testutil.Django) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Addr)
	}
	return out
}

// edgeConfig is an edge with a static certificate for app.test in front of targets.
func edgeConfig(t *testing.T, targets []string, healthHost string, extra string) (string, *http.Client) {
	t.Helper()
	cert, key, _ := testutil.CertFiles(t, t.TempDir(), "app.test")
	hostLine := ""
	if healthHost != "" {
		hostLine = "    host: " + healthHost + "\n"
	}
	return fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: %s
  health_check:
    path: /admin/login/
%s    interval: %v
    timeout: %v
    healthy_threshold: %d
    unhealthy_threshold: %d
limits:
  shutdown_timeout: 10s
%s`, cert, key, quote(targets...), hostLine, interval, checkTimeout, healthyThreshold, unhealthyThreshold, extra), nil
}

func clientFor(t *testing.T, e *edgeProc) *http.Client {
	t.Helper()
	// Re-read the certificate the edge was configured with, to trust exactly it.
	roots := certPoolFromConfig(t, e.ConfigFile)
	return httpsClient(roots, e.HTTPS)
}

// clientsFor returns an HTTP/1.1 client (the fast path) and an HTTP/2 one (net/http).
func clientsFor(t *testing.T, e *edgeProc) map[string]*http.Client {
	t.Helper()
	roots := certPoolFromConfig(t, e.ConfigFile)
	return map[string]*http.Client{"HTTP/1.1": httpsClient(roots, e.HTTPS), "HTTP/2.0": h2Client(roots, e.HTTPS)}
}

type whoami struct {
	Instance        string `json:"instance"`
	IsSecure        bool   `json:"is_secure"`
	Host            string `json:"host"`
	RemoteAddr      string `json:"remote_addr"`
	XForwardedFor   string `json:"x_forwarded_for"`
	XForwardedProto string `json:"x_forwarded_proto"`
	Client          string `json:"client"`
}

func getWhoami(t *testing.T, c *http.Client, header http.Header) (whoami, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://app.test/whoami", nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET /whoami: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /whoami: status %d: %s", resp.StatusCode, body)
	}
	var w whoami
	if err := json.Unmarshal(body, &w); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
	return w, resp.Proto
}

// Requests spread evenly over real Django instances, which see https, the site's Host and
// the real client address, even when the client tries to spoof it.
func TestDjango_RoundRobinAndForwarding(t *testing.T) {
	pool := djangoPool(t, 3)
	cfg, _ := edgeConfig(t, addrsOf(pool), "app.test", "")
	e := startEdge(t, cfg)
	for _, d := range pool {
		e.waitState(t, d.Addr, "healthy", 5*time.Second)
	}
	for wantProto, c := range clientsFor(t, e) {
		const requests = 300
		counts := map[string]int{}
		spoof := http.Header{"X-Forwarded-For": {"6.6.6.6"}, "X-Forwarded-Proto": {"http"}, "Forwarded": {"for=6.6.6.6"}, "X_Forwarded_For": {"7.7.7.7"}}
		for i := 0; i < requests; i++ {
			w, proto := getWhoami(t, c, spoof)
			counts[w.Instance]++
			if i == 0 {
				if !w.IsSecure || w.Host != "app.test" || w.Client != "127.0.0.1" || w.XForwardedFor != "127.0.0.1" {
					t.Errorf("%s: Django saw %+v; want is_secure, host app.test, client 127.0.0.1 (not the spoofed 6.6.6.6)", wantProto, w)
				}
				if proto != wantProto {
					t.Errorf("client protocol %s; want %s via ALPN", proto, wantProto)
				}
			}
		}
		t.Logf("%s: spread of %d requests over 3 Django instances: %v", wantProto, requests, counts)
		for i := 1; i <= 3; i++ {
			if n := counts[fmt.Sprintf("django-%d", i)]; n < requests/3-1 || n > requests/3+1 {
				t.Errorf("%s: django-%d got %d requests; want %d ± 1 (spread %v)", wantProto, i, n, requests/3, counts)
			}
		}
	}
	m := e.metrics(t)
	for _, d := range pool {
		for _, want := range []string{
			fmt.Sprintf(`edgeproxy_requests_total{code="200",pool="pool",route="default",target=%q}`, d.Addr),
			fmt.Sprintf(`edgeproxy_target_healthy{pool="pool",target=%q} 1`, d.Addr),
			fmt.Sprintf(`edgeproxy_health_checks_total{pool="pool",reason="none",result="pass",target=%q}`, d.Addr),
		} {
			if !strings.Contains(m, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	}
	if !strings.Contains(m, `edgeproxy_certificate_expiry_timestamp_seconds{domain="app.test"}`) {
		t.Error("/metrics lacks the static certificate's expiry")
	}
	if !strings.Contains(m, "process_cpu_seconds_total") || !strings.Contains(m, "go_goroutines") {
		t.Error("/metrics lacks the process and Go collectors")
	}
}

// The classic ALB-and-Django trap: checks that send the target address as Host get 400
// from ALLOWED_HOSTS, every target is unhealthy and the edge fails open; the log says what
// to set. With health_check.host set, the same targets are healthy.
func TestDjango_AllowedHostsTrapAndFix(t *testing.T) {
	pool := djangoPool(t, 2)
	cfg, _ := edgeConfig(t, addrsOf(pool), "", "")
	e := startEdge(t, cfg)
	for _, d := range pool {
		e.waitState(t, d.Addr, "unhealthy", 5*time.Second)
		s := e.targets(t)[d.Addr]
		if s.LastStatus != 400 || s.Reason != "Target.ResponseCodeMismatch" {
			t.Errorf("target %s: status %d reason %s; want 400 Target.ResponseCodeMismatch", d.Addr, s.LastStatus, s.Reason)
		}
		want := fmt.Sprintf("target %s unhealthy: status 400 not in 200-399", d.Addr)
		if !e.WaitForOutput(want, time.Second) {
			t.Errorf("log lacks %q", want)
		}
	}
	// The fail-open notice follows the last transition, which /targets may show first.
	if !strings.Contains(e.Output(), "ALLOWED_HOSTS") || !e.WaitForOutput("failing open", time.Second) {
		t.Errorf("log lacks the ALLOWED_HOSTS hint or the fail-open notice:\n%s", e.Output())
	}
	// Fail-open: the unhealthy targets still serve the site's real requests.
	c := clientFor(t, e)
	if w, _ := getWhoami(t, c, nil); w.Instance == "" {
		t.Error("fail-open request not served")
	}
	if !regexp.MustCompile(`edgeproxy_fail_open_total\{pool="pool"\} [1-9]`).MatchString(e.metrics(t)) {
		t.Error("edgeproxy_fail_open_total not counted")
	}
	if !strings.Contains(e.metrics(t), `reason="Target.ResponseCodeMismatch",result="fail"`) {
		t.Error("health_checks_total lacks the ResponseCodeMismatch failures")
	}

	fixedCfg, _ := edgeConfig(t, addrsOf(pool), "app.test", "")
	fixed := startEdge(t, fixedCfg)
	for _, d := range pool {
		fixed.waitState(t, d.Addr, "healthy", 5*time.Second)
	}
}

// A killed backend leaves within interval × unhealthy_threshold + timeout, and a restarted
// one is back after healthy_threshold passes; no request fails meanwhile that a healthy
// target could have served, beyond those in flight to the dead one before detection.
func TestDjango_KilledBackendLeavesAndReturns(t *testing.T) {
	pool := djangoPool(t, 3)
	cfg, _ := edgeConfig(t, addrsOf(pool), "app.test", "")
	e := startEdge(t, cfg)
	for _, d := range pool {
		e.waitState(t, d.Addr, "healthy", 5*time.Second)
	}
	victim := pool[1]
	victim.Kill()
	leave := e.waitState(t, victim.Addr, "unhealthy", 5*time.Second)
	bound := interval*unhealthyThreshold + checkTimeout + slack
	t.Logf("killed target marked unhealthy after %v (bound %v)", leave, bound)
	if leave > bound {
		t.Errorf("unhealthy after %v; want within interval×unhealthy_threshold+timeout+slack = %v", leave, bound)
	}
	// Once detected, every request goes to the two live instances.
	c := clientFor(t, e)
	for i := 0; i < 30; i++ {
		if w, _ := getWhoami(t, c, nil); w.Instance == "django-2" {
			t.Fatal("request reached the killed instance")
		}
	}
	victim.Start()
	back := e.waitState(t, victim.Addr, "healthy", 5*time.Second)
	bound = interval*healthyThreshold + checkTimeout + slack
	t.Logf("restarted target healthy again after %v (bound %v)", back, bound)
	if back > bound {
		t.Errorf("healthy after %v; want within interval×healthy_threshold+timeout+slack = %v", back, bound)
	}
	if !strings.Contains(e.Output(), fmt.Sprintf("target %s healthy: status 200 (%d in a row)", victim.Addr, healthyThreshold)) {
		t.Errorf("log lacks the healthy transition with its count:\n%s", e.Output())
	}
}

// With every backend down the edge fails open (logged, counted) and answers 502 with a short
// body that gives nothing away.
func TestDjango_AllBackendsDown(t *testing.T) {
	pool := djangoPool(t, 2)
	cfg, _ := edgeConfig(t, addrsOf(pool), "app.test", "")
	e := startEdge(t, cfg)
	for _, d := range pool {
		e.waitState(t, d.Addr, "healthy", 5*time.Second)
	}
	for _, d := range pool {
		d.Kill()
	}
	for _, d := range pool {
		e.waitState(t, d.Addr, "unhealthy", 5*time.Second)
		if r := e.targets(t)[d.Addr].Reason; r != "Target.FailedHealthChecks" {
			t.Errorf("reason %q; want Target.FailedHealthChecks for a refused connection", r)
		}
	}
	c := clientFor(t, e)
	resp, err := c.Get("https://app.test/whoami")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || string(body) != "502 Bad Gateway\n" {
		t.Errorf("got %d %q; want 502 \"502 Bad Gateway\\n\"", resp.StatusCode, body)
	}
	if !e.WaitForOutput("no healthy target: failing open", time.Second) {
		t.Error("log lacks the fail-open notice")
	}
	if !regexp.MustCompile(`edgeproxy_fail_open_total\{pool="pool"\} [1-9]`).MatchString(e.metrics(t)) {
		t.Error("edgeproxy_fail_open_total not counted")
	}
}

// SIGTERM lets a slow request in flight finish, then the edge exits 0.
func TestDjango_GracefulShutdownCompletesSlowRequest(t *testing.T) {
	pool := djangoPool(t, 1)
	cfg, _ := edgeConfig(t, addrsOf(pool), "app.test", "")
	e := startEdge(t, cfg)
	e.waitState(t, pool[0].Addr, "healthy", 5*time.Second)
	c := clientFor(t, e)

	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.Get("https://app.test/slow?ms=1500")
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{status: resp.StatusCode, body: string(b)}
	}()
	time.Sleep(300 * time.Millisecond) // the request is in flight at Django
	if err := e.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.status != 200 || !strings.Contains(r.body, "slow done") {
		t.Errorf("slow request: %d %q %v; want 200 slow done", r.status, r.body, r.err)
	}
	code, err := e.Wait(15 * time.Second)
	if err != nil || code != 0 {
		t.Errorf("edge exit %d, %v; want 0\n%s", code, err, e.Output())
	}
}

// The plain-HTTP listener redirects to https with 308, keeping host, path and query.
func TestHTTPListener_RedirectsToHTTPS(t *testing.T) {
	pool := djangoPool(t, 1)
	cfg, _ := edgeConfig(t, addrsOf(pool), "app.test", "")
	cfg = strings.Replace(cfg, "listen:\n", "listen:\n  http: \"{{HTTP}}\"\n", 1)
	e := startEdge(t, cfg)
	req, _ := http.NewRequest("GET", "http://"+e.HTTP+"/admin/login/?next=/admin/", nil)
	req.Host = "app.test"
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	_, port, _ := strings.Cut(e.HTTPS, ":")
	want := "https://app.test:" + port + "/admin/login/?next=/admin/"
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
		t.Errorf("got %d %q; want 308 %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
}

// Many clients at once over keep-alive and h2: every request answered 200.
func TestDjango_ConcurrentClients(t *testing.T) {
	pool := djangoPool(t, 2)
	cfg, _ := edgeConfig(t, addrsOf(pool), "app.test", "log:\n  access: true\n")
	e := startEdge(t, cfg)
	for _, d := range pool {
		e.waitState(t, d.Addr, "healthy", 5*time.Second)
	}
	c := clientFor(t, e)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failures := 0
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				resp, err := c.Get("https://app.test/whoami")
				ok := err == nil && resp.StatusCode == 200
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if !ok {
					mu.Lock()
					failures++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if failures > 0 {
		t.Errorf("%d of 200 requests failed", failures)
	}
	// log.access: one line per request. A line is written once the
	// handler returns, which may be just after the client has read the
	// whole response, so the last few may arrive a moment later.
	deadline := time.Now().Add(5 * time.Second)
	n := strings.Count(e.Output(), "msg=access")
	for n < 200 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n = strings.Count(e.Output(), "msg=access")
	}
	if n < 200 {
		t.Errorf("%d access log lines 5s after the last response; want at least 200", n)
	}
}
