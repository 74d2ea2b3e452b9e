package doctor

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"edgeproxy/certs"
	"edgeproxy/config"
	"edgeproxy/internal/testutil"
	"edgeproxy/telemetry"
)

func TestResult_String(t *testing.T) {
	r := Result{Status: Fail, Check: "config", Detail: "c.yaml has 1 problem(s)", More: []string{"c.yaml:1:1: bad"}}
	want := "fail  config                    c.yaml has 1 problem(s)\n      c.yaml:1:1: bad"
	if got := r.String(); got != want {
		t.Errorf("got %q; want %q", got, want)
	}
	if !Failed([]Result{{Status: OK}, {Status: Warn}, r}) || Failed([]Result{{Status: OK}, {Status: Warn}}) {
		t.Error("Failed is wrong")
	}
}

// The last ACME error in the words of Let's Encrypt and of Pebble, translated.
func TestExplain(t *testing.T) {
	tests := []struct {
		name string
		le   certs.LastError
		want string
	}{
		{"LE closed port", certs.LastError{Domain: "app.test", CAErrorType: "urn:ietf:params:acme:error:connection", Challenge: "tls-alpn-01",
			CAErrorDetail: "203.0.113.7: Timeout during connect (likely firewall problem)"},
			"the CA could not connect to this host (timeout): port 443 is not reachable from the internet. Open it in the firewall or the EC2 security group"},
		{"LE refused on 80", certs.LastError{Domain: "app.test", CAErrorType: "urn:ietf:params:acme:error:connection", Challenge: "http-01",
			CAErrorDetail: "203.0.113.7: Fetching http://app.test/.well-known/acme-challenge/x: Connection refused"},
			"(connection refused): port 80 is not reachable"},
		{"Pebble closed port", certs.LastError{Domain: "app.test", CAErrorType: "urn:ietf:params:acme:error:unauthorized", Challenge: "tls-alpn-01",
			CAErrorDetail: "Failed to connect to 127.0.0.1:5001 for the tls-alpn-01 challenge"},
			"the CA could not connect to this host: port 443 is not reachable"},
		{"another certificate", certs.LastError{Domain: "app.test", CAErrorType: "urn:ietf:params:acme:error:unauthorized", Challenge: "tls-alpn-01",
			CAErrorDetail: "203.0.113.9: Incorrect validation certificate for tls-alpn-01 challenge. Requested app.test from 203.0.113.9:443. Received 1 certificate(s), first certificate had names \"other.test\""},
			"the CA reached a server, but it answered with another certificate or content than this edgeproxy's: DNS for app.test points elsewhere"},
		{"another server", certs.LastError{Domain: "app.test", CAErrorType: "urn:ietf:params:acme:error:unauthorized", Challenge: "http-01",
			CAErrorDetail: "203.0.113.9: Invalid response from http://app.test/.well-known/acme-challenge/x: 404"},
			"DNS for app.test points elsewhere"},
		{"no DNS", certs.LastError{Domain: "app.test", CAErrorType: "urn:ietf:params:acme:error:dns", CAErrorDetail: "DNS problem: NXDOMAIN looking up A for app.test"},
			"the CA could not resolve app.test: create its A record"},
		{"rate limited", certs.LastError{Domain: "app.test", CAErrorType: "urn:ietf:params:acme:error:rateLimited", CAErrorDetail: "too many failed authorizations recently"},
			"rate limit"},
		{"CA unreachable", certs.LastError{Domain: "app.test", Error: `Get "https://ca.test/dir": dial tcp 192.0.2.1:443: i/o timeout`},
			"edgeproxy could not reach the CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := explain(&tt.le); !strings.Contains(got, tt.want) {
				t.Errorf("got %q; want it to contain %q", got, tt.want)
			}
		})
	}
}

func TestClassifyDNS(t *testing.T) {
	ip := netip.MustParseAddr
	local := []netip.Addr{ip("127.0.0.1"), ip("10.0.0.5")}
	tests := []struct {
		name   string
		ips    []netip.Addr
		public netip.Addr
		want   Status
		detail string
	}{
		{"interface", []netip.Addr{ip("10.0.0.5")}, netip.Addr{}, OK, "this host"},
		{"loopback range", []netip.Addr{ip("127.0.0.2")}, netip.Addr{}, OK, "this host"},
		{"public IP given", []netip.Addr{ip("203.0.113.7")}, ip("203.0.113.7"), OK, "this host"},
		{"NAT: no public IP given", []netip.Addr{ip("203.0.113.7")}, netip.Addr{}, Warn, "On EC2 the public IP is NATed"},
		{"elsewhere", []netip.Addr{ip("192.0.2.10")}, ip("203.0.113.7"), Fail, "DNS points elsewhere"},
		{"some elsewhere", []netip.Addr{ip("10.0.0.5"), ip("192.0.2.10")}, netip.Addr{}, Warn, "remove the records that point elsewhere"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := classifyDNS("app.test", "", tt.ips, local, tt.public)
			if r.Status != tt.want || !strings.Contains(r.Detail, tt.detail) {
				t.Errorf("got %v %q; want %v with %q", r.Status, r.Detail, tt.want, tt.detail)
			}
		})
	}
}

