package config

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// LetsEncryptURL is the default ACME directory: Let's Encrypt's production CA.
const LetsEncryptURL = "https://acme-v02.api.letsencrypt.org/directory"

// LetsEncryptStagingURL is Let's Encrypt's staging CA: for a first try, its rate limits are
// generous and its certificates are not trusted by browsers.
const LetsEncryptStagingURL = "https://acme-staging-v02.api.letsencrypt.org/directory"

// ACME configures automatic certificates. It is on when Domains or IPAddresses is not
// empty.
type ACME struct {
	// Domains are the exact DNS names to obtain certificates for, one certificate each.
	// No wildcards: the HTTP-01 and TLS-ALPN-01 challenges cannot prove them. IP
	// addresses go in IPAddresses.
	Domains []string `yaml:"domains"`
	// IPAddresses are public IP addresses of this box to obtain certificates for (RFC
	// 8738), one each, served to clients that connect to the address without a name:
	// HTTPS for a box with an Elastic IP and no domain yet. Let's Encrypt issues them
	// only in its six-day "shortlived" profile, so Profile must say so.
	IPAddresses []string `yaml:"ip_addresses"`
	// Profile is the CA's certificate profile to order, such as Let's Encrypt's
	// "classic" (90 days), "tlsserver" (90, then 45 days) or "shortlived" (6 days); empty
	// means the CA's default. `edgeproxy validate` checks it against the CA's directory.
	Profile string `yaml:"profile"`
	// Email is the contact address registered with the CA (expiry and incident notices);
	// empty means none.
	Email string `yaml:"email"`
	// Directory is the CA's ACME directory URL. Default LetsEncryptURL.
	Directory string `yaml:"directory"`
	// CARoots is a PEM file of the roots to trust for the ACME server's own HTTPS
	// certificate (a private CA, or Pebble in tests); empty means the system roots.
	CARoots string `yaml:"ca_roots"`
	// CacheDir holds the account key and certificates, created with mode 0700. Empty means
	// $STATE_DIRECTORY/acme when systemd sets STATE_DIRECTORY (StateDirectory=), else
	// ./acme-cache; Parse fills that in.
	CacheDir string `yaml:"cache_dir"`
	// RenewBefore is how long before expiry a certificate is renewed; 0 means when a third
	// of its lifetime remains.
	RenewBefore time.Duration `yaml:"renew_before"`
	// Storage shares certificates, the ordering lock and session ticket keys with the
	// other replicas of a fleet (see Storage in storage.go); the zero value keeps them in
	// CacheDir.
	Storage Storage `yaml:"storage"`
}

// Enabled reports whether ACME is on, that is whether any domain or IP address is listed.
func (a ACME) Enabled() bool { return len(a.Domains)+len(a.IPAddresses) > 0 }

// ShortlivedProfile is Let's Encrypt's six-day profile, the only one in which it issues
// IP-address certificates.
const ShortlivedProfile = "shortlived"

// defaultACMECacheDir is the cache directory when tls.acme.cache_dir is empty.
// STATE_DIRECTORY may list several directories separated by colons; the first is the
// unit's own.
func defaultACMECacheDir(getenv func(string) string) string {
	if dirs := getenv("STATE_DIRECTORY"); dirs != "" {
		first, _, _ := strings.Cut(dirs, ":")
		return filepath.Join(first, "acme")
	}
	return "acme-cache"
}

// applyACMEDefaults fills in tls.acme.cache_dir.
func (c *Config) applyACMEDefaults() {
	a := &c.TLS.ACME
	if a.Enabled() && a.CacheDir == "" {
		a.CacheDir = defaultACMECacheDir(os.Getenv)
	}
}

// acme checks tls.acme against itself and the rest of the configuration.
func (k *checker) acme() {
	a := k.c.TLS.ACME
	if !a.Enabled() {
		if k.c.IsSet("tls.acme") {
			k.errorf("tls.acme", "tls.acme is set but tls.acme.domains and ip_addresses are empty: list the DNS names (or the box's public IP addresses) to obtain certificates for")
		}
		return
	}
	seen := map[string]int{}
	for i, d := range a.Domains {
		path := fmt.Sprintf("tls.acme.domains[%d]", i)
		if err := checkACMEDomain(d); err != nil {
			k.errorf(path, "tls.acme.domains: %v", err)
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(d, "."))
		if j, dup := seen[name]; dup {
			k.errorf(path, "tls.acme.domains: %q is listed twice (also at index %d)", d, j)
		}
		seen[name] = i
	}
	k.acmeIPAddresses(seen)
	if p := a.Profile; p != "" && !validProfileName(p) {
		k.errorf("tls.acme.profile", "tls.acme.profile %q is not a profile name such as classic, tlsserver or shortlived", p)
	}
	if e := a.Email; e != "" {
		if strings.HasPrefix(e, "mailto:") || strings.ContainsAny(e, " \t,<>") || strings.Count(e, "@") != 1 ||
			strings.HasPrefix(e, "@") || strings.HasSuffix(e, "@") {
			k.errorf("tls.acme.email", "tls.acme.email %q is not an email address such as ops@example.com", e)
		}
	}
	if u, err := url.Parse(a.Directory); err != nil || u.Scheme != "https" || u.Host == "" {
		k.errorf("tls.acme.directory", "tls.acme.directory %q is not an https:// URL (Let's Encrypt: %s)", a.Directory, LetsEncryptURL)
	} else if strings.Contains(u.Host, "staging") {
		k.warnf("tls.acme.directory", "tls.acme.directory is a staging CA: its certificates are not trusted by browsers")
	}
	if a.RenewBefore < 0 {
		k.errorf("tls.acme.renew_before", "tls.acme.renew_before must not be negative, got %v (0 = when a third of the lifetime remains)", a.RenewBefore)
	}
	if k.c.TLS.SelfSigned {
		k.errorf("tls.self_signed", "tls.self_signed and tls.acme cannot both be set: the self-signed certificate would answer names the ACME certificates should (use tls.certificates for other names)")
	}
	if k.c.Listen.HTTPS == "" {
		k.errorf("tls.acme", "tls.acme needs listen.https: the certificates are for the HTTPS listener")
	}
}

