package edge

import (
	"bytes"
	"fmt"
	"slices"

	"edgeproxy/certs"
	"edgeproxy/config"
	"edgeproxy/telemetry/tlscost"
	"edgeproxy/tlsserve"
)

// newCertSource builds the certificate source of cfg from the certificates config loaded,
// without putting it in effect. A reload's source serves the ACME certificates of the
// source built at start, which keeps obtaining and renewing them (tls.acme needs a
// restart).
func (e *Edge) newCertSource(cfg *config.Config) (*certs.Source, error) {
	opts := certs.Options{
		Static: cfg.Resolved.TLSCertificates(), SelfSigned: cfg.TLS.SelfSigned, MinVersion: cfg.Resolved.MinVersion,
		Logger: e.log, Observer: e.metrics,
	}
	if e.certs != nil { // a reload
		opts.ACMEOf = e.certs
		return certs.New(opts)
	}
	if a := cfg.TLS.ACME; a.Enabled() {
		opts.ACME = &certs.ACMEOptions{
			Domains: a.Domains, IPAddresses: a.IPAddresses, Profile: a.Profile,
			Email: a.Email, DirectoryURL: a.Directory, RootCAs: cfg.Resolved.ACMERoots,
			CacheDir: a.CacheDir, RenewBefore: a.RenewBefore, Observer: e.metrics,
		}
		if r := a.Storage.Redis; r != nil {
			f, err := e.openFleet(r)
			if err != nil {
				return nil, err
			}
			opts.ACME.Fleet = f.store
		}
	}
	return certs.New(opts)
}

// useCertSource puts src in effect for the certificate gauges: static files expire too
// (certbot renews them outside edgeproxy), so they get the same gauge as ACME's, and one
// alert covers both. Names come from the configured files.
func (e *Edge) useCertSource(src *certs.Source, cfg *config.Config) {
	e.certSrc.Store(src)
	for _, lc := range cfg.Resolved.Certificates {
		for _, name := range lc.Certificate.Leaf.DNSNames {
			e.metrics.CertificateExpiry(name, lc.Certificate.Leaf.NotAfter)
			e.metrics.CertificateNotBefore(name, lc.Certificate.Leaf.NotBefore)
		}
	}
}

// accountant returns the TLS cost accounting cfg asks for, nil when tls.tls_cost is off.
// It is created the first time it is asked for and then kept, even by a reload that fails
// later: its metrics stay registered, and turning tls.tls_cost off and on again continues
// the same counters.
func (e *Edge) accountant(cfg *config.Config) (*tlscost.Accountant, error) {
	if !cfg.TLS.TLSCost {
		return nil, nil
	}
	if e.tlsCost == nil {
		// The handshake deadline is proxy.Server's: read_header_timeout, as net/http's.
		opts := tlscost.Options{Registerer: e.metrics.Registry(), Logger: e.log}
		if cfg.TLS.ACME.Enabled() {
			opts.CacheDir = cfg.TLS.ACME.CacheDir // the calibration beside the certificates; else tlscost.DefaultCacheDir
		}
		if !e.fastPath {
			// net/http serves HTTP/1.1 and writes responses through the proxy's 32 KiB
			// copy buffer: a write may be cut into two full records.
			opts.MaxAppWrite = 32 << 10
		}
		a, err := tlscost.New(opts)
		if err != nil {
			return nil, fmt.Errorf("edge: tls.tls_cost: %w", err)
		}
		e.tlsCost = a
	}
	return e.tlsCost, nil
}

// tlsSettings are the HTTPS listener's TLS settings for cfg with the certificates of src.
func (e *Edge) tlsSettings(cfg *config.Config, src *certs.Source) (tlsserve.Settings, error) {
	cost, err := e.accountant(cfg)
	return tlsserve.Settings{Template: src.TLSConfig(), MinVersion: cfg.Resolved.MinVersion, Cost: cost}, err
}

// tlsReload is the TLS part of a reload, built and not yet in effect.
type tlsReload struct {
	cfg *config.Config
	// src is the new certificate source; nil keeps the one in effect.
	src *certs.Source
	// prepared is the HTTPS listener's new TLS configuration; nil without that listener.
	prepared *tlsserve.Prepared
}

// prepareTLSReload builds the TLS part of a reload to cfg: a certificate source when the
// certificates changed (in the configuration or in their files), and the HTTPS
// listener's TLS configuration (certificates, tls.min_version, tls.tls_cost). Nothing
// is in effect until commitTLSReload.
func (e *Edge) prepareTLSReload(old, cfg *config.Config) (*tlsReload, error) {
	r := &tlsReload{cfg: cfg}
	src := e.certSrc.Load()
	if certificatesChanged(old, cfg) {
		var err error
		if src, err = e.newCertSource(cfg); err != nil {
			return nil, err
		}
		r.src = src
	}
	if e.tls != nil {
		s, err := e.tlsSettings(cfg, src)
		if err != nil {
			return nil, err
		}
		r.prepared = e.tls.Prepare(s)
	}
	return r, nil
}

// commitTLSReload puts r in effect: the handshakes from now on get its configuration.
func (e *Edge) commitTLSReload(r *tlsReload) {
	if r.src != nil {
		e.useCertSource(r.src, r.cfg)
	}
	if r.prepared != nil {
		e.tls.Swap(r.prepared)
	}
}

// certificatesChanged reports whether the certificates to serve differ: other files,
// self-signed on or off, or the same files with new contents (renewed by certbot, say).
func certificatesChanged(old, cfg *config.Config) bool {
	if !slices.Equal(old.TLS.Certificates, cfg.TLS.Certificates) || old.TLS.SelfSigned != cfg.TLS.SelfSigned {
		return true
	}
	a, b := old.Resolved.Certificates, cfg.Resolved.Certificates
	return !slices.EqualFunc(a, b, func(x, y config.LoadedCertificate) bool {
		return slices.EqualFunc(x.Certificate.Certificate, y.Certificate.Certificate, bytes.Equal)
	})
}

// checkResolved refuses a configuration whose files were not loaded (config.Parse without
// CheckEnvironment): it would serve without its certificates or CAs.
func checkResolved(cfg *config.Config) error {
	if cfg.NeedsFiles() && !cfg.Resolved.FilesLoaded {
		return fmt.Errorf("edge: %s: the files the configuration names are not loaded (config.Load loads them)", cfg.File)
	}
	return nil
}
