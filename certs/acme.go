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
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"edgeproxy/fleet"
)

// ACMEOptions configure automatic certificates (Options.ACME).
//
// Each DNS name and each IP address gets its own ECDSA P-256 certificate. Certificates
// are ordered in the background from Source.Start, not on a visitor's handshake: at
// start-up for a name with no usable certificate in CacheDir, and again when its renewal
// time comes. That time is the CA's choice when it offers ACME Renewal Information (RFC
// 9773, ARI): a random moment in the window the CA suggests, checked again as the CA asks;
// otherwise, or while the CA cannot be asked, it is when a third of the lifetime remains
// (RenewBefore). A renewal order names the certificate it replaces, which Let's Encrypt
// exempts from its rate limits. A failed order is retried with capped exponential backoff;
// meanwhile the certificate in hand, if any, keeps being served. The challenges are
// TLS-ALPN-01 on the HTTPS listener and, once Source.HTTPHandler has been called for a
// plain-HTTP listener, HTTP-01 as the second choice; both work for IP addresses (RFC 8738).
type ACMEOptions struct {
	// Domains are the exact DNS names to obtain certificates for. Only these (and
	// IPAddresses) are ever ordered; a handshake for any other name never reaches the CA.
	Domains []string
	// IPAddresses are IP addresses to obtain certificates for (RFC 8738), such as a
	// box's Elastic IP; each is served to clients that connect to that address without
	// SNI. Let's Encrypt issues them only in its six-day "shortlived" profile.
	IPAddresses []string
	// Profile is the CA's certificate profile to order (draft-ietf-acme-profiles), such
	// as Let's Encrypt's "classic", "tlsserver" or "shortlived"; empty means the CA's
	// default. An order fails, saying which profiles the CA offers, if it has no such one.
	Profile string
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
	// RenewBefore is how long before expiry a certificate is renewed when the CA offers
	// no renewal information. Zero means when a third of its lifetime remains. It is
	// capped at half the lifetime, so that a value longer than the CA's lifetimes cannot
	// make every new certificate due at once. When set, it also bounds the CA's ARI
	// window: renewal happens no later than RenewBefore says.
	RenewBefore time.Duration
	// ARIPoll is the longest wait between two checks of a certificate's renewal
	// information, and the wait when the CA's answer has no Retry-After. A Retry-After
	// between one minute and ARIPoll is honoured; RFC 9773 lets clients clamp it so. Zero
	// means 6 hours (what Pebble asks for).
	ARIPoll time.Duration
	// RetryMin is the wait after the first failed order for a domain; each further
	// failure triples it, up to RetryMax. Zero means 1 minute and 1 hour. A Retry-After
	// from the CA (rate limits) makes the wait longer, never shorter.
	RetryMin, RetryMax time.Duration
	// Observer is told about orders, certificate expiry and renewal times; nil means
	// nothing is recorded.
	Observer ACMEObserver
	// Fleet, if not nil, is the storage this replica shares with the others of its fleet
	// (tls.acme.storage.redis): certificates and the account key are kept there, with
	// CacheDir as this replica's copy; a name is ordered by one replica at a time, under
	// the fleet's lock; challenges are answered by every replica; and a certificate one
	// replica stores is served by all. Nil keeps everything in CacheDir.
	Fleet *fleet.Store
}

// ACMEObserver is told about ACME orders and certificates. telemetry.Metrics implements it.
type ACMEObserver interface {
	// ACMEOrder records one finished order attempt.
	ACMEOrder(ok bool)
	// CertificateExpiry records the expiry of the certificate now served for domain.
	CertificateExpiry(domain string, notAfter time.Time)
	// CertificateRenewal records when the certificate served for domain will be renewed
	// (chosen from the CA's renewal information, or from its lifetime).
	CertificateRenewal(domain string, at time.Time)
	// CertificateNotBefore records the start of validity of that certificate.
	CertificateNotBefore(domain string, notBefore time.Time)
}

