package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// ACMEOptions configure automatic certificates (Options.ACME).
//
// Each domain gets its own ECDSA P-256 certificate. Certificates are ordered in the
// background from Source.Start, not on a visitor's handshake: at start-up for a domain
// with no usable certificate in CacheDir, and again when RenewBefore is reached. A failed
// order is retried with capped exponential backoff; meanwhile the certificate in hand, if
// any, keeps being served. The challenges are TLS-ALPN-01 on the HTTPS listener and, once
// Source.HTTPHandler has been called for a plain-HTTP listener, HTTP-01 as the second
// choice.
type ACMEOptions struct {
	// Domains are the exact DNS names to obtain certificates for. Only these are ever
	// ordered; a handshake for any other name never reaches the CA.
	Domains []string
	// Email is the contact address of the ACME account; empty means none.
	Email string
	// DirectoryURL is the CA's ACME directory; empty means Let's Encrypt production
	// (autocert.DefaultACMEDirectory).
	DirectoryURL string
	// RootCAs verify the CA's own HTTPS certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// CacheDir holds the account key, one file per certificate (autocert's DirCache
	// format, so autocert can read it) and LastErrorFile. It is created with mode 0700 if
	// missing, and must be writable: New fails otherwise. Required.
	CacheDir string
	// RenewBefore is how long before expiry a certificate is renewed. Zero means when a
	// third of its lifetime remains. It is capped at half the lifetime, so that a value
	// longer than the CA's lifetimes cannot make every new certificate due at once.
	RenewBefore time.Duration
	// RetryMin is the wait after the first failed order for a domain; each further
	// failure triples it, up to RetryMax. Zero means 1 minute and 1 hour. A Retry-After
	// from the CA (rate limits) makes the wait longer, never shorter.
	RetryMin, RetryMax time.Duration
	// Observer is told about orders and certificate expiry; nil means nothing is recorded.
	Observer ACMEObserver
}

// ACMEObserver is told about ACME orders and certificates. telemetry.Metrics implements it.
type ACMEObserver interface {
	// ACMEOrder records one finished order attempt.
	ACMEOrder(ok bool)
	// CertificateExpiry records the expiry of the certificate now served for domain.
	CertificateExpiry(domain string, notAfter time.Time)
	// CertificateNotBefore records the start of validity of that certificate.
	CertificateNotBefore(domain string, notBefore time.Time)
}

const (
	defaultRetryMin = time.Minute
	defaultRetryMax = time.Hour
	// retryFactor is the backoff's growth per failure. With the defaults a domain is
	// tried at most 5 times in its first hour of failures: Let's Encrypt allows 5 failed
	// validations per name and hour, and an order may fail two (TLS-ALPN-01, then HTTP-01).
	retryFactor = 3
	// orderTimeout bounds one order attempt (autocert bounds its own work by 5 minutes).
	orderTimeout = 6 * time.Minute
	// maxSleep bounds each wait of a domain's loop, which then looks at the clock and its
	// certificate again, so that a clock step or a long suspend cannot delay a renewal.
	maxSleep = time.Hour
	// accountKeyName is autocert's cache key for the account key, so that a cache
	// directory works with both.
	accountKeyName = "acme_account+key"
)

// acmeManager obtains and renews the certificates of ACMEOptions.Domains.
//
// It is built on autocert.Manager, but drives the orders itself: autocert orders on a
// handshake for any name its HostPolicy allows, retries a failed order on the next
// handshake a minute later, and renews on timers that log nothing. Here handshakes are
// answered only from certificates already in hand, and each order attempt is one call of
// a fresh autocert.Manager's GetCertificate from the domain's own goroutine (run), with a
// ClientHello that advertises ECDSA. That Manager's CA client goes through a gate
// (caTransport) that is open only during the attempt, so nothing autocert starts by
// itself afterwards (its renewal timer) can reach the CA.
type acmeManager struct {
	opts    ACMEOptions
	log     *slog.Logger
	cache   autocert.DirCache
	base    http.RoundTripper // to the CA; shared by the orders' gates
	domains map[string]*acmeDomain
	names   []string // Domains normalized, in configuration order

	// http01 is set once Source.HTTPHandler has been called: HTTP-01 is then tried
	// after TLS-ALPN-01.
	http01 atomic.Bool

	// now returns the current time; tests replace it.
	now func() time.Time

	// accountMu guards accountKey.
	accountMu  sync.Mutex
	accountKey crypto.Signer

	// lastErrMu serialises writes of LastErrorFile.
	lastErrMu sync.Mutex

	started atomic.Bool
	wg      sync.WaitGroup // the domains' loops and their orders
}

