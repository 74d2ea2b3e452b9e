package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// A passthrough entry routes its server name, unterminated, to a backend that speaks TLS
// with its own certificate: the client sees the backend's certificate for that name and
// the edge's for any other, on the same HTTPS listener. The pool re-encrypts to the same
// backend (pool.tls), so its HTTP health checks are HTTPS; the passthrough target is
// checked by TCP connect, and both show in the metrics.
func TestPassthrough_RoutesBySNIToTLSBackend(t *testing.T) {
	backend, ca, _ := tlsBackend(t, "127.0.0.2", "backend.test")
	target := backend.Listener.Addr().String()
	cert, key, edgeRoots := testutil.CertFiles(t, t.TempDir(), "app.test")
	e := startEdge(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: [%q]
  tls: {ca: %q, server_name: backend.test}
  health_check: {interval: 200ms, timeout: 150ms}
passthrough:
  - server_names: [backend.test]
    targets: [%q]
`, cert, key, target, ca, target))
	e.waitState(t, target, "healthy", 5*time.Second) // an HTTPS check of the pool target

	caPEM, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	backendRoots := x509.NewCertPool()
	backendRoots.AppendCertsFromPEM(caPEM)

	tests := []struct {
		name, sni string
		roots     *x509.CertPool
		wantCert  string
		wantBody  string
	}{
		// The backend answers with the SNI it saw: the edge did not terminate.
		{"passthrough name", "backend.test", backendRoots, "backend.test", "tls=304 sni=backend.test"},
		// Terminated at the edge, then re-encrypted to the same backend with pool.tls.
		{"other name", "app.test", edgeRoots, "app.test", "tls=304 sni=backend.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", e.HTTPS, &tls.Config{ServerName: tt.sni, RootCAs: tt.roots, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatalf("handshake with SNI %s (verifying against the %s certificate): %v", tt.sni, tt.wantCert, err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if got := c.ConnectionState().PeerCertificates[0].DNSNames[0]; got != tt.wantCert {
				t.Errorf("certificate for %s; want %s", got, tt.wantCert)
			}
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tt.sni)
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != 200 || string(body) != tt.wantBody {
				t.Errorf("got %d %q; want 200 %q", res.StatusCode, body, tt.wantBody)
			}
		})
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		m := e.metrics(t)
		want := []string{
			fmt.Sprintf(`edgeproxy_passthrough_connections_total{result="ok",target=%q} 1`, target),
			fmt.Sprintf(`edgeproxy_passthrough_target_healthy{target=%q} 1`, target),
			`edgeproxy_passthrough_active_connections 0`,
			fmt.Sprintf(`edgeproxy_passthrough_health_checks_total{reason="none",result="pass",target=%q}`, target),
		}
		var missing []string
		for _, w := range want {
			if !strings.Contains(m, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q", missing)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// /targets lists the same address twice: once per set, each with its own checks.
	pt, ok := e.targetsOf(t, "passthrough")[target]
	if !ok || pt.State != "healthy" || pt.LastStatus != 0 {
		t.Errorf("/targets, passthrough %s: %+v (present %v); want healthy by TCP connect (no HTTP status)", target, pt, ok)
	}
	if pool := e.targets(t)[target]; pool.State != "healthy" || pool.LastStatus == 0 {
		t.Errorf("/targets, pool %s: %+v; want healthy by an HTTPS check (an HTTP status)", target, pool)
	}
}

// Re-encryption on the fast path (issue 6): HTTP/1.1 requests proxied by edgeproxy's own
// data path reach a TLS target through proxy.Upstream's tls.Client, verified against
// pool.tls.ca, and new upstream connections resume their TLS sessions. The target closes
// every connection after its response, so each request needs a new one.
func TestReencrypt_FastPathResumesUpstreamSessions(t *testing.T) {
	ca, certFile, keyFile, _ := testutil.CASignedFiles(t, t.TempDir(), "backend.test")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	var resumed, total atomic.Int64
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") == "edgeproxy-HealthChecker/1.0" {
			return
		}
		total.Add(1)
		if r.TLS.DidResume {
			resumed.Add(1)
		}
		w.Header().Set("Connection", "close")
		fmt.Fprintf(w, "resumed=%v", r.TLS.DidResume)
	}))
	backend.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	backend.StartTLS()
	t.Cleanup(backend.Close)
	target := backend.Listener.Addr().String()
	cert, key, roots := testutil.CertFiles(t, t.TempDir(), "app.test")
	e := startEdge(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: [%q]
  tls: {ca: %q, server_name: backend.test}
  health_check: {interval: 5s}
log: {access: true}
`, cert, key, target, ca))
	e.waitState(t, target, "healthy", 5*time.Second)
	c := httpsClient(roots, e.HTTPS)
	for i := range 5 {
		resp, err := c.Get("https://app.test/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: got %d %q; want 200", i, resp.StatusCode, body)
		}
	}
	if got := total.Load(); got != 5 {
		t.Fatalf("target saw %d requests; want 5", got)
	}
	// The first connection's handshake may be full (unless a health check left a ticket);
	// every later one resumes.
	if got := resumed.Load(); got < 4 {
		t.Errorf("%d of 5 upstream connections resumed their TLS session; want at least 4", got)
	}
	if !e.WaitForOutput("engine=fast", 5*time.Second) {
		t.Errorf("no access line with engine=fast: the requests did not take the fast path\n%s", e.Output())
	}
}

// A reload changes which names pass through, on the running listener.
func TestPassthrough_Reload(t *testing.T) {
	backend, _, _ := tlsBackend(t, "127.0.0.2", "backend.test")
	target := backend.Listener.Addr().String()
	cert, key, _ := testutil.CertFiles(t, t.TempDir(), "app.test")
	config := func(name string) string {
		return fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: [%q]
passthrough:
  - {server_names: [%s], targets: [%q]}
`, cert, key, target, name, target)
	}
	certFor := func(e *edgeProc, sni string) string {
		t.Helper()
		c, err := tls.Dial("tcp", e.HTTPS, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("handshake with SNI %s: %v", sni, err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].DNSNames[0]
	}
	e := startEdge(t, config("one.test"))
	if got := certFor(e, "one.test"); got != "backend.test" {
		t.Errorf("one.test before the reload: certificate for %s; want the backend's", got)
	}
	e.rewriteConfig(t, config("two.test"))
	e.reload(t, "reload done")
	for sni, want := range map[string]string{"one.test": "app.test", "two.test": "backend.test"} {
		if got := certFor(e, sni); got != want {
			t.Errorf("%s after the reload: certificate for %s; want %s's", sni, got, want)
		}
	}
}