const (
	defaultRetryMin = time.Minute
	defaultRetryMax = time.Hour
	defaultARIPoll  = 6 * time.Hour
	// minARIPoll is the shortest wait between two renewal-information checks that a
	// Retry-After can ask for (RFC 9773 §4.3.3 suggests clamping at one minute).
	minARIPoll = time.Minute
	// retryFactor is the backoff's growth per failure. With the defaults a domain is
	// tried at most 5 times in its first hour of failures: Let's Encrypt allows 5 failed
	// validations per name and hour, and an order may fail two (TLS-ALPN-01, then HTTP-01).
	retryFactor = 3
	// orderTimeout bounds one order attempt.
	orderTimeout = 6 * time.Minute
	// maxSleep bounds each wait of a domain's loop, which then looks at the clock and its
	// certificate again, so that a clock step or a long suspend cannot delay a renewal.
	maxSleep = time.Hour
	// accountKeyName is autocert's cache key for the account key, so that a cache
	// directory works with both.
	accountKeyName = "acme_account+key"
)

// acmeManager obtains and renews the certificates of ACMEOptions.Domains and
// IPAddresses.
//
// Each name has its own goroutine (run), which orders with golang.org/x/crypto/acme (see
// obtain), checks the CA's renewal information (checkARI) and sleeps until the next of
// those is due. Handshakes are answered only from certificates already in hand, and
// challenge handshakes and requests from the order in flight.
type acmeManager struct {
	opts    ACMEOptions
	log     *slog.Logger
	cache   autocert.Cache    // CacheDir, or the fleet's storage (sharedCache)
	base    http.RoundTripper // to the CA
	domains map[string]*acmeDomain
	names   []string               // Domains and IPAddresses normalized, in configuration order
	reverse map[string]*acmeDomain // the IP addresses' reverse-DNS names (TLS-ALPN-01's SNI)

	// http01 is set once Source.HTTPHandler has been called: HTTP-01 is then tried
	// after TLS-ALPN-01.
	http01 atomic.Bool

	// now returns the current time and sleep waits (false when ctx ends first); tests
	// replace them with a simulated clock.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) bool
	// obtainFn runs one order (obtain); fetchARI fetches renewal information
	// (fetchRenewalInfo). Tests replace them with a simulated CA.
	obtainFn func(ctx context.Context, d *acmeDomain, replaces string) (*tls.Certificate, *acmeOrder, error)
	fetchARI func(ctx context.Context, leaf *x509.Certificate) (*renewalInfo, time.Duration, error)

	// accountMu guards accountKey and registered.
	accountMu  sync.Mutex
	accountKey crypto.Signer
	registered bool

	// dirMu guards dir, the CA's directory once read.
	dirMu sync.Mutex
	dir   *Directory

	// lastErrMu serialises writes of LastErrorFile.
	lastErrMu sync.Mutex
	// adoptMu serialises adoptStored.
	adoptMu sync.Mutex

	started atomic.Bool
	wg      sync.WaitGroup // the domains' loops and their orders
}

// acmeDomain is the live state of one name (a DNS name or an IP address).
type acmeDomain struct {
	name    string
	ip      bool // name is an IP address
	current atomic.Pointer[servedCert]

	// orderMu guards order.
	orderMu sync.Mutex
	order   *acmeOrder // the attempt in flight, whose responders answer challenges; nil if none

	// announced is set once a handshake has found no certificate yet, so that is logged once.
	announced atomic.Bool
}

// servedCert is a certificate in use and its renewal schedule; replaced whole, never
// edited.
type servedCert struct {
	cert    *tls.Certificate // Leaf set
	profile string           // the order's profile, if known
	// fallbackAt is the renewal time from the lifetime (RenewBefore, or a third of it),
	// used when the CA gives no renewal information.
	fallbackAt time.Time
	// earliest is when a certificate obtained by an early renewal (in the first half of
	// the previous one's lifetime: the CA's renewal information asked for it) may be
	// renewed early again: one such signal is followed at once, a repeat for the new
	// certificate only after a quarter of its lifetime, so that a CA that keeps saying
	// "now" cannot make edgeproxy order in a loop.
	earliest time.Time
	ari      ariState
	// renewAt is when to renew: from ari when it has a window, else fallbackAt.
	renewAt time.Time
}

// leaf is the certificate of sc; nil for a nil sc.
func (sc *servedCert) leaf() *x509.Certificate {
	if sc == nil {
		return nil
	}
	return sc.cert.Leaf
}

