package e2e

// End-to-end tests of automatic certificates: the real edgeproxy binary obtains them from
// a real Pebble (Let's Encrypt's test CA) with pebble-challtestsrv as its DNS, validating
// through the edge's own listeners, and serves a real Django behind it. Each test proves
// which challenge type was used by making the other one impossible.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// acmeDomain is the test site's name; pebble-challtestsrv resolves every name to 127.0.0.1.
const acmeDomain = "app.test"

// acmeSiteOptions shape one test's set-up.
type acmeSiteOptions struct {
	// http01 gives the edge a plain-HTTP listener and points Pebble's HTTP-01 validations
	// at it, and Pebble's TLS-ALPN-01 validations at a closed port. Otherwise TLS-ALPN-01
	// goes to the edge's HTTPS listener, and HTTP-01 to a closed port (the edge has no
	// plain-HTTP listener).
	http01 bool
	// validity is the lifetime of Pebble's certificates; 0 means Pebble's default.
	validity time.Duration
	// ip orders a certificate for 127.0.0.1 (tls.acme.ip_addresses) in Pebble's
	// six-day "shortlived" profile, instead of one for app.test.
	ip bool
}

// acmeSite is Pebble, Django, and the configuration of an edge in front of Django that
// gets its certificate from Pebble.
type acmeSite struct {
	pebble                      *testutil.Pebble
	django                      *testutil.Django
	httpsAddr, httpAddr, metric string
	cacheDir, configFile        string
	roots                       *x509.CertPool // Pebble's issuing root
}

func newACMESite(t *testing.T, opts acmeSiteOptions) *acmeSite {
	t.Helper()
	s := &acmeSite{
		httpsAddr: testutil.LoopbackAddr(t, "127.0.0.1"),
		metric:    testutil.LoopbackAddr(t, "127.0.0.1"),
		cacheDir:  filepath.Join(t.TempDir(), "acme"),
	}
	po := testutil.PebbleOptions{
		CertificateValidity: opts.validity,
		// Every order validates: no authorization reused from an earlier order.
		Env: []string{"PEBBLE_AUTHZREUSE=0"},
	}
	identifiers, site := "domains: ["+acmeDomain+"]", acmeDomain
	if opts.ip {
		po.Profiles = map[string]time.Duration{"shortlived": 6 * 24 * time.Hour}
		identifiers, site = "ip_addresses: [127.0.0.1]\n    profile: shortlived", "127.0.0.1"
	}
	if opts.http01 {
		s.httpAddr = testutil.LoopbackAddr(t, "127.0.0.1")
		po.HTTPPort = acmePort(t, s.httpAddr)
		// TLSPort 0: a free port nothing listens on.
	} else {
		po.TLSPort = acmePort(t, s.httpsAddr)
	}
	s.pebble = testutil.StartPebble(t, po)
	s.roots = s.pebble.Roots()
	s.django = testutil.StartDjango(t, testutil.LoopbackAddr(t, "127.0.0.1"), testutil.DjangoOptions{
		AllowedHosts: []string{site}, Instance: "acme",
	})

	listenHTTP := ""
	if s.httpAddr != "" {
		listenHTTP = fmt.Sprintf("  http: %q\n  http_mode: redirect\n", s.httpAddr)
	}
	config := fmt.Sprintf(`listen:
  https: %q
%s  metrics: %q
tls:
  acme:
    %s
    email: ops@%s
    directory: %q
    ca_roots: %q
    cache_dir: %q
pool:
  targets: [%q]
  health_check: {host: %s, interval: 1s, healthy_threshold: 2}
`, s.httpsAddr, listenHTTP, s.metric, identifiers, acmeDomain, s.pebble.DirectoryURL, s.pebble.CARootsFile, s.cacheDir, s.django.Addr, site)
	s.configFile = filepath.Join(t.TempDir(), "edgeproxy.yaml")
	if err := os.WriteFile(s.configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func acmePort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// start runs `edgeproxy run` and waits until it serves; it returns the process and when
// it was started.
func (s *acmeSite) start(t *testing.T) (*testutil.Proc, time.Time) {
	t.Helper()
	bin := testutil.BuildEdgeproxy(t)
	started := time.Now()
	p := testutil.StartProcWith(t, testutil.ProcOptions{Name: "edgeproxy"}, bin, "run", "-config", s.configFile)
	if !p.WaitForOutput("edgeproxy serving", 15*time.Second) {
		t.Fatalf("edgeproxy did not start:\n%s", p.Output())
	}
	return p, started
}

// stop sends SIGTERM and waits for a clean exit.
func acmeStop(t *testing.T, p *testutil.Proc) {
	t.Helper()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(40 * time.Second); err != nil || code != 0 {
		t.Fatalf("edgeproxy exit %d, %v\n%s", code, err, p.Output())
	}
}

// handshake opens a new TLS connection to the edge for name, verifying the certificate
// against Pebble's root, and returns the leaf.
func (s *acmeSite) handshake(name string) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", s.httpsAddr, &tls.Config{
		ServerName: name, RootCAs: s.roots, NextProtos: []string{"h2", "http/1.1"},
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// waitCertificate polls handshakes until the edge presents a certificate that verifies
// against Pebble's root, and returns it.
func (s *acmeSite) waitCertificate(t *testing.T, p *testutil.Proc, timeout time.Duration) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		leaf, err := s.handshake(acmeDomain)
		if err == nil {
			return leaf
		}
		lastErr = err
		if p.Exited() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no trusted certificate for %s within %v: %v\n%s", acmeDomain, timeout, lastErr, p.Output())
	return nil
}

// client is an HTTPS client that trusts Pebble's root and dials every name to the edge.
func (s *acmeSite) client() *http.Client {
	dialer := &net.Dialer{Timeout: 3 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: s.roots},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, s.httpsAddr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// getDjango fetches https://app.test/ through the edge and checks that Django answered.
func (s *acmeSite) getDjango(t *testing.T) {
	t.Helper()
	testutil.WaitHTTP(t, "https://"+acmeDomain+"/", s.client(), http.StatusOK, 15*time.Second)
	resp, err := s.client().Get("https://" + acmeDomain + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok acme" {
		t.Fatalf("GET https://%s/: %s %q; want 200 \"ok acme\" from Django", acmeDomain, resp.Status, body)
	}
}

// metricValue returns the value of the sample whose line starts with series, or -1.
func (s *acmeSite) metricValue(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.metric + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %q", series, line)
			}
			return v
		}
	}
	return -1
}