// acmeIPAddresses checks tls.acme.ip_addresses: IP addresses, listed once, with the
// shortlived profile at Let's Encrypt. seen holds the domains, by lower-case name.
func (k *checker) acmeIPAddresses(seen map[string]int) {
	a := k.c.TLS.ACME
	if len(a.IPAddresses) == 0 {
		return
	}
	ips := map[netip.Addr]int{}
	for i, s := range a.IPAddresses {
		path := fmt.Sprintf("tls.acme.ip_addresses[%d]", i)
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			k.errorf(path, "tls.acme.ip_addresses: %q is not an IP address such as 203.0.113.7 (DNS names go in tls.acme.domains)", s)
			continue
		}
		ip = ip.Unmap()
		if j, dup := ips[ip]; dup {
			k.errorf(path, "tls.acme.ip_addresses: %s is listed twice (also at index %d)", s, j)
		}
		ips[ip] = i
		if !ip.IsGlobalUnicast() || ip.IsPrivate() {
			k.warnf(path, "tls.acme.ip_addresses: %s is not a public address: a public CA validates it by connecting to it, and will not issue for it (on EC2 list the Elastic IP, not the private one)", s)
		}
	}
	if a.Profile != ShortlivedProfile {
		msg := "tls.acme.ip_addresses needs tls.acme.profile: %s: Let's Encrypt issues IP-address certificates only in its six-day profile"
		if u, err := url.Parse(a.Directory); err == nil && strings.HasSuffix(u.Hostname(), ".letsencrypt.org") {
			k.errorf("tls.acme.profile", msg, ShortlivedProfile)
		} else {
			k.warnf("tls.acme.ip_addresses", msg+" (if this CA issues them in another profile, ignore this)", ShortlivedProfile)
		}
	}
}

// validProfileName accepts the profile names CAs use: letters, digits, '-', '_' and '.'.
func validProfileName(p string) bool {
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.", r)) {
			return false
		}
	}
	return len(p) <= 64
}

// checkACMEDomain accepts a DNS name with at least two labels, as ACME CAs require.
func checkACMEDomain(d string) error {
	switch {
	case d == "":
		return fmt.Errorf("empty name")
	case strings.Contains(d, "*"):
		return fmt.Errorf("%q is a wildcard: wildcard certificates need the DNS-01 challenge, which edgeproxy does not answer; list each name", d)
	case strings.ContainsAny(d, "/:"):
		if _, err := netip.ParseAddr(strings.Trim(d, "[]")); err == nil {
			return fmt.Errorf("%q is an IP address: list it in tls.acme.ip_addresses", d)
		}
		return fmt.Errorf("%q is not a DNS name (write the name alone, without scheme, port or path)", d)
	}
	if _, err := netip.ParseAddr(d); err == nil {
		return fmt.Errorf("%q is an IP address: list it in tls.acme.ip_addresses", d)
	}
	if !validDNSName(d) || strings.Contains(d, "_") {
		return fmt.Errorf("%q is not a DNS name", d)
	}
	if !strings.Contains(strings.TrimSuffix(d, "."), ".") {
		return fmt.Errorf("%q has a single label: a public CA issues certificates only for names such as www.example.com", d)
	}
	return nil
}

// acmeEnvironment checks what tls.acme needs from this machine: the cache directory (or
// its parent, for a directory edgeproxy will create) and the ca_roots file.
func (k *checker) acmeEnvironment(unset map[string]bool) {
	a := k.c.TLS.ACME
	if !a.Enabled() {
		return
	}
	if dir := a.CacheDir; dir != "" && !unset["tls.acme.cache_dir"] {
		switch fi, err := os.Stat(dir); {
		case err == nil && !fi.IsDir():
			k.errorf("tls.acme.cache_dir", "tls.acme.cache_dir %s is not a directory", dir)
		case err == nil && fi.Mode().Perm()&0o077 != 0:
			k.warnf("tls.acme.cache_dir", "tls.acme.cache_dir %s has mode %04o: it holds private keys, make it 0700", dir, fi.Mode().Perm())
		case err != nil && os.IsNotExist(err):
			parent := filepath.Dir(filepath.Clean(dir))
			if pfi, perr := os.Stat(parent); perr != nil || !pfi.IsDir() {
				k.errorf("tls.acme.cache_dir", "tls.acme.cache_dir %s: its parent directory %s does not exist (edgeproxy creates only the last element)", dir, parent)
			}
		case err != nil:
			k.errorf("tls.acme.cache_dir", "tls.acme.cache_dir: %v", unwrapPathErr(err))
		}
	}
	if f := a.CARoots; f != "" && !unset["tls.acme.ca_roots"] {
		roots, err := loadCARoots(f)
		if err != nil {
			k.errorf("tls.acme.ca_roots", "tls.acme.ca_roots: %v", err)
		}
		k.c.Resolved.ACMERoots = roots
	}
}

// loadCARoots reads a PEM file of CA certificates into a pool; it fails if the file holds
// no certificate.
func loadCARoots(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read %v", unwrapPathErr(err))
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %v", file, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}