// acmeDomain is the live state of one domain.
type acmeDomain struct {
	name    string
	current atomic.Pointer[servedCert]

	// orderMu guards order.
	orderMu sync.Mutex
	order   *acmeOrder // the attempt in flight, whose Manager answers challenges; nil if none

	// announced is set once a handshake has found no certificate yet, so that is logged once.
	announced atomic.Bool
}

// servedCert is a certificate in use and when to renew it; replaced whole, never edited.
type servedCert struct {
	cert    *tls.Certificate // Leaf set
	renewAt time.Time
}

func newACME(opts ACMEOptions, log *slog.Logger) (*acmeManager, error) {
	if len(opts.Domains) == 0 {
		return nil, errors.New("certs: ACME without domains")
	}
	if opts.CacheDir == "" {
		return nil, errors.New("certs: ACME needs a cache directory")
	}
	if opts.DirectoryURL == "" {
		opts.DirectoryURL = autocert.DefaultACMEDirectory
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = defaultRetryMin
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = defaultRetryMax
	}
	opts.RetryMax = max(opts.RetryMax, opts.RetryMin)
	if err := prepareCacheDir(opts.CacheDir, log); err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12}
	a := &acmeManager{
		opts:    opts,
		log:     log,
		cache:   autocert.DirCache(opts.CacheDir),
		base:    tr,
		domains: map[string]*acmeDomain{},
		now:     time.Now,
	}
	for _, d := range opts.Domains {
		name := normalizeName(d)
		if a.domains[name] != nil {
			continue
		}
		a.domains[name] = &acmeDomain{name: name}
		a.names = append(a.names, name)
	}
	for _, name := range a.names {
		a.loadCached(a.domains[name])
	}
	return a, nil
}

// prepareCacheDir creates dir (mode 0700) if needed and checks that it is writable: a
// certificate that cannot be saved would be ordered again at every start, into the CA's
// rate limits.
func prepareCacheDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("certs: ACME cache directory: %w", err)
	}
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn(fmt.Sprintf("ACME cache directory %s has mode %04o; it holds private keys: chmod 700 it", dir, fi.Mode().Perm()))
	}
	f, err := os.CreateTemp(dir, ".write-test-")
	if err != nil {
		return fmt.Errorf("certs: ACME cache directory %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// domain returns the state of a listed domain, or nil.
func (a *acmeManager) domain(serverName string) *acmeDomain {
	return a.domains[normalizeName(serverName)]
}

// loadCached serves the cached certificate of d, if it is usable.
func (a *acmeManager) loadCached(d *acmeDomain) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, err := a.cache.Get(ctx, d.name)
	if errors.Is(err, autocert.ErrCacheMiss) {
		return
	}
	if err != nil {
		a.log.Warn("acme: reading cached certificate: "+err.Error(), "domain", d.name)
		return
	}
	cert, err := parseCached(data, d.name, a.now())
	if err != nil {
		a.log.Warn(fmt.Sprintf("acme: ignoring cached certificate for %s: %v", d.name, err), "domain", d.name)
		return
	}
	a.serve(d, cert)
	a.log.Info(fmt.Sprintf("acme: using cached certificate for %s", d.name), "domain", d.name,
		"serial", serialHex(cert.Leaf), "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
		"renew_at", d.current.Load().renewAt.UTC().Format(time.RFC3339))
}

// parseCached reads autocert's cache format (the private key, then the chain, all PEM)
// and checks that the certificate is current and for name.
func parseCached(data []byte, name string, now time.Time) (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, err
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
		cert.Leaf = leaf
	}
	if err := leaf.VerifyHostname(name); err != nil {
		return nil, err
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &cert, nil
}

// encodeCached writes cert in autocert's cache format.
func encodeCached(cert *tls.Certificate) ([]byte, error) {
	var buf bytes.Buffer
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("certs: unexpected private key type %T", cert.PrivateKey)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	_ = pem.Encode(&buf, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	for _, c := range cert.Certificate {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c})
	}
	return buf.Bytes(), nil
}

