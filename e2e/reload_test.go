package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// namedBackend is a Go test backend on its own loopback address that answers with its
// name; /slow?ms=N waits first.
func namedBackend(t *testing.T, ip, name string) *httptest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			var ms int
			fmt.Sscanf(r.URL.Query().Get("ms"), "%d", &ms)
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		fmt.Fprint(w, name)
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func reloadConfig(t *testing.T, certDir string, targets ...string) string {
	cert, key := certDir+"/app.test.crt", certDir+"/app.test.key"
	return fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: %s
  deregistration_delay: 5s
  health_check:
    interval: %v
    timeout: %v
    healthy_threshold: %d
    unhealthy_threshold: %d
`, cert, key, quote(targets...), interval, checkTimeout, healthyThreshold, unhealthyThreshold)
}

// rewriteConfig replaces the running edge's config file, keeping its listener addresses.
func (e *edgeProc) rewriteConfig(t *testing.T, config string) {
	t.Helper()
	config = strings.NewReplacer("{{HTTPS}}", e.HTTPS, "{{HTTP}}", e.HTTP, "{{METRICS}}", e.Metrics).Replace(config)
	if err := os.WriteFile(e.ConfigFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (e *edgeProc) reload(t *testing.T, wantLog string) {
	t.Helper()
	before := strings.Count(e.Output(), wantLog)
	if err := e.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(e.Output(), wantLog) == before {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log after SIGHUP:\n%s", wantLog, e.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Targets change twice through SIGHUP under a steady load, with an invalid config in
// between: no request fails, and each new target set is in effect within one interval
// (plus slack) of the reload.
func TestReload_UnderLoadChangesTargetsWithoutFailures(t *testing.T) {
	b1 := namedBackend(t, "127.0.0.2", "b1")
	b2 := namedBackend(t, "127.0.0.3", "b2")
	b3 := namedBackend(t, "127.0.0.4", "b3")
	addr := func(s *httptest.Server) string { return s.Listener.Addr().String() }
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")

	e := startEdge(t, reloadConfig(t, dir, addr(b1), addr(b2)))
	e.waitState(t, addr(b1), "healthy", 5*time.Second)
	e.waitState(t, addr(b2), "healthy", 5*time.Second)
	c := httpsClient(roots, e.HTTPS)

	var mu sync.Mutex
	served := map[string][]time.Time{} // backend name -> when each answer arrived
	// A few hundred requests a second in all.
	load, stopLoad := steadyLoad(t, c, "https://app.test/", 4, 5*time.Millisecond, func(body []byte) {
		mu.Lock()
		served[string(body)] = append(served[string(body)], time.Now())
		mu.Unlock()
	})
	// firstAfter is the first answer from name after t0; last is its last answer.
	firstAfter := func(name string, t0 time.Time) time.Time {
		mu.Lock()
		defer mu.Unlock()
		for _, at := range served[name] {
			if at.After(t0) {
				return at
			}
		}
		return time.Time{}
	}
	last := func(name string) time.Time {
		mu.Lock()
		defer mu.Unlock()
		if ts := served[name]; len(ts) > 0 {
			return ts[len(ts)-1]
		}
		return time.Time{}
	}

	time.Sleep(2 * time.Second)
	// Reload 1: b1 out, b3 in.
	e.rewriteConfig(t, reloadConfig(t, dir, addr(b2), addr(b3)))
	r1 := time.Now()
	e.reload(t, "reloaded configuration")
	time.Sleep(2 * time.Second)
	if first := firstAfter("b3", r1); first.IsZero() || first.Sub(r1) > interval+slack {
		t.Errorf("b3 first served %v after reload 1; want within %v", first.Sub(r1), interval+slack)
	} else {
		t.Logf("reload 1: new target serving %v after SIGHUP", first.Sub(r1).Round(time.Millisecond))
	}
	if l := last("b1"); l.After(r1.Add(slack)) {
		t.Errorf("b1 still served %v after its removal", l.Sub(r1))
	}

	// An invalid config is rejected and the old one keeps serving.
	e.rewriteConfig(t, "pool:\n  targets: [\"127.0.0.1\"]\n  bogus: 1\n")
	e.reload(t, "reload rejected")
	time.Sleep(time.Second)

	// Reload 2: b2 out, b1 back.
	e.rewriteConfig(t, reloadConfig(t, dir, addr(b3), addr(b1)))
	r2 := time.Now()
	e.reload(t, "reloaded configuration")
	time.Sleep(2 * time.Second)
	stopLoad()

	if first := firstAfter("b1", r2); first.IsZero() || first.Sub(r2) > interval+slack {
		t.Errorf("b1 first served %v after reload 2; want within %v", first.Sub(r2), interval+slack)
	} else {
		t.Logf("reload 2: new target serving %v after SIGHUP", first.Sub(r2).Round(time.Millisecond))
	}
	if l := last("b2"); l.After(r2.Add(slack)) {
		t.Errorf("b2 still served %v after its removal", l.Sub(r2))
	}
	t.Logf("reload under load: %d requests sent, %d failed", load.sent.Load(), load.failed.Load())
	if load.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed; want 0", load.failed.Load(), load.sent.Load())
	}
	if !strings.Contains(e.Output(), "reload rejected, the previous configuration keeps serving") ||
		!strings.Contains(e.Output(), `unknown key \"bogus\"`) {
		t.Errorf("log lacks the rejected reload and its error:\n%s", e.Output())
	}
	// Targets kept across a reload keep their state: b2 and b3 never left healthy.
	for _, line := range strings.Split(e.Output(), "\n") {
		if strings.Contains(line, "target "+addr(b3)+" unhealthy") {
			t.Errorf("a kept target changed state: %s", line)
		}
	}
}

