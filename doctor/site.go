package doctor

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"edgeproxy/certs"
	"edgeproxy/config"
)

// site is what the checks know of the configured edge: its configuration and the
// certificates it would serve.
type site struct {
	cfg         *config.Config
	acmeDomains []string     // tls.acme.domains, lower case, without a trailing dot
	acmeIPs     []netip.Addr // tls.acme.ip_addresses
	static      []staticCert
	// acme holds the leaf of each ACME domain's cached certificate (in cache_dir);
	// acmeErr why a domain's cache file exists but could not be read.
	acme    map[string]*x509.Certificate
	acmeErr map[string]error
	// lastErr is the ACME cache's LastErrorFile; nil when there is none. lastErrErr is
	// why it could not be read, if it exists but could not.
	lastErr    *certs.LastError
	lastErrErr error
	// edgeMetrics is the metrics listener's address when a running edgeproxy answers
	// there (set by checkListeners): evidence that the other listeners in use are its.
	edgeMetrics string
}

type staticCert struct {
	file string
	leaf *x509.Certificate
}

func (d *Doctor) newSite(cfg *config.Config) *site {
	s := &site{cfg: cfg, acme: map[string]*x509.Certificate{}, acmeErr: map[string]error{}}
	// An unreadable pair is already a config problem, and not among those loaded: here it
	// just covers nothing.
	for _, lc := range cfg.Resolved.Certificates {
		s.static = append(s.static, staticCert{file: lc.Files.Cert, leaf: lc.Certificate.Leaf})
	}
	a := cfg.TLS.ACME
	if !a.Enabled() {
		return s
	}
	for _, dom := range a.Domains {
		s.acmeDomains = append(s.acmeDomains, normalize(dom))
	}
	for _, ip := range a.IPAddresses {
		if addr, err := netip.ParseAddr(ip); err == nil {
			s.acmeIPs = append(s.acmeIPs, addr.Unmap())
		}
	}
	for _, name := range s.acmeNames() {
		switch leaf, err := cachedLeaf(a.CacheDir, name); {
		case err == nil:
			s.acme[name] = leaf
		case !errors.Is(err, fs.ErrNotExist):
			s.acmeErr[name] = err // unreadable (another user's 0700 directory) or corrupt
		}
	}
	s.lastErr, s.lastErrErr = certs.ReadLastError(a.CacheDir)
	if errors.Is(s.lastErrErr, fs.ErrNotExist) {
		s.lastErrErr = nil
	}
	return s
}

// acmeNames are the names of the ACME certificates: the domains, then the IP addresses
// (as edgeproxy names their cache files).
func (s *site) acmeNames() []string {
	out := slices.Clone(s.acmeDomains)
	for _, ip := range s.acmeIPs {
		out = append(out, ip.String())
	}
	return out
}

