package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"
	"time"

	"edgeproxy/bench/loadgen"
	"edgeproxy/internal/testutil"
	"edgeproxy/internal/testutil/fixture"
)

// The TLS cost metrics count what goes through the edge, on both data paths: every
// handshake (new HTTP/1.1 connections and an HTTP/2 one), its CPU, its records and the
// total. The measuring happens where proxy.Server runs the handshake, so this pins down
// the wiring as well as the accounting.
func TestTLSCost_MetricsCountTheEdgesConnections(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		e, c := limitsEdge(t, engine, "  max_header_bytes: 65536\n")
		c.Transport.(*http.Transport).DisableKeepAlives = true // a handshake per request
		const newConns, h2Requests = 10, 10
		get := func(c *http.Client) {
			t.Helper()
			resp, err := c.Get("https://app.test/")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		for range newConns {
			get(c)
		}
		h2 := h2Client(certPoolFromConfig(t, e.ConfigFile), e.HTTPS)
		for range h2Requests {
			get(h2)
		}
		h2.CloseIdleConnections()

		m := e.metrics(t)
		sum := func(series string) float64 {
			re := regexp.MustCompile(`(?m)^` + series + `(?:\{[^}]*\})? ([0-9.e+-]+)$`)
			total := 0.0
			for _, match := range re.FindAllStringSubmatch(m, -1) {
				v, _ := strconv.ParseFloat(match[1], 64)
				total += v
			}
			return total
		}
		if got, want := sum(`edgeproxy_tls_handshakes_total\{[^}]*result="ok"[^}]*\}`), float64(newConns+1); got != want {
			t.Errorf("ok handshakes: got %v; want %v\n%s", got, want, m)
		}
		if got, want := sum(`edgeproxy_tls_handshake_cpu_seconds_count\{[^}]*result="ok"[^}]*\}`), float64(newConns+1); got != want {
			t.Errorf("handshake CPU observations: got %v; want %v", got, want)
		}
		for _, series := range []string{
			`edgeproxy_tls_handshake_cpu_seconds_sum`,
			`edgeproxy_tls_record_bytes_total\{direction="in"\}`,
			`edgeproxy_tls_record_bytes_total\{direction="out"\}`,
			`edgeproxy_tls_cpu_seconds_total`,
		} {
			if got := sum(series); got <= 0 {
				t.Errorf("%s: got %v; want > 0", series, got)
			}
		}
	})
}

// A client resumes its TLS session after a reload (SIGHUP, as `systemctl reload` sends):
// the ticket keys live outside the state a reload rebuilds. Both TLS versions; the
// metrics count the resumed handshakes apart.
func TestTLSCost_SessionsResumeAcrossAReload(t *testing.T) {
	e, c := limitsEdge(t, "", "  max_header_bytes: 65536\n")
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		name := map[uint16]string{tls.VersionTLS12: "1.2", tls.VersionTLS13: "1.3"}[version]
		tr := c.Transport.(*http.Transport).Clone()
		tr.DisableKeepAlives = true // a handshake per request
		tr.TLSClientConfig.MinVersion, tr.TLSClientConfig.MaxVersion = version, version
		tr.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		client := &http.Client{Transport: tr}
		resumed := func() bool {
			t.Helper()
			resp, err := client.Get("https://app.test/")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body) // in TLS 1.3 the ticket comes after the handshake
			resp.Body.Close()
			return resp.TLS.DidResume
		}
		if resumed() {
			t.Fatalf("TLS %s: the first connection resumed", name)
		}
		if !resumed() {
			t.Fatalf("TLS %s: the second connection did not resume before any reload", name)
		}
		e.reload(t, "reload done")
		if !resumed() {
			t.Errorf("TLS %s: the session did not resume after a reload", name)
		}
		m := e.metrics(t)
		series := `edgeproxy_tls_handshakes_total{cipher="[^"]+",key="none",result="ok",resumed="true",version="` + regexp.QuoteMeta(name) + `"} 2`
		if !regexp.MustCompile(`(?m)^` + series + `$`).MatchString(m) {
			t.Errorf("TLS %s: no %s in the metrics:\n%s", name, series, m)
		}
	}
}