// serve makes cert the certificate of d and schedules its renewal.
func (a *acmeManager) serve(d *acmeDomain, cert *tls.Certificate) {
	if o := a.opts.Observer; o != nil {
		o.CertificateExpiry(d.name, cert.Leaf.NotAfter)
		o.CertificateNotBefore(d.name, cert.Leaf.NotBefore)
	}
	d.current.Store(&servedCert{cert: cert, renewAt: a.renewAt(cert.Leaf)})
}

// renewAt is when a certificate is due for renewal: RenewBefore (at most half the
// lifetime) or a third of the lifetime before expiry, less a jitter of up to a tenth of
// that (at most an hour), so that many edges sharing a CA do not renew in step.
func (a *acmeManager) renewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	before := life / 3
	if rb := a.opts.RenewBefore; rb > 0 {
		before = min(rb, life/2)
	}
	jitter := time.Duration(0)
	if j := min(before/10, time.Hour); j > 0 {
		if n, err := rand.Int(rand.Reader, big.NewInt(int64(j))); err == nil {
			jitter = time.Duration(n.Int64())
		}
	}
	return leaf.NotAfter.Add(-before - jitter)
}

// roughly rounds d for a log line.
func roughly(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(time.Second)
}

func serialHex(leaf *x509.Certificate) string { return leaf.SerialNumber.Text(16) }

// start launches one loop per domain; they end when ctx is done.
func (a *acmeManager) start(ctx context.Context) {
	if !a.started.CompareAndSwap(false, true) {
		return
	}
	for _, name := range a.names {
		d := a.domains[name]
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.run(ctx, d)
		}()
	}
}

// run keeps d supplied with a certificate until ctx is done: it orders one when there is
// none or the current one is due, and retries failures with capped exponential backoff.
func (a *acmeManager) run(ctx context.Context, d *acmeDomain) {
	failures := 0
	var retryAt time.Time
	for {
		now := a.now()
		wake := now
		if cur := d.current.Load(); cur != nil && now.Before(cur.renewAt) {
			wake = cur.renewAt
		}
		if retryAt.After(wake) {
			wake = retryAt
		}
		if wait := wake.Sub(now); wait > 0 {
			if !sleepCtx(ctx, min(wait, maxSleep)) {
				return
			}
			continue
		}
		o, err := a.orderOnce(ctx, d, failures+1)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures, retryAt = 0, time.Time{}
			continue
		}
		failures++
		delay := a.backoff(failures, o.retryAfter())
		retryAt = a.now().Add(delay)
		a.orderFailed(d, o, err, failures, retryAt)
	}
}

