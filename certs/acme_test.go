package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// acmeObserver records what an ACME manager reports.
type acmeObserver struct {
	mu      sync.Mutex
	ok      int
	failed  int
	expiry  map[string]time.Time
	renewal map[string]time.Time
}

func (o *acmeObserver) ACMEOrder(ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ok {
		o.ok++
	} else {
		o.failed++
	}
}

func (o *acmeObserver) CertificateExpiry(domain string, notAfter time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.expiry == nil {
		o.expiry = map[string]time.Time{}
	}
	o.expiry[domain] = notAfter
}

func (o *acmeObserver) CertificateRenewal(domain string, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.renewal == nil {
		o.renewal = map[string]time.Time{}
	}
	o.renewal[domain] = at
}
func (o *acmeObserver) CertificateNotBefore(string, time.Time) {}

func (o *acmeObserver) counts() (ok, failed int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ok, o.failed
}

// countingCA is a stand-in ACME server that counts the requests it gets and answers 503.
func countingCA(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// Challenge requests and handshakes find their name whatever its spelling: a port in the
// Host header (Pebble validates HTTP-01 on port 5002), case, a trailing dot, an IPv6
// address in brackets or an IPv4-mapped one, and an IP address's reverse-DNS name (the
// SNI of its TLS-ALPN-01 validation).
func TestAcmeDomain_NormalizesNamesAndIPs(t *testing.T) {
	a, err := newACME(ACMEOptions{Domains: []string{"www.example.com", "API.example.com."}, IPAddresses: []string{"203.0.113.7", "2001:db8::1"},
		CacheDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host string
		want string // "" for none
	}{
		{"www.example.com", "www.example.com"},
		{"www.example.com:5002", "www.example.com"},
		{"WWW.EXAMPLE.COM.", "www.example.com"},
		{"api.example.com", "api.example.com"},
		{"203.0.113.7:80", "203.0.113.7"},
		{"[2001:db8::1]:80", "2001:db8::1"},
		{"[2001:DB8:0::1]", "2001:db8::1"},
		{"::ffff:203.0.113.7", "203.0.113.7"},
		{"example.com", ""},
		{"evil.example.com:80", ""},
		{"203.0.113.8", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got := ""
		if d := a.domain(hostOnly(tt.host)); d != nil {
			got = d.name
		}
		if got != tt.want {
			t.Errorf("domain(%q) = %q; want %q", tt.host, got, tt.want)
		}
	}
	for sni, want := range map[string]string{
		"7.113.0.203.in-addr.arpa": "203.0.113.7",
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.": "2001:db8::1",
	} {
		if d := a.reverse[normalizeName(sni)]; d == nil || d.name != want {
			t.Errorf("reverse name %s: got %v; want %s", sni, d, want)
		}
	}
}

func TestAcmeFallbackRenewAt(t *testing.T) {
	issued := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		lifetime    time.Duration
		renewBefore time.Duration
		want        time.Duration // before expiry, without jitter
	}{
		{"90 days, a third", 90 * 24 * time.Hour, 0, 30 * 24 * time.Hour},
		{"6 days, a third", 6 * 24 * time.Hour, 0, 2 * 24 * time.Hour},
		{"renew_before", 90 * 24 * time.Hour, 14 * 24 * time.Hour, 14 * 24 * time.Hour},
		{"renew_before beyond the lifetime is capped at half", 6 * 24 * time.Hour, 30 * 24 * time.Hour, 3 * 24 * time.Hour},
		{"90 seconds", 90 * time.Second, 0, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &acmeManager{opts: ACMEOptions{RenewBefore: tt.renewBefore}}
			leaf := &x509.Certificate{NotBefore: issued, NotAfter: issued.Add(tt.lifetime)}
			for range 20 {
				before := leaf.NotAfter.Sub(a.fallbackRenewAt(leaf))
				// The jitter makes renewal earlier, by at most a tenth (and an hour).
				if before < tt.want || before > tt.want+min(tt.want/10, time.Hour) {
					t.Fatalf("renews %v before expiry; want %v (+ jitter up to %v)", before, tt.want, min(tt.want/10, time.Hour))
				}
			}
		})
	}
}

func TestAcmeBackoff_CappedExponential(t *testing.T) {
	a := &acmeManager{opts: ACMEOptions{RetryMin: time.Minute, RetryMax: time.Hour}}
	want := []time.Duration{time.Minute, 3 * time.Minute, 9 * time.Minute, 27 * time.Minute, time.Hour, time.Hour, time.Hour}
	for i, w := range want {
		got := a.backoff(i+1, 0)
		if got < w-w/10 || got > w+w/10 {
			t.Errorf("backoff after failure %d = %v; want %v ± 10%%", i+1, got, w)
		}
	}
	// A rate limit's Retry-After wins over a shorter backoff.
	if got := a.backoff(1, 3*time.Hour); got != 3*time.Hour {
		t.Errorf("backoff with Retry-After 3h = %v; want 3h", got)
	}
	// Let's Encrypt allows 5 failed validations per name per hour: with the defaults, at
	// most 5 attempts start within the first hour of failures.
	var at time.Duration
	attempts := 1
	for n := 1; ; n++ {
		at += a.backoff(n, 0)
		if at >= time.Hour {
			break
		}
		attempts++
	}
	if attempts > 5 {
		t.Errorf("%d attempts in the first hour; want at most 5", attempts)
	}
}

// Handshakes never order: not for an unlisted name, not for a listed one without a
// certificate yet. Only Start's loops do.
func TestGetCertificate_AcmeHandshakesNeverContactTheCA(t *testing.T) {
	ca, hits := countingCA(t)
	log, logs := testutil.NewLogger(t)
	src, err := New(Options{Logger: log, ACME: &ACMEOptions{
		Domains: []string{"app.test"}, DirectoryURL: ca.URL + "/dir", CacheDir: t.TempDir(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"other.test", "other.test", "app.test", "", "app.test"} {
		if c, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: name, SupportedProtos: []string{"h2"}}); err == nil {
			t.Errorf("GetCertificate(%q) = %v; want an error (no certificate)", name, c)
		}
	}
	// A TLS-ALPN-01 hello with no order in flight is refused too.
	if _, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: "app.test", SupportedProtos: []string{"acme-tls/1"}}); err == nil {
		t.Error("TLS-ALPN-01 hello without an order: got a certificate")
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the CA got %d requests; want 0", n)
	}
	if n := strings.Count(logs.String(), "server name other.test, which no certificate covers"); n != 1 {
		t.Errorf("unlisted name logged %d times; want once\n%s", n, logs)
	}
}

