package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// counterValue reads one sample of a counter from /metrics text.
func counterValue(metrics, series string) float64 {
	re := regexp.MustCompile(regexp.QuoteMeta(series) + ` ([0-9.e+]+)`)
	m := re.FindStringSubmatch(metrics)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// kill -9 of one of three Django backends during a steady load of GETs: no client sees an
// error (refused and reset attempts are retried on another target), passive health ejects
// the dead target within a second — long before the active checks (every 1s, 3 failures)
// would — and the target returns once restarted.
func TestFaults_KillBackendUnderLoadNoClientErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		pool := djangoPool(t, 3)
		certDir := t.TempDir()
		cert, key, roots := testutil.CertFiles(t, certDir, "app.test")
		e := startEdge(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: %s
  retries: 1
  passive: {consecutive_failures: 3, ejection_time: 30s}
  health_check:
    path: /admin/login/
    host: app.test
    interval: 1s
    timeout: 500ms
    healthy_threshold: 2
    unhealthy_threshold: 3
%s`, cert, key, quote(addrsOf(pool)...), engine))
		for _, d := range pool {
			e.waitState(t, d.Addr, "healthy", 5*time.Second)
		}
		c := httpsClient(roots, e.HTTPS)
		victim := pool[1]

		var mu sync.Mutex
		var victimServedAt []time.Time
		load, stopLoad := steadyLoad(t, c, "https://app.test/whoami", 4, 0, func(body []byte) {
			if regexp.MustCompile(`"instance": ?"django-2"`).Match(body) {
				mu.Lock()
				victimServedAt = append(victimServedAt, time.Now())
				mu.Unlock()
			}
		})
		ejectionSeries := fmt.Sprintf(`edgeproxy_passive_ejections_total{pool="pool",target=%q}`, victim.Addr)

		time.Sleep(3 * time.Second)
		victim.Kill()
		killedAt := time.Now()
		var ejectedAfter time.Duration
		for {
			if counterValue(e.metrics(t), ejectionSeries) >= 1 {
				ejectedAfter = time.Since(killedAt)
				break
			}
			if time.Since(killedAt) > 5*time.Second {
				t.Fatalf("no passive ejection 5s after kill -9:\n%s", e.Output())
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("killed target ejected by passive health %v after kill -9", ejectedAfter.Round(time.Millisecond))
		if ejectedAfter > time.Second {
			t.Errorf("ejected after %v; want within 1s", ejectedAfter)
		}

		time.Sleep(4 * time.Second)
		victim.Start()
		restartedAt := time.Now()
		time.Sleep(8 * time.Second) // the rest of the 15 s load, and time for 2 passing checks
		stopLoad()

		mu.Lock()
		back := false
		for _, at := range victimServedAt {
			if at.After(restartedAt) {
				back = true
				t.Logf("restarted target serving again %v after restart", at.Sub(restartedAt).Round(time.Millisecond))
				break
			}
		}
		mu.Unlock()
		if !back {
			t.Errorf("restarted target never served again:\n%s", e.Output())
		}
		retries := counterValue(e.metrics(t), fmt.Sprintf(`edgeproxy_retries_total{pool="pool",target=%q}`, victim.Addr))
		t.Logf("kill test: %d requests, %d client-visible errors, %.0f retries", load.sent.Load(), load.failed.Load(), retries)
		if load.failed.Load() != 0 {
			t.Errorf("%d of %d requests failed; want 0", load.failed.Load(), load.sent.Load())
		}
	})
}
