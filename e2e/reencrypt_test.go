package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// tlsBackend is a target that speaks TLS with a certificate for name signed by a test CA;
// it counts TLS sessions it resumed.
func tlsBackend(t *testing.T, ip, name string) (srv *httptest.Server, caFile string, resumed *atomic.Int64) {
	t.Helper()
	ca, cert, key, _ := testutil.CASignedFiles(t, t.TempDir(), name)
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	resumed = &atomic.Int64{}
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "want TLS", 400)
			return
		}
		if r.TLS.DidResume {
			resumed.Add(1)
		}
		fmt.Fprintf(w, "tls=%x sni=%s", r.TLS.Version, r.TLS.ServerName)
	}))
	srv.Listener = ln
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, ca, resumed
}

// With pool.tls the edge re-encrypts to its targets, verifying them against the given CA
// and name, health checks included; a target whose certificate does not verify fails its
// checks.
func TestReencrypt_VerifiesTargetsAndProxiesOverTLS(t *testing.T) {
	backend, ca, _ := tlsBackend(t, "127.0.0.2", "backend.test")
	dir := t.TempDir()
	cert, key, roots := testutil.CertFiles(t, dir, "app.test")
	target := backend.Listener.Addr().String()
	config := func(serverName string) string {
		return fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: [%q]
  tls: {ca: %q, server_name: %s}
  health_check: {interval: 200ms, timeout: 150ms}
`, cert, key, target, ca, serverName)
	}
	e := startEdge(t, config("backend.test"))
	e.waitState(t, target, "healthy", 5*time.Second)
	c := httpsClient(roots, e.HTTPS)
	resp, err := c.Get("https://app.test/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "tls=304 sni=backend.test" {
		t.Errorf("got %d %q; want the target reached over TLS 1.3 with SNI backend.test", resp.StatusCode, body)
	}

	wrong := startEdge(t, config("other.test"))
	wrong.waitState(t, target, "unhealthy", 5*time.Second)
	if s := wrong.targets(t)[target]; s.Reason != "Target.FailedHealthChecks" {
		t.Errorf("target with a certificate for another name: reason %q; want Target.FailedHealthChecks", s.Reason)
	}
}