// checkIssued checks what every issued certificate must be: ECDSA P-256, for the domain.
func checkIssued(t *testing.T, leaf *x509.Certificate) {
	t.Helper()
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("certificate key %T; want ECDSA P-256", leaf.PublicKey)
	}
	if err := leaf.VerifyHostname(acmeDomain); err != nil {
		t.Error(err)
	}
}

var tookRE = regexp.MustCompile(`msg="acme: certificate obtained for app.test".* took=([0-9.]+m?s)`)

// reportFirstCertificate logs the time from start to the first trusted handshake, and the
// order's own duration from the edge's log.
func reportFirstCertificate(t *testing.T, challenge string, started time.Time, p *testutil.Proc) {
	took := "?"
	if m := tookRE.FindStringSubmatch(p.Output()); m != nil {
		took = m[1]
	}
	t.Logf("%s: first certificate %v after edgeproxy started (order took %s)", challenge, time.Since(started).Round(time.Millisecond), took)
}

// TLS-ALPN-01 alone is enough: the edge has no plain-HTTP listener and Pebble's HTTP-01
// port is closed, so the certificate can only come from validations on the HTTPS listener.
func TestAcme_TLSALPN01(t *testing.T) {
	t.Parallel()
	s := newACMESite(t, acmeSiteOptions{})
	p, started := s.start(t)
	leaf := s.waitCertificate(t, p, 60*time.Second)
	reportFirstCertificate(t, "tls-alpn-01", started, p)
	checkIssued(t, leaf)
	s.getDjango(t)

	out := p.Output()
	if !strings.Contains(out, "answering the TLS-ALPN-01 challenge for app.test") || !strings.Contains(out, "challenge=tls-alpn-01") {
		t.Errorf("log does not show a TLS-ALPN-01 validation:\n%s", out)
	}
	if strings.Contains(out, "HTTP-01 challenge") {
		t.Errorf("log mentions HTTP-01, which this edge cannot answer:\n%s", out)
	}
	if got := s.metricValue(t, `edgeproxy_acme_orders_total{result="ok"}`); got != 1 {
		t.Errorf("edgeproxy_acme_orders_total{result=\"ok\"} = %v; want 1", got)
	}
	if got := s.metricValue(t, `edgeproxy_certificate_expiry_timestamp_seconds{domain="app.test"}`); got != float64(leaf.NotAfter.Unix()) {
		t.Errorf("expiry metric = %v; want %d", got, leaf.NotAfter.Unix())
	}
	if n := s.pebble.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders; want 1 (an ECDSA certificate at start-up, no second order)", n)
	}
}