// The HTTP-01 responder passes everything but challenges to the fallback, and answers
// challenges only for listed names with an order in flight.
func TestHTTPHandler_Acme(t *testing.T) {
	src, err := New(Options{ACME: &ACMEOptions{Domains: []string{"app.test"}, CacheDir: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	fallback := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusPermanentRedirect) })
	h := src.HTTPHandler(fallback)
	tests := []struct {
		host, path string
		want       int
	}{
		{"app.test", "/", http.StatusPermanentRedirect},
		{"app.test:8080", "/admin/", http.StatusPermanentRedirect},
		{"app.test:5002", "/.well-known/acme-challenge/tok", http.StatusNotFound}, // no order
		{"other.test", "/.well-known/acme-challenge/tok", http.StatusNotFound},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "http://"+tt.host+tt.path, nil))
		if rec.Code != tt.want {
			t.Errorf("GET %s%s: got %d; want %d", tt.host, tt.path, rec.Code, tt.want)
		}
	}
	if !src.acme.http01.Load() {
		t.Error("HTTPHandler did not turn HTTP-01 on")
	}
}

func TestTLSConfig_AcmeOffersALPNChallenge(t *testing.T) {
	src, err := New(Options{ACME: &ACMEOptions{Domains: []string{"app.test"}, CacheDir: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(src.TLSConfig().NextProtos, ","); got != "h2,http/1.1,acme-tls/1" {
		t.Errorf("NextProtos = %s; want h2,http/1.1,acme-tls/1", got)
	}
	plain, _ := New(Options{SelfSigned: true})
	if got := strings.Join(plain.TLSConfig().NextProtos, ","); got != "h2,http/1.1" {
		t.Errorf("without ACME NextProtos = %s; want h2,http/1.1", got)
	}
}

func TestNew_AcmeCacheDir(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "acme")
	if _, err := New(Options{ACME: &ACMEOptions{Domains: []string{"app.test"}, CacheDir: dir}}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir: %v %v; want mode 0700", fi.Mode(), err)
	}
	if os.Getuid() != 0 { // root writes anywhere
		ro := filepath.Join(parent, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Options{ACME: &ACMEOptions{Domains: []string{"app.test"}, CacheDir: ro}}); err == nil {
			t.Error("read-only cache dir: New succeeded; want an error")
		}
	}
}

// pebbleSource runs a Source with ACME for app.test in front of a real Pebble: an HTTPS
// listener on Pebble's TLS-ALPN-01 port. listen false leaves that port closed (so the
// validation fails) until the test calls the returned function.
type pebbleSetup struct {
	pebble *testutil.Pebble
	src    *Source
	obs    *acmeObserver
	logs   *testutil.Buffer
	dir    string
	listen func() // starts the HTTPS listener
	start  func() // starts the ACME loops (done by startPebbleACME unless it is given an HTTP port)
}

func startPebbleSource(t *testing.T, listenNow bool, retryMin time.Duration) *pebbleSetup {
	t.Helper()
	return startPebbleACME(t, testutil.PebbleOptions{}, ACMEOptions{Domains: []string{"app.test"}, RetryMin: retryMin}, listenNow)
}

// startPebbleACME starts Pebble (po, with every order validated anew) and a Source with
// ACME (opts, completed with Pebble's directory, a cache directory and an observer)
// whose HTTPS listener is on Pebble's TLS-ALPN-01 port.
func startPebbleACME(t *testing.T, po testutil.PebbleOptions, opts ACMEOptions, listenNow bool) *pebbleSetup {
	t.Helper()
	tlsPort := testutil.FreePort(t, "127.0.0.1")
	po.TLSPort = tlsPort
	po.Env = append(po.Env, "PEBBLE_AUTHZREUSE=0")
	p := testutil.StartPebble(t, po)
	roots, err := os.ReadFile(p.CARootsFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(roots)
	log, logs := testutil.NewLogger(t)
	obs := &acmeObserver{}
	dir := filepath.Join(t.TempDir(), "acme")
	opts.Email, opts.DirectoryURL, opts.RootCAs, opts.CacheDir, opts.Observer = "ops@app.test", p.DirectoryURL, pool, dir, obs
	src, err := New(Options{Logger: log, ACME: &opts})
	if err != nil {
		t.Fatal(err)
	}
	s := &pebbleSetup{pebble: p, src: src, obs: obs, logs: logs, dir: dir}
	s.listen = func() {
		ln, err := tls.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort)), src.TLSConfig())
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.NotFoundHandler(), ErrorLog: stdlog.New(io.Discard, "", 0)} // quiet for tests
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Close() })
	}
	if listenNow {
		s.listen()
	}
	s.start = func() {
		ctx, cancel := context.WithCancel(context.Background())
		src.Start(ctx)
		t.Cleanup(func() {
			cancel()
			src.Wait()
		})
	}
	if po.HTTPPort == 0 {
		s.start()
	}
	return s
}