// backoff is the wait after the n-th failure in a row: RetryMin·3^(n-1) up to RetryMax,
// give or take 10%, and at least what the CA asked for in a Retry-After.
func (a *acmeManager) backoff(n int, retryAfter time.Duration) time.Duration {
	d := a.opts.RetryMin
	for i := 1; i < n && d < a.opts.RetryMax; i++ {
		d *= retryFactor
	}
	d = min(d, a.opts.RetryMax)
	if j := int64(d / 5); j > 0 {
		if r, err := rand.Int(rand.Reader, big.NewInt(j)); err == nil {
			d += time.Duration(r.Int64()) - d/10
		}
	}
	return max(d, min(retryAfter, 24*time.Hour))
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// orderOnce runs one order attempt for d and, on success, serves and saves the new
// certificate. It returns the attempt (for its CA problems) and its error.
func (a *acmeManager) orderOnce(ctx context.Context, d *acmeDomain, attempt int) (*acmeOrder, error) {
	reason := "no certificate yet"
	if cur := d.current.Load(); cur != nil {
		reason = "renewal: expires at " + cur.cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	challenges := "tls-alpn-01"
	if a.http01.Load() {
		challenges += ", then http-01"
	}
	a.log.Info(fmt.Sprintf("acme: ordering a certificate for %s (%s)", d.name, reason),
		"domain", d.name, "directory", a.opts.DirectoryURL, "challenges", challenges, "attempt", attempt)
	start := time.Now()
	cert, o, err := a.obtain(ctx, d)
	if err != nil && ctx.Err() != nil {
		return o, ctx.Err() // shutting down: neither a success nor a failure
	}
	if err == nil {
		err = checkObtained(cert, d.name)
	}
	if obs := a.opts.Observer; obs != nil {
		obs.ACMEOrder(err == nil)
	}
	if err != nil {
		return o, err
	}
	// Save before serving, and even if shutting down meanwhile: the certificate is paid
	// for in rate limit, and a restart must find it.
	saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if data, err := encodeCached(cert); err != nil {
		a.log.Error("acme: cannot encode certificate for the cache: "+err.Error(), "domain", d.name)
	} else if err := a.cache.Put(saveCtx, d.name, data); err != nil {
		a.log.Error(fmt.Sprintf("acme: cannot save the certificate for %s in %s: %v (it would be ordered again at the next start)", d.name, a.opts.CacheDir, err), "domain", d.name)
	}
	a.clearLastError(d.name)
	a.serve(d, cert)
	attrs := []any{"domain", d.name, "serial", serialHex(cert.Leaf),
		"not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
		"renew_at", d.current.Load().renewAt.UTC().Format(time.RFC3339),
		"took", time.Since(start).Round(time.Millisecond).String()}
	if ch := o.validatedBy(); ch != "" {
		attrs = append(attrs, "challenge", ch)
	}
	a.log.Info(fmt.Sprintf("acme: certificate obtained for %s", d.name), attrs...)
	return o, nil
}

// checkObtained makes sure the certificate is an ECDSA P-256 one for name, as ordered.
func checkObtained(cert *tls.Certificate, name string) error {
	if cert == nil || cert.Leaf == nil {
		return errors.New("certs: the CA returned no certificate")
	}
	if err := cert.Leaf.VerifyHostname(name); err != nil {
		return fmt.Errorf("certs: the CA's certificate: %w", err)
	}
	if k, ok := cert.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		return fmt.Errorf("certs: got a %T certificate key; want ECDSA P-256", cert.PrivateKey)
	}
	return nil
}

// orderFailed logs a failed attempt and saves it as LastErrorFile.
func (a *acmeManager) orderFailed(d *acmeDomain, o *acmeOrder, err error, failures int, retryAt time.Time) {
	now := a.now()
	msg := fmt.Sprintf("acme: order for %s failed: %v", d.name, err)
	le := LastError{Domain: d.name, Time: now.UTC(), Attempt: failures, Error: err.Error(),
		Directory: a.opts.DirectoryURL, NextAttempt: retryAt.UTC()}
	if p := o.lastProblem(); p != nil {
		le.CAErrorType, le.CAErrorDetail, le.Challenge = p.Type, p.Detail, p.Challenge
		if !strings.Contains(msg, p.Detail) {
			msg += fmt.Sprintf(" (CA: %s: %s)", p.Type, p.Detail)
		}
	}
	attrs := []any{"domain", d.name, "attempt", failures, "retry_in", roughly(retryAt.Sub(now)).String()}
	level := slog.LevelWarn
	switch cur := d.current.Load(); {
	case cur == nil:
		msg += "; no certificate for it yet, so its handshakes fail (or get the default certificate)"
		level = slog.LevelError
	case now.After(cur.cert.Leaf.NotAfter):
		msg += "; its certificate EXPIRED at " + cur.cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
		level = slog.LevelError
	default:
		msg += "; still serving the current certificate, which expires at " + cur.cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	a.log.Log(context.Background(), level, msg, attrs...)
	if werr := a.saveLastError(le); werr != nil {
		a.log.Warn(fmt.Sprintf("acme: cannot save %s: %v", LastErrorFile, werr))
	}
}

// account returns the ACME account key, loading it from the cache or creating it once.
func (a *acmeManager) account(ctx context.Context) (crypto.Signer, error) {
	a.accountMu.Lock()
	defer a.accountMu.Unlock()
	if a.accountKey != nil {
		return a.accountKey, nil
	}
	data, err := a.cache.Get(ctx, accountKeyName)
	switch {
	case err == nil:
		block, _ := pem.Decode(data)
		if block == nil || !strings.Contains(block.Type, "PRIVATE KEY") {
			return nil, fmt.Errorf("certs: %s in %s is not a PEM private key", accountKeyName, a.opts.CacheDir)
		}
		key, err := parseAccountKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: %s in %s: %w", accountKeyName, a.opts.CacheDir, err)
		}
		a.accountKey = key
	case errors.Is(err, autocert.ErrCacheMiss):
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := a.cache.Put(ctx, accountKeyName, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); err != nil {
			return nil, fmt.Errorf("certs: saving the ACME account key: %w", err)
		}
		a.accountKey = key
	default:
		return nil, fmt.Errorf("certs: reading the ACME account key: %w", err)
	}
	return a.accountKey, nil
}

func parseAccountKey(der []byte) (crypto.Signer, error) {
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	return s, nil
}

// acmeOrder is one order attempt: an autocert.Manager of its own, whose CA client goes
// through a gate that is open only while the attempt runs.
type acmeOrder struct {
	domain string
	m      *autocert.Manager
	http01 http.Handler // m's HTTP-01 responder; nil when HTTP-01 is off
	open   atomic.Bool  // the gate: requests to the CA are refused when false

	// mu guards problems, validated and retryAfterDur, written by the transport.
	mu            sync.Mutex
	problems      []caProblem
	validated     string // the challenge type of the authorization that became valid
	retryAfterDur time.Duration
}

// obtain runs one order for d and returns the certificate.
func (a *acmeManager) obtain(ctx context.Context, d *acmeDomain) (*tls.Certificate, *acmeOrder, error) {
	o := &acmeOrder{domain: d.name}
	key, err := a.account(ctx)
	if err != nil {
		return nil, o, err
	}
	ctx, cancel := context.WithTimeout(ctx, orderTimeout)
	defer cancel()
	o.m = &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      orderCache{a: a, o: o},
		HostPolicy: a.hostPolicy,
		Email:      a.opts.Email,
		// The Manager starts a renewal timer for the certificate it obtains, which
		// cannot be stopped from outside. With RenewBefore this short it fires at the
		// certificate's expiry; it then finds the certificate served by then in its
		// cache (orderCache.Get) and sleeps until that one's expiry. If there is none,
		// its order stops at the closed gate. Either way it never reaches the CA.
		RenewBefore: time.Microsecond,
		Client: &acme.Client{
			Key:          key,
			DirectoryURL: a.opts.DirectoryURL,
			UserAgent:    "edgeproxy",
			HTTPClient:   &http.Client{Transport: &caTransport{base: a.base, o: o, ctx: ctx, log: a.log}, Timeout: time.Minute},
			RetryBackoff: o.retryBackoff,
		},
	}
	if a.http01.Load() {
		o.http01 = o.m.HTTPHandler(http.NotFoundHandler())
	}
	o.open.Store(true)
	d.setOrder(o)
	defer func() {
		o.open.Store(false)
		d.setOrder(nil)
	}()

	type result struct {
		cert *tls.Certificate
		err  error
	}
	done := make(chan result, 1)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		cert, err := o.m.GetCertificate(ecdsaHello(d.name))
		done <- result{cert, err}
	}()
	select {
	case r := <-done:
		return r.cert, o, r.err
	case <-ctx.Done():
		// The gate closes on return, and in-flight requests end with ctx: the goroutine
		// above finishes soon, and Wait waits for it.
		return nil, o, ctx.Err()
	}
}