// HTTP-01 alone is enough: Pebble's TLS-ALPN-01 port is closed, so after that challenge
// fails the edge's plain-HTTP listener answers HTTP-01, and still redirects the rest.
func TestAcme_HTTP01(t *testing.T) {
	t.Parallel()
	s := newACMESite(t, acmeSiteOptions{http01: true})
	p, started := s.start(t)
	leaf := s.waitCertificate(t, p, 60*time.Second)
	reportFirstCertificate(t, "http-01 (after a failed tls-alpn-01)", started, p)
	checkIssued(t, leaf)
	s.getDjango(t)

	out := p.Output()
	if !strings.Contains(out, "answering the HTTP-01 challenge for app.test") || !strings.Contains(out, "challenge=http-01") {
		t.Errorf("log does not show an HTTP-01 validation:\n%s", out)
	}
	if strings.Contains(out, "answering the TLS-ALPN-01 challenge") {
		t.Errorf("a TLS-ALPN-01 validation reached the edge, whose TLS-ALPN-01 port is closed to Pebble:\n%s", out)
	}
	// The plain-HTTP listener still redirects everything that is not a challenge.
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.httpAddr+"/admin/?x=1", nil)
	req.Host = acmeDomain
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := "https://" + acmeDomain + ":" + strconv.Itoa(acmePort(t, s.httpsAddr)) + "/admin/?x=1"
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
		t.Errorf("GET http://app.test/admin/?x=1: %s to %q; want 308 to %q", resp.Status, resp.Header.Get("Location"), want)
	}
	// A challenge path for a token nobody ordered is not redirected.
	req, _ = http.NewRequest(http.MethodGet, "http://"+s.httpAddr+"/.well-known/acme-challenge/nothing", nil)
	req.Host = acmeDomain
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown challenge token: %s; want 404", resp.Status)
	}
}

// A restart reuses the cached certificate: same serial, served at once, no new order.
func TestAcme_RestartReusesCache(t *testing.T) {
	t.Parallel()
	s := newACMESite(t, acmeSiteOptions{})
	p, _ := s.start(t)
	first := s.waitCertificate(t, p, 60*time.Second)
	orders := s.pebble.Orders()
	acmeStop(t, p)

	p2, _ := s.start(t)
	leaf, err := s.handshake(acmeDomain)
	if err != nil {
		t.Fatalf("handshake right after restart: %v\n%s", err, p2.Output())
	}
	if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Errorf("serial after restart %x; want %x", leaf.SerialNumber, first.SerialNumber)
	}
	s.getDjango(t)
	out := p2.Output()
	if !strings.Contains(out, "using cached certificate for app.test") || strings.Contains(out, "acme: ordering") {
		t.Errorf("second run did not just use the cache:\n%s", out)
	}
	if n := s.pebble.Orders(); n != orders {
		t.Errorf("Pebble got %d new orders after the restart; want 0", n-orders)
	}
}

// A name that is not in tls.acme.domains is refused (no fallback certificate here), logged
// once however many handshakes ask for it, counted, and never ordered.
func TestAcme_UnlistedNameRefusedWithoutOrder(t *testing.T) {
	t.Parallel()
	s := newACMESite(t, acmeSiteOptions{})
	p, _ := s.start(t)
	s.waitCertificate(t, p, 60*time.Second)
	for range 3 {
		if _, err := s.handshake("other.test"); err == nil {
			t.Fatal("handshake for other.test succeeded; want it refused")
		}
	}
	if !p.WaitForOutput("server name other.test, which no certificate covers", 5*time.Second) {
		t.Fatalf("other.test not logged:\n%s", p.Output())
	}
	time.Sleep(200 * time.Millisecond) // any repeated line would have landed by now
	out := p.Output()
	if n := strings.Count(out, "server name other.test, which no certificate covers"); n != 1 {
		t.Errorf("other.test logged %d times; want once\n%s", n, out)
	}
	if got := s.metricValue(t, "edgeproxy_tls_unknown_server_name_total"); got != 3 {
		t.Errorf("edgeproxy_tls_unknown_server_name_total = %v; want 3", got)
	}
	if n := s.pebble.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders; want 1 (app.test only)", n)
	}
	if strings.Contains(s.pebble.Output(), "other.test") {
		t.Errorf("Pebble heard of other.test:\n%s", s.pebble.Output())
	}
}