func normalize(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

// cachedLeaf reads the leaf certificate of name from an ACME cache directory (autocert's
// DirCache format: the key, then the chain, all PEM, in a file named after the domain or
// IP address).
func cachedLeaf(dir, name string) (*x509.Certificate, error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil, fmt.Errorf("%s: no certificate", filepath.Join(dir, name))
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// names are the names a certificate must cover: the ACME domains and
// pool.health_check.host (the site's name, when set).
func (s *site) names() []string {
	out := s.acmeNames()
	if h := s.healthHost(); h != "" && !contains(out, h) {
		out = append(out, h)
	}
	return out
}

func (s *site) healthHost() string {
	h := s.cfg.Pool.HealthCheck.Host
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return normalize(h)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// siteName is the best guess of the name visitors use: health_check.host, else the
// first ACME domain, else the first name of the first static certificate; "" if none.
func (s *site) siteName() string {
	if h := s.healthHost(); h != "" {
		return h
	}
	if len(s.acmeDomains) > 0 {
		return s.acmeDomains[0]
	}
	for _, c := range s.static {
		if len(c.leaf.DNSNames) > 0 {
			return c.leaf.DNSNames[0]
		}
	}
	return ""
}

// covered lists the names certificates are served for: the static certificates' names
// and the ACME domains.
func (s *site) covered() []string {
	var out []string
	for _, c := range s.static {
		out = append(out, c.leaf.DNSNames...)
		for _, ip := range c.leaf.IPAddresses {
			out = append(out, ip.String())
		}
	}
	for _, name := range s.acmeNames() {
		if !contains(out, name) {
			out = append(out, name+" (ACME)")
		}
	}
	if s.cfg.TLS.SelfSigned {
		out = append(out, "localhost, 127.0.0.1 (self-signed)")
	}
	return out
}

// ours reports whether leaf is a certificate this configuration serves: a static one,
// a cached ACME one, or edgeproxy's self-signed one.
func (s *site) ours(leaf *x509.Certificate) bool {
	for _, c := range s.static {
		if c.leaf.Equal(leaf) {
			return true
		}
	}
	for _, c := range s.acme {
		if c.Equal(leaf) {
			return true
		}
	}
	return s.cfg.TLS.SelfSigned && leaf.Subject.CommonName == "edgeproxy self-signed"
}

// renewWindow is how long before expiry leaf is renewed: tls.acme.renew_before (at most
// half the lifetime), else a third of the lifetime, as certs does.
func (s *site) renewWindow(leaf *x509.Certificate) time.Duration {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if rb := s.cfg.TLS.ACME.RenewBefore; rb > 0 {
		return min(rb, life/2)
	}
	return life / 3
}

// checkCertificate says whether name is covered by a certificate that is not due for
// renewal: a static one covering it (served first), else its cached ACME certificate.
func (d *Doctor) checkCertificate(s *site, name string) Result {
	r := Result{Check: "cert:" + name}
	now := d.opts.now()
	var leaf *x509.Certificate
	source := ""
	for _, c := range s.static {
		if c.leaf.VerifyHostname(name) == nil {
			leaf, source = c.leaf, c.file
			break
		}
	}
	isACME := contains(s.acmeNames(), name)
	if leaf == nil && isACME {
		if c := s.acme[name]; c != nil {
			leaf, source = c, "the ACME cache ("+filepath.Join(s.cfg.TLS.ACME.CacheDir, name)+")"
		}
	}
	role := "tls.acme.domains"
	if _, err := netip.ParseAddr(name); err == nil && isACME {
		role = "tls.acme.ip_addresses"
	}
	if !isACME {
		role = "pool.health_check.host"
	}
	switch {
	case leaf == nil && isACME && s.acmeErr[name] != nil:
		r.Status = Warn
		r.Detail = fmt.Sprintf("cannot read the cached certificate of %s: %v (the cache belongs to the edgeproxy service: run doctor as root, e.g. with sudo)", name, s.acmeErr[name])
	case leaf == nil && isACME && s.lastErr != nil && normalize(s.lastErr.Domain) == name:
		r.Status = Fail
		r.Detail = fmt.Sprintf("no certificate for %s yet, and its last ACME order failed: see acme.last_error below for why and the fix", name)
	case leaf == nil && isACME:
		r.Status = Warn
		r.Detail = fmt.Sprintf("no certificate for %s in %s yet: edgeproxy orders it at start-up; if it has been running a while, its log says why not", name, s.cfg.TLS.ACME.CacheDir)
	case leaf == nil && s.cfg.TLS.SelfSigned:
		r.Status = Warn
		r.Detail = fmt.Sprintf("only the self-signed certificate (localhost, 127.0.0.1) answers %s (%s): browsers warn. Fine for local use; for a site, use tls.acme or tls.certificates", name, role)
	case leaf == nil:
		r.Status = Fail
		r.Detail = fmt.Sprintf("no certificate covers %s (%s); covered: %s. Visitors of https://%s get a name mismatch: add %s to tls.acme.domains or to the certificate, or set %s to a covered name",
			name, role, strings.Join(s.covered(), ", "), name, name, role)
	case now.After(leaf.NotAfter):
		r.Status = Fail
		r.Detail = fmt.Sprintf("the certificate from %s EXPIRED on %s", source, leaf.NotAfter.UTC().Format(time.RFC3339))
		if isACME {
			r.Detail += ": edgeproxy renews it while running; see acme.last_error and its log"
		} else {
			r.Detail += ": replace the files (or list the name in tls.acme.domains)"
		}
	case leaf.NotAfter.Sub(now) <= s.renewWindow(leaf):
		r.Status = Warn
		r.Detail = fmt.Sprintf("the certificate from %s expires on %s, in %s: it is due for renewal", source, leaf.NotAfter.UTC().Format(time.RFC3339), roughly(leaf.NotAfter.Sub(now)))
		if isACME && source != "" && !strings.HasPrefix(source, "the ACME") {
			r.Detail += "; it is a static file, which edgeproxy serves instead of the ACME one: replace it"
		} else if isACME {
			r.Detail += "; edgeproxy renews it while running (if this persists, see acme.last_error and its log)"
		} else {
			r.Detail += "; replace the files"
		}
	default:
		r.Status = OK
		r.Detail = fmt.Sprintf("covered by %s, valid until %s (%s; renewal %s before expiry)", source, leaf.NotAfter.UTC().Format(time.RFC3339), roughly(leaf.NotAfter.Sub(now)), roughly(s.renewWindow(leaf)))
	}
	return r
}