func newACME(opts ACMEOptions, log *slog.Logger) (*acmeManager, error) {
	if len(opts.Domains)+len(opts.IPAddresses) == 0 {
		return nil, errors.New("certs: ACME without domains or IP addresses")
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
	if opts.ARIPoll <= 0 {
		opts.ARIPoll = defaultARIPoll
	}
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
		reverse: map[string]*acmeDomain{},
		now:     time.Now,
		sleep:   sleepCtx,
	}
	if opts.Fleet != nil {
		a.cache = sharedCache{store: opts.Fleet, local: autocert.DirCache(opts.CacheDir), log: log}
	}
	a.obtainFn = a.obtain
	a.fetchARI = a.fetchRenewalInfo
	for _, d := range opts.Domains {
		a.addName(normalizeName(d), false)
	}
	for _, s := range opts.IPAddresses {
		ip, err := netip.ParseAddr(strings.Trim(s, "[]"))
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("certs: ACME IP address %q is not an IP address", s)
		}
		d := a.addName(ip.Unmap().String(), true)
		if d != nil {
			a.reverse[reverseName(ip.Unmap())] = d
		}
	}
	for _, name := range a.names {
		a.loadCached(a.domains[name])
	}
	return a, nil
}

// addName adds a name to obtain a certificate for; it returns nil for a duplicate.
func (a *acmeManager) addName(name string, ip bool) *acmeDomain {
	if a.domains[name] != nil {
		return nil
	}
	d := &acmeDomain{name: name, ip: ip}
	a.domains[name] = d
	a.names = append(a.names, name)
	return d
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

// normalizeName lower-cases a DNS name without its trailing dot, and writes an IP address
// in its canonical form (an IPv4-mapped IPv6 address as IPv4).
func normalizeName(name string) string {
	if ip, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return ip.Unmap().WithZone("").String()
	}
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// reverseName is the reverse-DNS name of ip ("1.0.0.127.in-addr.arpa"), which a CA sends
// as SNI when it validates an IP address with TLS-ALPN-01 (RFC 8738 §6).
func reverseName(ip netip.Addr) string {
	b := ip.AsSlice()
	var parts []string
	if ip.Is4() {
		for i := len(b) - 1; i >= 0; i-- {
			parts = append(parts, fmt.Sprint(b[i]))
		}
		return strings.Join(parts, ".") + ".in-addr.arpa"
	}
	const hex = "0123456789abcdef"
	for i := len(b) - 1; i >= 0; i-- {
		parts = append(parts, string(hex[b[i]&0xf]), string(hex[b[i]>>4]))
	}
	return strings.Join(parts, ".") + ".ip6.arpa"
}

// domain returns the state of a listed name or IP address, or nil.
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
	a.serve(d, cert, "", time.Time{})
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

// serve makes cert the certificate of d and schedules its renewal and its first
// renewal-information check (at once). earliest is set for a certificate obtained by an
// early renewal (see servedCert.earliest).
func (a *acmeManager) serve(d *acmeDomain, cert *tls.Certificate, profile string, earliest time.Time) {
	if o := a.opts.Observer; o != nil {
		o.CertificateExpiry(d.name, cert.Leaf.NotAfter)
		o.CertificateNotBefore(d.name, cert.Leaf.NotBefore)
	}
	sc := &servedCert{cert: cert, profile: profile, fallbackAt: a.fallbackRenewAt(cert.Leaf), earliest: earliest}
	sc.ari.nextCheck = a.now()
	a.store(d, sc)
}

// store computes sc.renewAt, publishes sc as the certificate of d and reports the
// renewal time.
func (a *acmeManager) store(d *acmeDomain, sc *servedCert) {
	sc.renewAt = a.renewAt(sc)
	d.current.Store(sc)
	if o := a.opts.Observer; o != nil {
		o.CertificateRenewal(d.name, sc.renewAt)
	}
}

// fallbackRenewAt is when a certificate is due for renewal by its lifetime alone:
// RenewBefore (at most half the lifetime) or a third of the lifetime before expiry, less
// a jitter of up to a tenth of that (at most an hour), so that many edges sharing a CA do
// not renew in step.
func (a *acmeManager) fallbackRenewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	before := life / 3
	if rb := a.opts.RenewBefore; rb > 0 {
		before = min(rb, life/2)
	}
	return leaf.NotAfter.Add(-before - randDuration(min(before/10, time.Hour)))
}

