package e2e

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// switchBackend is a Go test backend on its own loopback address that answers every
// request with its name, /healthz with 200, or 503 while down is set; /slow?ms=N waits
// first. While reset is set, every request but /healthz has its connection reset without
// an answer, as a crashing worker does.
type switchBackend struct {
	Name, Addr  string
	down, reset atomic.Bool
	delay       atomic.Int64 // nanoseconds every request but /healthz waits
}

func newSwitchBackend(t *testing.T, ip, name string) *switchBackend {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	b := &switchBackend{Name: name, Addr: ln.Addr().String()}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if b.down.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		if b.reset.Load() {
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.(*net.TCPConn).SetLinger(0) // RST, not FIN
				conn.Close()
			}
			return
		}
		var ms int
		fmt.Sscanf(r.URL.Query().Get("ms"), "%d", &ms)
		time.Sleep(time.Duration(ms)*time.Millisecond + time.Duration(b.delay.Load()))
		fmt.Fprint(w, name)
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return b
}

// poolsConfig is an edge config for app.test (certificate in certDir) with the pools and
// routes of body; every {{CHECK}} in body becomes a fast health check of /healthz.
func poolsConfig(certDir, body string) string {
	check := fmt.Sprintf("{path: /healthz, interval: %v, timeout: %v, healthy_threshold: %d, unhealthy_threshold: %d}",
		interval, checkTimeout, healthyThreshold, unhealthyThreshold)
	return fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
`, certDir+"/app.test.crt", certDir+"/app.test.key") + strings.ReplaceAll(body, "{{CHECK}}", check)
}

// answers records which backend answered, and when, per URL path.
type answers struct {
	mu sync.Mutex
	by map[string][]answer
}

type answer struct {
	at   time.Time
	name string
}

func (a *answers) record(path string) func([]byte) {
	return func(body []byte) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.by == nil {
			a.by = map[string][]answer{}
		}
		a.by[path] = append(a.by[path], answer{time.Now(), string(body)})
	}
}

// count returns how many answers to path each backend gave between from and to.
func (a *answers) count(path string, from, to time.Time) map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := map[string]int{}
	for _, x := range a.by[path] {
		if !x.at.Before(from) && x.at.Before(to) {
			n[x.name]++
		}
	}
	return n
}

// waitTargetIn polls /targets until addr in pool is in state.
func (e *edgeProc) waitTargetIn(t *testing.T, pool, addr, state string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for e.targetsOf(t, pool)[addr].State != state {
		if time.Now().After(deadline) {
			t.Fatalf("pool %s: target %s not %s within %v: %+v", pool, addr, state, timeout, e.targetsOf(t, pool))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Weights 1:3 split the requests 25%/75%, on both data paths (smooth weighted round
// robin: exact over every cycle of four).
func TestWeighted_OneToThreeSplitsAQuarterAndThreeQuarters(t *testing.T) {
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	light, heavy := newSwitchBackend(t, "127.0.0.2", "light"), newSwitchBackend(t, "127.0.0.3", "heavy")
	e := startEdge(t, poolsConfig(dir, fmt.Sprintf(`pools:
  app:
    targets: [{addr: %q, weight: 1}, {addr: %q, weight: 3}]
    balance: weighted
    health_check: {{CHECK}}
`, light.Addr, heavy.Addr)))
	e.waitTargetIn(t, "app", light.Addr, "healthy", 5*time.Second)
	e.waitTargetIn(t, "app", heavy.Addr, "healthy", 5*time.Second)

	const perPath = 200
	n := map[string]int{}
	for _, c := range []*http.Client{httpsClient(roots, e.HTTPS), h2Client(roots, e.HTTPS)} {
		for range perPath {
			resp, err := c.Get("https://app.test/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			n[string(b)]++
		}
	}
	share := float64(n["light"]) / (2 * perPath)
	t.Logf("weights 1:3 over %d requests (HTTP/1.1 and HTTP/2): light %d (%.1f%%), heavy %d (%.1f%%)",
		2*perPath, n["light"], 100*share, n["heavy"], 100*(1-share))
	if math.Abs(share-0.25) > 0.03 || n["light"]+n["heavy"] != 2*perPath {
		t.Errorf("split %v; want 25%% ± 3%% to the weight-1 target", n)
	}
}

// Under concurrent load, least outstanding requests sends a deliberately slow target (100
// ms per request) far fewer requests than round robin's third: it loses the power of two
// choices while its requests pile up. 8 workers, 800 requests, at most 20 s.
func TestLeastOutstanding_SlowTargetGetsFarFewerThanItsRoundRobinShare(t *testing.T) {
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	fast1, fast2 := newSwitchBackend(t, "127.0.0.2", "fast1"), newSwitchBackend(t, "127.0.0.3", "fast2")
	slow := newSwitchBackend(t, "127.0.0.4", "slow")
	slow.delay.Store(int64(100 * time.Millisecond))
	e := startEdge(t, poolsConfig(dir, fmt.Sprintf(`pools:
  app:
    targets: [%q, %q, %q]
    balance: least_outstanding_requests
    health_check: {{CHECK}}
`, fast1.Addr, fast2.Addr, slow.Addr)))
	for _, b := range []*switchBackend{fast1, fast2, slow} {
		e.waitTargetIn(t, "app", b.Addr, "healthy", 5*time.Second)
	}

	var got answers
	stats, stop := steadyLoad(t, httpsClient(roots, e.HTTPS), "https://app.test/", 8, 0, got.record("/"))
	deadline := time.Now().Add(20 * time.Second)
	for stats.sent.Load() < 800 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	n := got.count("/", time.Time{}, time.Now())
	total := n["fast1"] + n["fast2"] + n["slow"]
	share := float64(n["slow"]) / float64(total)
	t.Logf("least outstanding, 8 concurrent workers, %d requests: slow target %d (%.1f%%; round robin's share 33.3%%), fast %d and %d; %d failed",
		total, n["slow"], 100*share, n["fast1"], n["fast2"], stats.failed.Load())
	if stats.failed.Load() != 0 || total < 100 {
		t.Fatalf("%d failed, %d answered; want 0 failed and at least 100 answered", stats.failed.Load(), total)
	}
	if share > 1.0/9 {
		t.Errorf("slow target got %.1f%% of the requests; want under a third of round robin's 33.3%%", 100*share)
	}
}

// A target coming back healthy beside a healthy one, under a steady load, gets a share
// that rises linearly over slow_start.duration_seconds (30 s, the least allowed), from
// the 10% floor to full, and a reload in the middle of the window (a route added) keeps
// the ramp where it was. Measured per fifth of the window: the returning target's
// requests per request of the other (its effective weight) against the linear ramp's
// mean over that fifth. About 35 s; 2 workers, at most 20,000 requests each.
func TestSlowStart_ShareRampsLinearlyAcrossAReload(t *testing.T) {
	const window = 30 * time.Second
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	steady, back := newSwitchBackend(t, "127.0.0.2", "steady"), newSwitchBackend(t, "127.0.0.3", "back")
	back.down.Store(true)
	pools := fmt.Sprintf(`pools:
  app:
    targets: [%q, %q]
    slow_start: {duration_seconds: 30}
    health_check: {{CHECK}}
`, steady.Addr, back.Addr)
	e := startEdge(t, poolsConfig(dir, pools))
	e.waitTargetIn(t, "app", steady.Addr, "healthy", 5*time.Second)
	e.waitTargetIn(t, "app", back.Addr, "unhealthy", 5*time.Second)
	if s := e.targetsOf(t, "app")[steady.Addr]; s.SlowStartUntil != nil {
		t.Errorf("the first healthy target is in slow start until %v; want none", s.SlowStartUntil)
	}

	var got answers
	stats, stop := steadyLoad(t, httpsClient(roots, e.HTTPS), "https://app.test/", 2, 5*time.Millisecond, got.record("/"))
	defer stop()
	back.down.Store(false)
	e.waitTargetIn(t, "app", back.Addr, "healthy", 5*time.Second)
	until := e.targetsOf(t, "app")[back.Addr].SlowStartUntil
	if until == nil {
		t.Fatal("the returning target is not in slow start")
	}
	end := *until
	start := end.Add(-window)

	// The reload, 14 s in: a route added, the pool unchanged.
	time.Sleep(time.Until(start.Add(14 * time.Second)))
	e.rewriteConfig(t, poolsConfig(dir, pools+`routes:
  - {name: lb-status, path: /lb-status, fixed_response: {status: 200}}
  - {name: default, pool: app}
`))
	e.reload(t, "reloaded configuration")
	if u := e.targetsOf(t, "app")[back.Addr].SlowStartUntil; u == nil || !u.Equal(end) {
		t.Errorf("after the reload slow start ends %v; want %v kept", u, end)
	}
	time.Sleep(time.Until(end.Add(3 * time.Second)))
	stop()
	if stats.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed; want 0", stats.failed.Load(), stats.sent.Load())
	}

	// f(x) = 0.1 + 0.9x is the returning target's weight x of the way through; the other's
	// is 1, so its requests per request of the other follow f, and its share f/(1+f).
	const margin = 0.1
	var ratios [5]float64
	var report []string
	for k := range 5 {
		from := start.Add(time.Duration(k) * window / 5)
		n := got.count("/", from, from.Add(window/5))
		ratios[k] = float64(n["back"]) / float64(max(n["steady"], 1))
		wantRatio, wantShare := 0.0, 0.0
		for i := range 100 { // means over the fifth
			f := 0.1 + 0.9*(float64(k)+(float64(i)+0.5)/100)/5
			wantRatio += f / 100
			wantShare += f / (1 + f) / 100
		}
		share := float64(n["back"]) / float64(max(n["back"]+n["steady"], 1))
		report = append(report, fmt.Sprintf("fifth %d: %d/%d requests, share %.3f (linear %.3f), weight %.3f (linear %.3f)",
			k+1, n["back"], n["back"]+n["steady"], share, wantShare, ratios[k], wantRatio))
		if math.Abs(ratios[k]-wantRatio) > margin {
			t.Errorf("fifth %d: weight %.3f; want %.3f ± %.2f", k+1, ratios[k], wantRatio, margin)
		}
		if k > 0 && ratios[k] <= ratios[k-1] {
			t.Errorf("fifth %d: weight %.3f not above the previous fifth's %.3f", k+1, ratios[k], ratios[k-1])
		}
	}
	after := got.count("/", end, end.Add(3*time.Second))
	afterRatio := float64(after["back"]) / float64(max(after["steady"], 1))
	report = append(report, fmt.Sprintf("after the window: %d/%d requests, weight %.3f (full 1)", after["back"], after["back"]+after["steady"], afterRatio))
	t.Logf("slow start over %v, %d requests, reload at 14 s:\n  %s", window, stats.sent.Load(), strings.Join(report, "\n  "))
	if ratios[0] > ratios[4]/2 {
		t.Errorf("first fifth's weight %.3f not well under the last's %.3f", ratios[0], ratios[4])
	}
	if math.Abs(afterRatio-1) > 0.15 {
		t.Errorf("after the window: weight %.3f; want full (1 ± 0.15)", afterRatio)
	}
}

// Two reloads under a steady load on four paths add a pool and its route, remove a pool
// and its route, change a pool (a target added, another policy) and point a route at
// another pool: no request fails, every path follows the table in effect, a request in
// flight to the removed pool finishes (drained within its deregistration delay), and the
// targets that stay keep their health (passes counted on) and their passive ejection. About
// 8 s; 4 workers, at most 20,000 requests each.
func TestReload_RoutesAndPoolsUnderLoadKeepStateAndDrain(t *testing.T) {
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	a1, a2 := newSwitchBackend(t, "127.0.0.2", "a1"), newSwitchBackend(t, "127.0.0.2", "a2")
	b1, b2 := newSwitchBackend(t, "127.0.0.3", "b1"), newSwitchBackend(t, "127.0.0.3", "b2")
	c1, d1 := newSwitchBackend(t, "127.0.0.4", "c1"), newSwitchBackend(t, "127.0.0.5", "d1")
	// Pool app's checks are slow (1 s, 5 passes to end an ejection), so that an ejection
	// outlasts the first reload by seconds.
	app := fmt.Sprintf(`  app:
    targets: [%q, %q]
    passive: {consecutive_failures: 3, ejection_time: 30s}
    health_check: {path: /healthz, interval: 1s, timeout: 500ms, healthy_threshold: 5}
`, a1.Addr, a2.Addr)
	v1 := poolsConfig(dir, "pools:\n"+app+fmt.Sprintf(`  api: {targets: [%q], health_check: {{CHECK}}}
  old: {targets: [%q], deregistration_delay: 5s, health_check: {{CHECK}}}
routes:
  - {name: api, path_prefix: /api/, pool: api}
  - {name: old, path_prefix: /old/, pool: old}
  - {name: default, pool: app}
`, b1.Addr, c1.Addr))
	v2 := poolsConfig(dir, "pools:\n"+app+fmt.Sprintf(`  api: {targets: [%q, %q], balance: least_outstanding_requests, health_check: {{CHECK}}}
  new: {targets: [%q], health_check: {{CHECK}}}
routes:
  - {name: api, path_prefix: /api/, pool: api}
  - {name: new, path_prefix: /new/, pool: new}
  - {name: default, pool: app}
`, b1.Addr, b2.Addr, d1.Addr))
	v3 := poolsConfig(dir, "pools:\n"+app+fmt.Sprintf(`  new: {targets: [%q], health_check: {{CHECK}}}
routes:
  - {name: api, path_prefix: /api/, pool: new}
  - {name: default, pool: app}
`, d1.Addr))
	e := startEdge(t, v1)
	for pool, addrs := range map[string][]string{"app": {a1.Addr, a2.Addr}, "api": {b1.Addr}, "old": {c1.Addr}} {
		for _, a := range addrs {
			e.waitTargetIn(t, pool, a, "healthy", 5*time.Second)
		}
	}
	c := httpsClient(roots, e.HTTPS)

	var got answers
	paths := []string{"/", "/api/x", "/old/x", "/new/x"}
	var stops []func()
	var loads []*loadStats
	for _, p := range paths {
		st, stop := steadyLoad(t, c, "https://app.test"+p, 1, 5*time.Millisecond, got.record(p))
		loads, stops = append(loads, st), append(stops, stop)
	}
	stopAll := func() {
		for _, stop := range stops {
			stop()
		}
	}
	defer stopAll()

	// a2 resets its connections until passive health ejects it (the load's requests to it
	// are retried on a1), then serves again: it stays ejected until 5 checks pass.
	a2.reset.Store(true)
	ejected := fmt.Sprintf(`edgeproxy_passive_ejections_total{pool="app",target=%q}`, a2.Addr)
	deadline := time.Now().Add(5 * time.Second)
	for counterValue(e.metrics(t), ejected) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%s not counted within 5s", ejected)
		}
		time.Sleep(10 * time.Millisecond)
	}
	a2.reset.Store(false)
	before := e.targetsOf(t, "app")
	if before[a2.Addr].EjectedUntil == nil {
		t.Fatalf("/targets shows no ejection of %s: %+v", a2.Addr, before[a2.Addr])
	}

	// A slow request in flight to pool old when the reload removes it.
	drained := make(chan string, 1)
	go func() {
		resp, err := c.Get("https://app.test/old/slow?ms=1500")
		if err != nil {
			drained <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		drained <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	time.Sleep(300 * time.Millisecond)

	e.rewriteConfig(t, v2)
	r1 := time.Now()
	e.reload(t, "reloaded configuration")
	after := e.targetsOf(t, "app")
	if u := after[a2.Addr].EjectedUntil; u == nil || !u.Equal(*before[a2.Addr].EjectedUntil) {
		t.Errorf("after the reload %s ejected until %v; want %v kept", a2.Addr, u, before[a2.Addr].EjectedUntil)
	}
	if s := after[a1.Addr]; s.State != "healthy" || s.ConsecutivePasses < before[a1.Addr].ConsecutivePasses {
		t.Errorf("after the reload %s: %s with %d passes; want healthy, passes counted on from %d", a1.Addr, s.State, s.ConsecutivePasses, before[a1.Addr].ConsecutivePasses)
	}
	if s := e.targetsOf(t, "old")[c1.Addr].State; s != "draining" {
		t.Errorf("removed pool's target %s; want draining while a request runs", s)
	}
	if got := <-drained; got != "200 c1" {
		t.Errorf("request in flight to the removed pool: %q; want 200 c1", got)
	}
	if !e.WaitForOutput("target "+c1.Addr+" removed and drained", 3*time.Second) {
		t.Error("log lacks the removed pool's target drained")
	}
	time.Sleep(time.Until(r1.Add(2 * time.Second)))
	if n := got.count("/", r1, time.Now())["a2"]; n != 0 {
		t.Errorf("the ejected target served %d requests within 2 s of the reload; want 0 (ejection kept)", n)
	}
	e.rewriteConfig(t, v3)
	r2 := time.Now()
	e.reload(t, "reloaded configuration")
	time.Sleep(2 * time.Second)
	stopAll()
	end := time.Now()

	failed, sent := int64(0), int64(0)
	for _, st := range loads {
		failed, sent = failed+st.failed.Load(), sent+st.sent.Load()
	}
	t.Logf("routes and pools reloaded twice under load: %d requests, %d failed", sent, failed)
	if failed != 0 {
		t.Errorf("%d of %d requests failed; want 0", failed, sent)
	}
	// Which backends answered each path in each phase, from slack after its reload.
	want := []struct {
		phase    string
		from, to time.Time
		by       map[string][]string // path -> allowed backends
	}{
		{"before", time.Time{}, r1, map[string][]string{"/api/x": {"b1"}, "/old/x": {"c1"}, "/new/x": {"a1", "a2"}}},
		{"after reload 1", r1.Add(slack), r2, map[string][]string{"/api/x": {"b1", "b2"}, "/old/x": {"a1", "a2"}, "/new/x": {"d1"}}},
		{"after reload 2", r2.Add(slack), end, map[string][]string{"/api/x": {"d1"}, "/old/x": {"a1", "a2"}, "/new/x": {"a1", "a2"}}},
	}
	for _, w := range want {
		for path, allowed := range w.by {
			n := got.count(path, w.from, w.to)
			total := 0
			for name, k := range n {
				total += k
				if !contains(allowed, name) {
					t.Errorf("%s: %s answered by %s %d times; want only %v", w.phase, path, name, k, allowed)
				}
			}
			if total == 0 {
				t.Errorf("%s: no answer to %s", w.phase, path)
			}
		}
	}
	m := e.metrics(t)
	for _, gone := range []string{`pool="old"`, `pool="api"`} {
		for _, line := range strings.Split(m, "\n") {
			if strings.Contains(line, gone) && strings.HasPrefix(line, "edgeproxy_target_healthy") {
				t.Errorf("a removed pool's series remains: %s", line)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