// waitFailed polls until n orders have failed.
func (s *pebbleSetup) waitFailed(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, failed := s.obs.counts(); failed >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %d failed orders within 30s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCert polls until the source serves a certificate for name.
func waitCert(t *testing.T, src *Source, name string, timeout time.Duration) *tls.Certificate {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if d := src.acme.domain(name); d != nil {
			if cur := d.current.Load(); cur != nil {
				return cur.cert
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate for %s within %v", name, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAcme_Pebble_ObtainsECDSACertificate(t *testing.T) {
	s := startPebbleSource(t, true, 0)
	cert := waitCert(t, s.src, "app.test", 30*time.Second)

	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		t.Fatalf("certificate key %T; want ECDSA P-256", cert.PrivateKey)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, _ := x509.ParseCertificate(der)
		inter.AddCert(c)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "app.test", Roots: s.pebble.Roots(), Intermediates: inter}); err != nil {
		t.Errorf("certificate does not verify against Pebble's root: %v", err)
	}
	// The handshake path serves it.
	got, err := s.src.GetCertificate(&tls.ClientHelloInfo{ServerName: "APP.test"})
	if err != nil || got != cert {
		t.Errorf("GetCertificate(APP.test) = %v, %v; want the ACME certificate", got, err)
	}
	if ok, failed := s.obs.counts(); ok != 1 || failed != 0 {
		t.Errorf("orders ok=%d error=%d; want 1, 0", ok, failed)
	}
	if exp := s.obs.expiry["app.test"]; !exp.Equal(cert.Leaf.NotAfter) {
		t.Errorf("expiry reported %v; want %v", exp, cert.Leaf.NotAfter)
	}
	if !strings.Contains(s.logs.String(), "challenge=tls-alpn-01") {
		t.Errorf("log does not name the challenge:\n%s", s.logs)
	}

	// A restart reads it from the cache, without an order.
	orders := s.pebble.Orders()
	again, err := New(Options{ACME: &ACMEOptions{Domains: []string{"app.test"}, CacheDir: s.dir, DirectoryURL: s.pebble.DirectoryURL}})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := again.GetCertificate(&tls.ClientHelloInfo{ServerName: "app.test"})
	if err != nil || c2.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) != 0 {
		t.Fatalf("after restart: %v, %v; want serial %x from the cache", c2, err, cert.Leaf.SerialNumber)
	}
	if n := s.pebble.Orders(); n != orders {
		t.Errorf("Pebble got %d new orders after the restart; want 0", n-orders)
	}
}