// ecdsaHello is the ClientHello of an order: autocert picks the key type from it, and a
// hello with only a server name would get an RSA certificate, then a second order (for
// ECDSA) at the first browser's visit.
func ecdsaHello(name string) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{
		ServerName:        name,
		CipherSuites:      []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		SupportedCurves:   []tls.CurveID{tls.X25519, tls.CurveP256},
		SignatureSchemes:  []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedProtos:   []string{"h2", "http/1.1"},
		SupportedVersions: []uint16{tls.VersionTLS13, tls.VersionTLS12},
	}
}

// hostPolicy allows only the listed domains. It compares the name without a port:
// autocert passes the HTTP-01 request's Host as is, and a CA validating on a port other
// than 80 (Pebble: 5002) sends "name:port".
func (a *acmeManager) hostPolicy(_ context.Context, host string) error {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if a.domain(host) == nil {
		return fmt.Errorf("certs: %q is not in tls.acme.domains", host)
	}
	return nil
}

func (d *acmeDomain) setOrder(o *acmeOrder) {
	d.orderMu.Lock()
	d.order = o
	d.orderMu.Unlock()
}

func (d *acmeDomain) currentOrder() *acmeOrder {
	d.orderMu.Lock()
	defer d.orderMu.Unlock()
	return d.order
}

// orderCache is the autocert.Cache of one order's Manager. It keeps the Manager from
// using anything but the order: the certificate always misses while the order runs (so
// the Manager orders one), tokens stay in the Manager's memory, and nothing is written;
// the account key is set on the client, and run saves the certificate itself.
type orderCache struct {
	a *acmeManager
	o *acmeOrder
}

