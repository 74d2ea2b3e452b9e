package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// Two sites, each with its own static certificate and pool: SNI gives each host its own
// certificate and the request lands in its pool, over HTTP/1.1 (the fast path) and
// HTTP/2; a request for one site on a connection whose certificate is the other's gets
// 421 on both, counted as misdirected and logged.
func TestTLSSites_CertificatePerHostAnd421(t *testing.T) {
	a := namedBackend(t, "127.0.0.2", "site-a")
	b := namedBackend(t, "127.0.0.3", "site-b")
	dir := t.TempDir()
	aCert, aKey, _ := testutil.CertFiles(t, dir, "a.test")
	bCert, bKey, _ := testutil.CertFiles(t, dir, "b.test", "*.b.test")
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(readFile(t, aCert))
	roots.AppendCertsFromPEM(readFile(t, bCert))
	e := startEdge(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}, {cert: %q, key: %q}]
pools:
  a: {targets: [%q], health_check: {interval: %v, timeout: %v, healthy_threshold: 1}}
  b: {targets: [%q], health_check: {interval: %v, timeout: %v, healthy_threshold: 1}}
routes:
  - {name: site-a, hosts: [a.test], pool: a}
  - {name: site-b, hosts: [b.test, "*.b.test"], pool: b}
log:
  access: true
`, aCert, aKey, bCert, bKey, a.Listener.Addr().String(), interval, checkTimeout, b.Listener.Addr().String(), interval, checkTimeout))
	for pool, srv := range map[string]*httptest.Server{"a": a, "b": b} {
		deadline := time.Now().Add(5 * time.Second)
		for e.targetsOf(t, pool)[srv.Listener.Addr().String()].State != "healthy" {
			if time.Now().After(deadline) {
				t.Fatalf("pool %s: target not healthy within 5s: %+v", pool, e.targetsOf(t, pool))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	for _, h2 := range []bool{false, true} {
		c := newClient(roots, e.HTTPS, h2)
		for url, want := range map[string]string{"https://a.test/": "site-a", "https://b.test/": "site-b", "https://www.b.test/": "site-b"} {
			resp, err := c.Get(url)
			if err != nil {
				t.Fatalf("h2=%v %s: %v", h2, url, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			host := strings.TrimSuffix(strings.TrimPrefix(url, "https://"), "/")
			if resp.StatusCode != 200 || string(body) != want || resp.TLS.PeerCertificates[0].VerifyHostname(host) != nil {
				t.Errorf("h2=%v %s: %d %q with a certificate for %v; want 200 %q with its own", h2, url, resp.StatusCode, body, resp.TLS.PeerCertificates[0].DNSNames, want)
			}
		}
	}

	// HTTP/1.1 on the fast path: SNI a.test, Host b.test.
	conn, err := tls.Dial("tcp", e.HTTPS, &tls.Config{RootCAs: roots, ServerName: "a.test", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	for _, host := range []string{"b.test", "a.test"} {
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := map[string]int{"b.test": 421, "a.test": 200}[host]; resp.StatusCode != want {
			t.Errorf("HTTP/1.1 on a.test's connection, Host %s: %d %q; want %d", host, resp.StatusCode, body, want)
		}
	}

	// HTTP/2: SNI a.test, :authority b.test.
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: "a.test", NextProtos: []string{"h2"}},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, e.HTTPS)
		},
	}}
	resp, err := h2.Get("https://b.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 421 || resp.ProtoMajor != 2 {
		t.Errorf("HTTP/2 on a.test's connection, :authority b.test: %s %d; want HTTP/2 421", resp.Proto, resp.StatusCode)
	}

	m := e.metrics(t)
	for series, want := range map[string]float64{
		`edgeproxy_proxy_errors_total{reason="misdirected"}`:                          2,
		`edgeproxy_requests_total{code="421",pool="none",route="none",target="none"}`: 2,
	} {
		if got := counterValue(m, series); got != want {
			t.Errorf("%s = %v; want %v", series, got, want)
		}
	}
	if n := strings.Count(e.Output(), "host=b.test uri=/ proto=HTTP/1.1 status=421"); n != 1 {
		t.Errorf("access log has %d HTTP/1.1 421 lines for b.test; want 1:\n%s", n, e.Output())
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