// A failing validation is logged with the CA's problem, saved in last-error.json, counted,
// and retried after the backoff; once the problem is fixed, the retry succeeds and the
// record is removed.
func TestAcme_Pebble_FailureRetriedThenResolved(t *testing.T) {
	s := startPebbleSource(t, false, 500*time.Millisecond)
	s.waitFailed(t, 2)
	// The order is counted when it ends, and its record saved just after.
	var le *LastError
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		le, err = ReadLastError(s.dir)
		if err == nil && le.Attempt >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("last-error.json of the second failure: %+v, %v", le, err)
		}
	}
	if le.Domain != "app.test" || le.Attempt < 2 || le.Challenge != "tls-alpn-01" ||
		!strings.HasPrefix(le.CAErrorType, "urn:ietf:params:acme:error:") || !strings.Contains(le.CAErrorDetail, "Failed to connect") ||
		le.Directory != s.pebble.DirectoryURL ||
		!le.NextAttempt.After(le.Time) {
		t.Errorf("last error = %+v", le)
	}
	// Pebble 2.4 reports a refused connection as "unauthorized"; Let's Encrypt as "connection".
	if n := strings.Count(s.logs.String(), "tls-alpn-01 challenge for app.test failed: urn:ietf:params:acme:error:"); n < 2 {
		t.Errorf("CA problem logged %d times; want once per attempt\n%s", n, s.logs)
	}
	if _, err := s.src.GetCertificate(&tls.ClientHelloInfo{ServerName: "app.test"}); err == nil {
		t.Error("GetCertificate without a certificate: want an error")
	}

	s.listen() // the port opens: the next retry validates
	waitCert(t, s.src, "app.test", 30*time.Second)
	if _, err := ReadLastError(s.dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("last-error.json after success: %v; want it removed", err)
	}
}

// writeCached puts cert in dir as autocert would have cached it for name.
func writeCached(t *testing.T, dir, name string, cert tls.Certificate) {
	t.Helper()
	data, err := encodeCached(&cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Static and ACME certificates side by side: SNI picks the static one when its names
// match, the ACME one for a listed domain, and the first static one for anything else.
func TestGetCertificate_StaticAndAcme(t *testing.T) {
	dir := t.TempDir()
	acmeCert := mustSelfSigned(t, "app.test")
	writeCached(t, dir, "app.test", acmeCert)
	static := mustSelfSigned(t, "static.test")
	ca, hits := countingCA(t)
	obs := &acmeObserver{}
	src, err := New(Options{Static: []tls.Certificate{static}, ACME: &ACMEOptions{
		Domains: []string{"app.test", "new.test"}, DirectoryURL: ca.URL, CacheDir: dir, Observer: obs,
	}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		sni  string
		want *x509.Certificate
	}{
		{"static.test", static.Leaf},
		{"app.test", acmeCert.Leaf},
		{"App.Test.", acmeCert.Leaf},
		{"new.test", static.Leaf}, // listed, not obtained yet: the default certificate
		{"other.test", static.Leaf},
	}
	for _, tt := range tests {
		got, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: tt.sni})
		if err != nil || !got.Leaf.Equal(tt.want) {
			t.Errorf("GetCertificate(%q) = %v, %v; want the certificate for %v", tt.sni, got, err, tt.want.DNSNames)
		}
	}
	if exp := obs.expiry["app.test"]; !exp.Equal(acmeCert.Leaf.NotAfter) {
		t.Errorf("expiry of the cached certificate reported as %v; want %v", exp, acmeCert.Leaf.NotAfter)
	}
	if hits.Load() != 0 {
		t.Errorf("the CA got %d requests; want 0", hits.Load())
	}
}

// A cached certificate that expired, or is for another name, is not served.
func TestNew_AcmeIgnoresUnusableCache(t *testing.T) {
	dir := t.TempDir()
	expired, err := SelfSigned([]string{"app.test"}, -time.Minute) // NotAfter in the past
	if err != nil {
		t.Fatal(err)
	}
	writeCached(t, dir, "app.test", expired)
	writeCached(t, dir, "b.test", mustSelfSigned(t, "not-b.test"))
	log, logs := testutil.NewLogger(t)
	src, err := New(Options{Logger: log, ACME: &ACMEOptions{Domains: []string{"app.test", "b.test"}, CacheDir: dir}})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"app.test", "b.test"} {
		if c, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: name}); err == nil {
			t.Errorf("GetCertificate(%q) = %v; want no certificate", name, c.Leaf.DNSNames)
		}
	}
	if n := strings.Count(logs.String(), "ignoring cached certificate"); n != 2 {
		t.Errorf("%d cached certificates reported as ignored; want 2\n%s", n, logs)
	}
}

func (o *acmeObserver) renewalOf(domain string) time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.renewal[domain]
}