var _ autocert.Cache = orderCache{}

// Get implements autocert.Cache. After the order, for the Manager's renewal timer, it
// returns the certificate served now (see the RenewBefore comment in obtain).
func (c orderCache) Get(_ context.Context, key string) ([]byte, error) {
	if key != c.o.domain || c.o.open.Load() {
		return nil, autocert.ErrCacheMiss
	}
	d := c.a.domains[c.o.domain]
	cur := d.current.Load()
	if cur == nil {
		return nil, autocert.ErrCacheMiss
	}
	data, err := encodeCached(cur.cert)
	if err != nil {
		return nil, autocert.ErrCacheMiss
	}
	return data, nil
}

// Put implements autocert.Cache; it stores nothing.
func (orderCache) Put(context.Context, string, []byte) error { return nil }

// Delete implements autocert.Cache.
func (orderCache) Delete(context.Context, string) error { return nil }

// isACMEChallenge reports whether hello is a CA's TLS-ALPN-01 validation: it offers only
// the acme-tls/1 protocol.
func isACMEChallenge(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto
}

// challengeCert answers a TLS-ALPN-01 validation with the token certificate of the
// order in flight for the name.
func (a *acmeManager) challengeCert(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	d := a.domain(hello.ServerName)
	if d == nil {
		return nil, fmt.Errorf("certs: TLS-ALPN-01 challenge for %q, which is not in tls.acme.domains", hello.ServerName)
	}
	o := d.currentOrder()
	if o == nil {
		return nil, fmt.Errorf("certs: TLS-ALPN-01 challenge for %q, but no order is in progress", hello.ServerName)
	}
	cert, err := o.m.GetCertificate(hello)
	if err != nil {
		a.log.Warn(fmt.Sprintf("acme: cannot answer the TLS-ALPN-01 challenge for %s: %v", d.name, err), "domain", d.name)
		return nil, err
	}
	a.log.Info(fmt.Sprintf("acme: answering the TLS-ALPN-01 challenge for %s", d.name), "domain", d.name, "from", remoteOf(hello.Conn))
	return cert, nil
}

func remoteOf(c net.Conn) string {
	if c == nil {
		return ""
	}
	return c.RemoteAddr().String()
}

// httpHandler answers HTTP-01 validations for the listed domains (from the order in
// flight) and passes every other request to fallback.
func (a *acmeManager) httpHandler(fallback http.Handler) http.Handler {
	a.http01.Store(true)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			fallback.ServeHTTP(w, r)
			return
		}
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		d := a.domain(host)
		if d == nil {
			http.Error(w, "not an ACME domain of this server", http.StatusNotFound)
			return
		}
		o := d.currentOrder()
		if o == nil || o.http01 == nil {
			http.Error(w, "no ACME order in progress for "+d.name, http.StatusNotFound)
			return
		}
		a.log.Info(fmt.Sprintf("acme: answering the HTTP-01 challenge for %s", d.name), "domain", d.name, "from", r.RemoteAddr)
		o.http01.ServeHTTP(w, r)
	})
}

// certificate returns the certificate to present for a listed domain, or nil when there
// is none yet; the first such handshake is logged.
func (a *acmeManager) certificate(d *acmeDomain) *tls.Certificate {
	if cur := d.current.Load(); cur != nil {
		return cur.cert
	}
	if d.announced.CompareAndSwap(false, true) {
		a.log.Info(fmt.Sprintf("acme: handshake for %s before its certificate was obtained; see the order's log lines", d.name), "domain", d.name)
	}
	return nil
}

// Start begins obtaining and renewing the ACME certificates in the background, one loop
// per domain, until ctx is done; Wait waits for them to end. Without ACME it does
// nothing. Calls after the first do nothing.
func (s *Source) Start(ctx context.Context) {
	if s.acme != nil {
		s.acme.start(ctx)
	}
}

// Wait blocks until the work begun by Start has ended after its context was done,
// orders in flight included.
func (s *Source) Wait() {
	if s.acme != nil {
		s.acme.wg.Wait()
	}
}

// nextProtos are the ALPN protocols of the HTTPS listener.
func (s *Source) nextProtos() []string {
	if s.acme != nil {
		return []string{"h2", "http/1.1", acme.ALPNProto}
	}
	return []string{"h2", "http/1.1"}
}
