package config

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"

	"edgeproxy/routing"
)

// HTTPMode is what the plain-HTTP listener does with a request that is not an ACME
// challenge (listen.http_mode).
type HTTPMode int

const (
	// HTTPRedirect answers 308 to the same URL over https.
	HTTPRedirect HTTPMode = iota
	// HTTPProxy proxies plain HTTP to the pool.
	HTTPProxy
)

// LogFormat is how log lines are written (log.format).
type LogFormat int

const (
	// LogText is slog's text format: key=value pairs.
	LogText LogFormat = iota
	// LogJSON is one JSON object a line.
	LogJSON
)

// Resolved holds the configuration's values in the types the rest of edgeproxy uses, so
// that nothing outside this package parses a configuration string again. The checks fill
// it in as they parse: Parse what the file alone determines, CheckEnvironment (and so
// Load) what comes from the files the configuration names, which a syntax-only check
// never opens. The string fields of Config stay as written, for
// messages and for comparing two configurations.
type Resolved struct {
	// HTTPMode is listen.http_mode.
	HTTPMode HTTPMode
	// MinVersion is tls.min_version as a crypto/tls version (tls.VersionTLS12 or
	// tls.VersionTLS13).
	MinVersion uint16
	// TrustedProxies is forwarding.trusted_proxies; a single IP is the prefix of that
	// address alone.
	TrustedProxies []netip.Prefix
	// LogFormat is log.format.
	LogFormat LogFormat
	// Routes is the routing table: routes[], or, without routes, one default route to
	// the one pool.
	Routes *routing.Table
	// Pools are the pools by name, in name order: pools, or the pool block alone, named
	// "pool".
	Pools []NamedPool

	// FilesLoaded is true once CheckEnvironment has loaded the files below without error.
	FilesLoaded bool
	// Certificates are tls.certificates, loaded, in order, each with its Leaf parsed.
	// After a CheckEnvironment with errors it holds the pairs that did load.
	Certificates []LoadedCertificate
	// ACMERoots is tls.acme.ca_roots as a pool; nil means the system roots (or that the
	// file did not load).
	ACMERoots *x509.CertPool
	// UpstreamRoots is pool.tls.ca as a pool; nil means the system roots (or that the file
	// did not load).
	UpstreamRoots *x509.CertPool
	// PoolRoots are each pool's tls.ca as a pool, by pool name; a pool without one is
	// absent (the system roots).
	PoolRoots map[string]*x509.CertPool
}

// LoadedCertificate is one tls.certificates entry and what its files hold.
type LoadedCertificate struct {
	Files CertificateFiles
	// Certificate has its Leaf set.
	Certificate tls.Certificate
}

// TLSCertificates returns the loaded certificates alone, in configuration order.
func (r *Resolved) TLSCertificates() []tls.Certificate {
	out := make([]tls.Certificate, len(r.Certificates))
	for i, lc := range r.Certificates {
		out[i] = lc.Certificate
	}
	return out
}

// NeedsFiles reports whether the configuration names files (certificates, CA roots) that
// only CheckEnvironment loads.
func (c *Config) NeedsFiles() bool {
	return len(c.TLS.Certificates) > 0 || c.TLS.ACME.Enabled() && c.TLS.ACME.CARoots != "" ||
		c.poolNamesCA()
}

// poolNamesCA reports whether a pool names a tls.ca file.
func (c *Config) poolNamesCA() bool {
	for _, p := range c.pools() {
		if p.TLS != nil && p.TLS.CA != "" {
			return true
		}
	}
	return false
}