// writeCert writes an edgeproxy self-signed certificate for names (plus localhost and
// the loopback IPs), valid from an hour ago for life, and returns the file names.
func writeCert(t *testing.T, dir string, life time.Duration, names ...string) (certFile, keyFile string) {
	t.Helper()
	c, err := certs.SelfSigned(names, life)
	if err != nil {
		t.Fatal(err)
	}
	return testutil.WriteCertFiles(t, dir, names[0], c)
}

func parseConfig(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("c.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	_ = cfg.CheckEnvironment() // load the files that load, as doctor does
	return cfg
}

// Certificates: covered and current, due for renewal, expired, and missing a name.
func TestCheckCertificate(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir, 90*24*time.Hour, "app.test")
	cfg := parseConfig(t, fmt.Sprintf(`
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: ["127.0.0.1:8000"]
  health_check: {host: www.app.test}
`, cert, key))
	tests := []struct {
		name   string
		now    time.Time
		host   string
		want   Status
		detail string
	}{
		{"current", time.Now(), "app.test", OK, "valid until"},
		{"due for renewal", time.Now().Add(70 * 24 * time.Hour), "app.test", Warn, "due for renewal; replace the files"},
		{"expired", time.Now().Add(91 * 24 * time.Hour), "app.test", Fail, "EXPIRED"},
		{"missing name", time.Now(), "www.app.test", Fail, "no certificate covers www.app.test (pool.health_check.host); covered: localhost, app.test, 127.0.0.1, ::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := New(Options{ConfigFile: "c.yaml"})
			if err != nil {
				t.Fatal(err)
			}
			d.opts.now = func() time.Time { return tt.now }
			r := d.checkCertificate(d.newSite(cfg), tt.host)
			if r.Status != tt.want || !strings.Contains(r.Detail, tt.detail) {
				t.Errorf("got %v %q; want %v with %q", r.Status, r.Detail, tt.want, tt.detail)
			}
		})
	}
}

// A listener in use: by this edgeproxy (its metrics answer, its TLS certificate shows),
// or by another program.
func TestCheckListener(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir, 90*24*time.Hour, "app.test")
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	metrics := httptest.NewServer(telemetry.New().AdminHandler(func(*http.Request) any { return []any{} }))
	defer metrics.Close()
	https := httptest.NewUnstartedServer(http.NotFoundHandler())
	https.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	https.Config.ErrorLog = log.New(io.Discard, "", 0) // quiet for tests: the doctor's plain dial
	https.StartTLS()
	defer https.Close()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	freeAddr := testutil.LoopbackAddr(t, "127.0.0.1")

	cfg := parseConfig(t, fmt.Sprintf(`
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: ["127.0.0.1:8000"]
`, cert, key))
	d, _ := New(Options{ConfigFile: "c.yaml", Timeout: time.Second})
	s := d.newSite(cfg)
	tests := []struct {
		key, addr string
		want      Status
		detail    string
	}{
		{"metrics", metrics.Listener.Addr().String(), OK, "already bound by this edgeproxy (its /healthz and /targets answer)"},
		{"https", https.Listener.Addr().String(), OK, "already bound by this edgeproxy (a TLS handshake there shows its certificate)"},
		{"https", freeAddr, OK, "can be bound"},
		{"http", "127.0.0.1:0", OK, "port 0"},
	}
	for _, tt := range tests {
		r := d.checkListener(context.Background(), s, tt.key, tt.addr)
		if r.Status != tt.want || !strings.Contains(r.Detail, tt.detail) {
			t.Errorf("%s %s: got %v %q; want %v with %q", tt.key, tt.addr, r.Status, r.Detail, tt.want, tt.detail)
		}
	}
	// Without the evidence of a metrics listener, a program that does not answer as
	// edgeproxy holds the port.
	s.edgeMetrics = ""
	r := d.checkListener(context.Background(), s, "https", other.Addr().String())
	if r.Status != Fail || !strings.Contains(r.Detail, "is in use by another program") {
		t.Errorf("another program's port: got %v %q; want fail, in use by another program", r.Status, r.Detail)
	}
}