// With the CA gone after issuance, the edge keeps serving its certificate; when renewal
// comes due it tries, fails, says so in the log, the metrics and last-error.json, and
// keeps serving.
func TestAcme_CAStoppedAfterIssuance(t *testing.T) {
	t.Parallel()
	// 30s certificates: renewal is due 10s (a third) before expiry, about 20s in.
	s := newACMESite(t, acmeSiteOptions{validity: 30 * time.Second})
	p, _ := s.start(t)
	first := s.waitCertificate(t, p, 60*time.Second)
	s.pebble.Stop()

	if !p.WaitForOutput("acme: order for app.test failed", time.Until(first.NotAfter)) {
		t.Fatalf("no failed renewal logged before expiry:\n%s", p.Output())
	}
	for i := range 5 {
		leaf, err := s.handshake(acmeDomain)
		if err != nil {
			t.Fatalf("handshake %d during the outage: %v", i, err)
		}
		if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Fatalf("serial %x during the outage; want %x", leaf.SerialNumber, first.SerialNumber)
		}
	}
	s.getDjango(t)
	if !strings.Contains(p.Output(), "still serving the current certificate") {
		t.Errorf("the failure log does not say the certificate is still served:\n%s", p.Output())
	}
	if got := s.metricValue(t, `edgeproxy_acme_orders_total{result="error"}`); got < 1 {
		t.Errorf("edgeproxy_acme_orders_total{result=\"error\"} = %v; want >= 1", got)
	}
	data, err := os.ReadFile(filepath.Join(s.cacheDir, "last-error.json"))
	if err != nil {
		t.Fatal(err)
	}
	var le struct {
		Domain      string    `json:"domain"`
		Error       string    `json:"error"`
		NextAttempt time.Time `json:"next_attempt"`
	}
	if err := json.Unmarshal(data, &le); err != nil || le.Domain != acmeDomain || le.Error == "" || le.NextAttempt.IsZero() {
		t.Errorf("last-error.json = %s (%v)", data, err)
	}
	if p.Exited() {
		t.Fatalf("edgeproxy exited:\n%s", p.Output())
	}
}

// Renewal replaces the certificate before it expires, without a restart, while clients
// keep connecting: no handshake fails.
func TestAcme_RenewalWithoutFailedHandshakes(t *testing.T) {
	t.Parallel()
	// 90s certificates renew when a third remains: about 60s in.
	s := newACMESite(t, acmeSiteOptions{validity: 90 * time.Second})
	p, _ := s.start(t)
	first := s.waitCertificate(t, p, 60*time.Second)

	var (
		mu       sync.Mutex
		failures []string
		count    int
		renewed  *x509.Certificate
	)
	ctx, cancel := context.WithTimeout(context.Background(), time.Until(first.NotAfter))
	defer cancel()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				leaf, err := s.handshake(acmeDomain)
				mu.Lock()
				count++
				switch {
				case err != nil:
					failures = append(failures, fmt.Sprintf("worker %d at %s: %v", w, time.Now().Format("15:04:05.000"), err))
				case leaf.SerialNumber.Cmp(first.SerialNumber) != 0 && renewed == nil:
					renewed = leaf
					cancel()
				}
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if renewed == nil {
		t.Fatalf("no new certificate before the first expired at %s\n%s", first.NotAfter.Format(time.RFC3339), p.Output())
	}
	t.Logf("renewed %v before expiry: serial %x -> %x after %d handshakes", time.Until(first.NotAfter).Round(time.Second), first.SerialNumber, renewed.SerialNumber, count)
	checkIssued(t, renewed)
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Errorf("renewed certificate expires %v, not after the first's %v", renewed.NotAfter, first.NotAfter)
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d handshakes failed during renewal:\n%s", len(failures), count, strings.Join(failures, "\n"))
	}
	if got := s.metricValue(t, `edgeproxy_acme_orders_total{result="ok"}`); got != 2 {
		t.Errorf("edgeproxy_acme_orders_total{result=\"ok\"} = %v; want 2", got)
	}
	if got := s.metricValue(t, `edgeproxy_certificate_expiry_timestamp_seconds{domain="app.test"}`); got != float64(renewed.NotAfter.Unix()) {
		t.Errorf("expiry metric = %v; want the renewed certificate's %d", got, renewed.NotAfter.Unix())
	}
}

// A reload (SIGHUP) keeps the ACME certificate and its renewal; a changed tls.acme is
// reported as needing a restart, and no new order is placed.
func TestAcme_ReloadKeepsCertificate(t *testing.T) {
	t.Parallel()
	s := newACMESite(t, acmeSiteOptions{})
	p, _ := s.start(t)
	first := s.waitCertificate(t, p, 60*time.Second)
	orders := s.pebble.Orders()

	data, err := os.ReadFile(s.configFile)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(data), "email: ops@app.test", "email: other@app.test", 1)
	changed = strings.Replace(changed, "interval: 1s", "interval: 2s", 1)
	if err := os.WriteFile(s.configFile, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !p.WaitForOutput("reload done", 10*time.Second) {
		t.Fatalf("no reload:\n%s", p.Output())
	}
	if !strings.Contains(p.Output(), "tls.acme changed; it takes effect only after a restart") {
		t.Errorf("changed tls.acme not reported:\n%s", p.Output())
	}
	leaf, err := s.handshake(acmeDomain)
	if err != nil || leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("after reload: %v, %v; want serial %x", leaf, err, first.SerialNumber)
	}
	s.getDjango(t)
	if n := s.pebble.Orders(); n != orders {
		t.Errorf("Pebble got %d new orders after the reload; want 0", n-orders)
	}
}