// renewAt is when sc is due for renewal. With a window from the CA's renewal
// information, it is the time chosen in it, but no later than RenewBefore (if set) says,
// nor than when a sixth of the lifetime remains (time to retry failed orders); and no
// earlier than sc.earliest. Without, it is the lifetime's fallbackAt.
func (a *acmeManager) renewAt(sc *servedCert) time.Time {
	if sc.ari.info == nil {
		return sc.fallbackAt
	}
	leaf := sc.cert.Leaf
	t := sc.ari.chosen
	if a.opts.RenewBefore > 0 {
		t = minTime(t, sc.fallbackAt)
	}
	t = minTime(t, leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore)/6))
	if t.Before(sc.earliest) {
		t = sc.earliest
	}
	return t
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// randDuration returns a random duration in [0, d), or 0.
func randDuration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	n, err := rand.Int(rand.Reader, big.NewInt(int64(d)))
	if err != nil {
		return 0
	}
	return time.Duration(n.Int64())
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
	if a.opts.Fleet != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.watch(ctx)
		}()
	}
}

// run keeps d supplied with a certificate until ctx is done: it orders one when there is
// none or the current one is due, checks the CA's renewal information when that is due,
// and retries failed orders with capped exponential backoff.
func (a *acmeManager) run(ctx context.Context, d *acmeDomain) {
	failures := 0
	var retryAt time.Time
	for {
		now := a.now()
		cur := d.current.Load()
		due := cur == nil || !now.Before(cur.renewAt)
		if !due && cur.ari.due(now, cur.cert.Leaf) {
			a.checkARI(ctx, d, cur)
			if ctx.Err() != nil {
				return
			}
			continue
		}
		wake := now
		if !due {
			wake = cur.renewAt
			if next := cur.ari.nextCheck; !next.IsZero() && next.Before(wake) {
				wake = next
			}
		}
		if retryAt.After(wake) {
			wake = retryAt
		}
		if wait := wake.Sub(now); wait > 0 {
			if !a.sleep(ctx, min(wait, maxSleep)) {
				return
			}
			continue
		}
		order := a.orderOnce
		if a.opts.Fleet != nil {
			order = a.orderShared
		}
		o, err := order(ctx, d, failures+1)
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
	if j := d / 5; j > 0 {
		d += randDuration(j) - d/10
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
	replaces := ""
	cur := d.current.Load()
	if cur != nil {
		reason = "renewal: expires at " + cur.cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
		if cur.ari.info != nil {
			reason += ", renewal window from the CA " + cur.ari.info.window()
		}
		if dir, err := a.directory(ctx); err == nil && dir.RenewalInfo != "" {
			replaces = certID(cur.cert.Leaf) // RFC 9773 §5: only to a CA that offers ARI
		}
	}
	challenges := "tls-alpn-01"
	if a.http01.Load() {
		challenges += ", then http-01"
	}
	attrs := []any{"domain", d.name, "directory", a.opts.DirectoryURL, "challenges", challenges, "attempt", attempt}
	if a.opts.Profile != "" {
		attrs = append(attrs, "profile", a.opts.Profile)
	}
	if replaces != "" {
		attrs = append(attrs, "replaces", replaces)
	}
	a.log.Info(fmt.Sprintf("acme: ordering a certificate for %s (%s)", d.name, reason), attrs...)
	start := a.now()
	cert, o, err := a.obtainFn(ctx, d, replaces)
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
	} else if err := a.cache.Put(saveCtx, d.name, data); errors.Is(err, fleet.ErrPending) {
		a.log.Warn(fmt.Sprintf("acme: the certificate for %s is saved locally; the fleet's storage gets it when Redis is back: %v", d.name, err), "domain", d.name)
	} else if err != nil {
		a.log.Error(fmt.Sprintf("acme: cannot save the certificate for %s in %s: %v (it would be ordered again at the next start)", d.name, a.opts.CacheDir, err), "domain", d.name)
	}
	a.clearLastError(d.name)
	var earliest time.Time
	if prev := cur.leaf(); prev != nil && start.Before(prev.NotBefore.Add(prev.NotAfter.Sub(prev.NotBefore)/2)) {
		// An early renewal, in the first half of the lifetime: the CA asked for it (a
		// revocation). Another one for the new certificate waits (servedCert.earliest).
		earliest = start.Add(cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore) / 4)
	}
	a.serve(d, cert, o.profile, earliest)
	done := []any{"domain", d.name, "serial", serialHex(cert.Leaf),
		"not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
		"renew_at", d.current.Load().renewAt.UTC().Format(time.RFC3339),
		"took", a.now().Sub(start).Round(time.Millisecond).String()}
	if ch := o.validatedBy(); ch != "" {
		done = append(done, "challenge", ch)
	}
	if o.profile != "" {
		done = append(done, "profile", o.profile)
	}
	a.log.Info(fmt.Sprintf("acme: certificate obtained for %s", d.name), done...)
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
	if errors.Is(err, autocert.ErrCacheMiss) && a.opts.Fleet != nil {
		// One account for the fleet: create it under the lock, unless another replica
		// did meanwhile.
		wait, cancel := context.WithTimeout(ctx, lockWait)
		lock, lerr := a.opts.Fleet.Lock(wait, "account")
		cancel()
		if lerr != nil {
			return nil, fmt.Errorf("certs: creating the ACME account key: %w", lerr)
		}
		defer lock.Unlock(context.WithoutCancel(ctx))
		data, err = a.cache.Get(lock.Context(), accountKeyName)
	}
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
		if err := a.cache.Put(ctx, accountKeyName, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); !savedOrPending(err) {
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

// isACMEChallenge reports whether hello is a CA's TLS-ALPN-01 validation: it offers only
// the acme-tls/1 protocol.
func isACMEChallenge(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto
}

// challengeCert answers a TLS-ALPN-01 validation with the token certificate of the
// order in flight for the name (for an IP address, the SNI is its reverse-DNS name).
func (a *acmeManager) challengeCert(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	d := a.domain(hello.ServerName)
	if d == nil {
		d = a.reverse[normalizeName(hello.ServerName)]
	}
	if d == nil {
		return nil, fmt.Errorf("certs: TLS-ALPN-01 challenge for %q, which is not in tls.acme.domains or ip_addresses", hello.ServerName)
	}
	o := d.currentOrder()
	var cert *tls.Certificate
	if o != nil {
		cert = o.alpnCert()
	}
	if cert == nil {
		cert = a.sharedALPNCert(d)
	}
	if cert == nil {
		return nil, fmt.Errorf("certs: TLS-ALPN-01 challenge for %q, but no such challenge is in progress", hello.ServerName)
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

// httpHandler answers HTTP-01 validations for the listed names (from the order in
// flight) and passes every other request to fallback.
func (a *acmeManager) httpHandler(fallback http.Handler) http.Handler {
	a.http01.Store(true)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.URL.Path, "/.well-known/acme-challenge/")
		if !ok {
			fallback.ServeHTTP(w, r)
			return
		}
		d := a.domain(hostOnly(r.Host))
		if d == nil {
			http.Error(w, "not an ACME domain of this server", http.StatusNotFound)
			return
		}
		o := d.currentOrder()
		var answer string
		if o != nil {
			answer = o.httpAnswer(token)
		}
		if answer == "" {
			answer = a.sharedHTTPAnswer(d, token)
		}
		if answer == "" {
			http.Error(w, "no ACME HTTP-01 challenge in progress for "+d.name, http.StatusNotFound)
			return
		}
		a.log.Info(fmt.Sprintf("acme: answering the HTTP-01 challenge for %s", d.name), "domain", d.name, "from", r.RemoteAddr)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(answer))
	})
}

// hostOnly is a Host header without its port. It compares the name without a port: a
// CA validating on a port other than 80 (Pebble: 5002) sends "name:port".
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

// certificate returns the certificate to present for a listed name, or nil when there
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
// per name, until ctx is done; Wait waits for them to end. Without ACME it does
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