// The metric agrees with what TLS costs the edge's process — its extra CPU over TLS
// against plain HTTP, same edge, same requests, interleaved — on two cells of
// `bench/tlscost matrix`: new connections (full TLS 1.3 handshakes) and kept-alive 16 KiB
// responses. The tolerance is wide (0.6–1.6) for CI's noise; the matrix is the judge. The
// edge calibrates at start into a cache of its own (~5 s), and the test takes ~15–30 s.
func TestTLSCost_AgreesWithTheExtraCPUOfTLS(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = w.Write(make([]byte, n))
	}))
	t.Cleanup(backend.Close)
	e := startEdgeWith(t, testutil.ProcOptions{Env: []string{"CACHE_DIRECTORY=" + t.TempDir()}}, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  http: "{{HTTP}}"
  http_mode: proxy
  metrics: "{{METRICS}}"
tls:
  self_signed: true
pool:
  targets: [%q]
  health_check: {interval: 200ms, timeout: 150ms}
`, backend.Listener.Addr().String()))
	e.waitState(t, backend.Listener.Addr().String(), "healthy", 5*time.Second)
	if !e.WaitForOutput("tlscost: calibrated", 2*time.Minute) {
		t.Fatalf("the edge did not calibrate:\n%s", e.Output())
	}
	total := func() float64 {
		m := regexp.MustCompile(`(?m)^edgeproxy_tls_cpu_seconds_total ([0-9.e+-]+)$`).FindStringSubmatch(e.metrics(t))
		if m == nil {
			t.Fatal("no edgeproxy_tls_cpu_seconds_total")
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	cpu := func() float64 {
		sec, err := fixture.ProcessCPU(e.Pid())
		if err != nil {
			t.Fatal(err)
		}
		return sec
	}
	for _, cell := range []struct {
		name           string
		size, requests int
		keepAlive      bool
	}{
		{"new connection 1 KiB", 1 << 10, 150, false},
		{"keep-alive 16 KiB", 16 << 10, 1500, true},
	} {
		load := func(useTLS bool, n int) {
			t.Helper()
			addr := e.HTTP
			if useTLS {
				addr = e.HTTPS
			}
			if _, err := loadgen.Run(context.Background(), loadgen.Options{Addr: addr, TLS: useTLS, Path: fmt.Sprintf("/bytes?n=%d", cell.size),
				BodyBytes: cell.size, KeepAlive: cell.keepAlive, Connections: 2, Requests: n, Timeout: time.Minute}); err != nil {
				t.Fatalf("%s: %v", cell.name, err)
			}
		}
		load(true, cell.requests/4) // warm-up
		load(false, cell.requests/4)
		var cpuTLS, cpuPlain, metric float64
		for i := range 4 {
			for _, useTLS := range []bool{i%2 == 0, i%2 == 1} {
				m0, c0 := total(), cpu()
				load(useTLS, cell.requests)
				c1, m1 := cpu(), total()
				if useTLS {
					cpuTLS, metric = cpuTLS+c1-c0, metric+m1-m0
				} else {
					cpuPlain += c1 - c0
				}
			}
		}
		ratio := metric / (cpuTLS - cpuPlain)
		t.Logf("%s: TLS %.3fs, plain %.3fs of CPU; metric %.3fs; ratio %.2f", cell.name, cpuTLS, cpuPlain, metric, ratio)
		if !(ratio >= 0.6 && ratio <= 1.6) {
			t.Errorf("%s: edgeproxy_tls_cpu_seconds_total / (TLS − plain process CPU) = %.2f; want 0.6–1.6 (bench/tlscost matrix is the judge)", cell.name, ratio)
		}
	}
}
