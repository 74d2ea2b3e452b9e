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
	mu   sync.Mutex
	by   map[string][]answer
	sent int
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