// A passthrough target must terminate TLS itself, for each of its entry's names.
func TestCheckPassthroughTarget(t *testing.T) {
	cert, key := writeCert(t, t.TempDir(), 90*24*time.Hour, "backend.test")
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tlsBackend := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsBackend.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	tlsBackend.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsBackend.StartTLS()
	defer tlsBackend.Close()
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	deadAddr := testutil.DeadAddr(t)

	tlsAddr := tlsBackend.Listener.Addr().String()
	tests := []struct {
		name   string
		names  []string
		target string
		now    time.Time
		want   Status
		detail string
	}{
		{"speaks TLS for its name", []string{"backend.test"}, tlsAddr, time.Now(), OK, "speaks TLS with a certificate for backend.test (valid"},
		{"another name", []string{"backend.test", "other.test"}, tlsAddr, time.Now(), Fail, "does not cover other.test (covers localhost, backend.test)"},
		{"expired", []string{"backend.test"}, tlsAddr, time.Now().Add(91 * 24 * time.Hour), Fail, "EXPIRED"},
		{"plain HTTP", []string{"backend.test"}, plain.Listener.Addr().String(), time.Now(), Fail, "does not speak TLS; a passthrough target terminates TLS itself"},
		{"nothing listens", []string{"backend.test"}, deadAddr, time.Now(), Fail, "connection refused: nothing listens on " + deadAddr + "; start the TLS backend there or fix passthrough[0].targets"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := New(Options{ConfigFile: "c.yaml", Timeout: time.Second})
			d.opts.now = func() time.Time { return tt.now }
			r := d.checkPassthroughTarget(context.Background(), 0, config.Passthrough{ServerNames: tt.names, Targets: []string{tt.target}}, tt.target)
			if r.Status != tt.want || !strings.Contains(r.Detail, tt.detail) || r.Check != "passthrough:"+tt.target {
				t.Errorf("got %v %s %q; want %v passthrough:%s with %q", r.Status, r.Check, r.Detail, tt.want, tt.target, tt.detail)
			}
		})
	}
}

// An invalid configuration: every problem is listed, and the run stops there.
func TestRun_InvalidConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("listen:\n  bogus: 1\npool:\n  targets: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, _ := New(Options{ConfigFile: file})
	rs := d.Run(context.Background(), nil)
	if len(rs) != 1 || rs[0].Status != Fail || rs[0].Check != "config" || len(rs[0].More) < 3 {
		t.Fatalf("got %+v; want one fail line for config with its problems", rs)
	}
	if !strings.Contains(strings.Join(rs[0].More, "\n"), `c.yaml:2:3: unknown key "bogus" in listen`) {
		t.Errorf("problems lack the unknown key at 2:3: %q", rs[0].More)
	}
}

// ACME domains: the cached certificate, none yet, none and a failed order on record, and
// a cache file that cannot be read.
func TestCheckCertificate_ACME(t *testing.T) {
	cache := t.TempDir()
	c, err := certs.SelfSigned([]string{"a.app.test"}, 90*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	cached := append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})...)
	for name, data := range map[string][]byte{
		"a.app.test":      cached,
		"d.app.test":      []byte("not PEM"),
		"last-error.json": []byte(`{"domain": "c.app.test", "attempt": 1, "error": "x", "ca_error_type": "urn:ietf:params:acme:error:connection"}`),
	} {
		if err := os.WriteFile(filepath.Join(cache, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := parseConfig(t, fmt.Sprintf(`
tls:
  acme: {domains: [a.app.test, b.app.test, c.app.test, d.app.test], cache_dir: %q}
pool:
  targets: ["127.0.0.1:8000"]
`, cache))
	d, _ := New(Options{ConfigFile: "c.yaml"})
	s := d.newSite(cfg)
	tests := []struct {
		name   string
		want   Status
		detail string
	}{
		{"a.app.test", OK, "covered by the ACME cache"},
		{"b.app.test", Warn, "edgeproxy orders it at start-up"},
		{"c.app.test", Fail, "its last ACME order failed"},
		{"d.app.test", Warn, "cannot read the cached certificate of d.app.test"},
	}
	for _, tt := range tests {
		if r := d.checkCertificate(s, tt.name); r.Status != tt.want || !strings.Contains(r.Detail, tt.detail) {
			t.Errorf("%s: got %v %q; want %v with %q", tt.name, r.Status, r.Detail, tt.want, tt.detail)
		}
	}
}