// A slow request in flight to a target removed by a reload completes; the target leaves
// /targets once drained.
func TestReload_DrainsRemovedTarget(t *testing.T) {
	b1 := namedBackend(t, "127.0.0.2", "b1")
	b2 := namedBackend(t, "127.0.0.3", "b2")
	addr := func(s *httptest.Server) string { return s.Listener.Addr().String() }
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	e := startEdge(t, reloadConfig(t, dir, addr(b1)))
	e.waitState(t, addr(b1), "healthy", 5*time.Second)
	c := httpsClient(roots, e.HTTPS)

	done := make(chan string, 1)
	go func() {
		resp, err := c.Get("https://app.test/slow?ms=1500")
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	time.Sleep(300 * time.Millisecond)
	e.rewriteConfig(t, reloadConfig(t, dir, addr(b2)))
	e.reload(t, "reloaded configuration")
	if s := e.targets(t)[addr(b1)].State; s != "draining" {
		t.Errorf("removed target state %q; want draining while a request runs", s)
	}
	if got := <-done; got != "200 b1" {
		t.Errorf("slow request to the removed target: got %q; want 200 b1", got)
	}
	if !e.WaitForOutput("target "+addr(b1)+" removed and drained", 3*time.Second) {
		t.Error("log lacks the drained notice")
	}
	if _, ok := e.targets(t)[addr(b1)]; ok {
		t.Error("drained target still listed in /targets")
	}
}

// A request still running on a removed target when its deregistration delay ends is
// answered 502 on both data paths (HTTP/2 through net/http, HTTP/1.1 on the fast path),
// counted under reason="deregistered", and logged as "deregistration delay ended". Before
// the core was shared, HTTP/2 got a 200 with an empty body (the cancelled attempt was
// taken for a client that left) and the fast path a 504 logged as a response timeout.
func TestReload_DeregistrationDelayEndsInFlightRequests(t *testing.T) {
	b1 := namedBackend(t, "127.0.0.2", "b1")
	b2 := namedBackend(t, "127.0.0.3", "b2")
	addr := func(s *httptest.Server) string { return s.Listener.Addr().String() }
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	config := func(target string) string {
		return strings.Replace(reloadConfig(t, dir, target), "deregistration_delay: 5s", "deregistration_delay: 1s", 1)
	}
	e := startEdge(t, config(addr(b1)))
	e.waitState(t, addr(b1), "healthy", 5*time.Second)

	type result struct {
		proto, got string
		after      time.Duration
	}
	results := make(chan result, 2)
	var reloaded time.Time
	var reloadedMu sync.Mutex
	for _, c := range []*http.Client{httpsClient(roots, e.HTTPS), h2Client(roots, e.HTTPS)} {
		go func() {
			resp, err := c.Get("https://app.test/slow?ms=5000")
			reloadedMu.Lock()
			after := time.Since(reloaded)
			reloadedMu.Unlock()
			if err != nil {
				results <- result{"?", err.Error(), after}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- result{resp.Proto, fmt.Sprintf("%d %s", resp.StatusCode, b), after}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	e.rewriteConfig(t, config(addr(b2)))
	reloadedMu.Lock()
	reloaded = time.Now()
	reloadedMu.Unlock()
	e.reload(t, "reloaded configuration")
	for range 2 {
		r := <-results
		if r.got != "502 502 Bad Gateway\n" {
			t.Errorf("%s: in-flight request on the removed target got %q; want the 502 error page", r.proto, r.got)
		}
		// The delay (1 s) plus the drain's 50 ms poll and slack; well before the 5 s the
		// target would take.
		if r.after > 3*time.Second {
			t.Errorf("%s: answered %v after the reload; want about the 1 s deregistration delay", r.proto, r.after)
		}
	}
	if n := strings.Count(e.Output(), "deregistration delay ended"); n < 2 {
		t.Errorf("log has %d lines with \"deregistration delay ended\"; want one per request at least:\n%s", n, e.Output())
	}
	if got := counterValue(e.metrics(t), `edgeproxy_proxy_errors_total{reason="deregistered"}`); got != 2 {
		t.Errorf(`edgeproxy_proxy_errors_total{reason="deregistered"} = %v; want 2`, got)
	}
}
