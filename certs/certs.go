// Package certs decides which certificate the HTTPS listener presents: static files chosen
// by SNI, a generated self-signed certificate for local use, and (see acme.go) ACME
// certificates. All sources share one tls.Config.GetCertificate hook.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Observer is told about handshakes no certificate covers. A nil Observer is valid.
type Observer interface {
	UnknownServerName()
}

// Options configure a Source.
type Options struct {
	// Static are loaded certificates with parsed leaves (tls.Certificate.Leaf set), in
	// configuration order; the first is the default for unknown names.
	Static []tls.Certificate
	// SelfSigned generates an ECDSA P-256 certificate for SelfSignedNames (plus localhost,
	// 127.0.0.1 and ::1); it is the default when there is no static certificate.
	SelfSigned      bool
	SelfSignedNames []string
	// MinVersion is tls.VersionTLS12 (zero means that) or tls.VersionTLS13.
	MinVersion uint16
	// Logger receives the once-per-name notice of unknown server names; nil means none.
	Logger   *slog.Logger
	Observer Observer
	// ACME, if not nil, obtains certificates for ACME.Domains from an ACME CA (acme.go);
	// Start begins that work.
	ACME *ACMEOptions
	// ACMEOf, if not nil, makes the new Source serve the ACME certificates of that one,
	// which keeps obtaining and renewing them (for a reload that keeps tls.acme); ACME
	// is then ignored.
	ACMEOf *Source
}

// maxRememberedNames bounds the set of unknown names already logged, so a scanner sending
// random SNI cannot grow memory; beyond it, names are logged again.
const maxRememberedNames = 4096

// Source answers GetCertificate. Use New.
type Source struct {
	byName     map[string]*tls.Certificate // exact DNS names and IPs, lower case
	byWildcard map[string]*tls.Certificate // "example.com" for "*.example.com"
	fallback   *tls.Certificate            // first static, else self-signed; nil if neither
	covered    []string                    // names for the hint in logs
	opts       Options
	log        *slog.Logger
	acme       *acmeManager      // nil without ACME
	selfSigned *x509.Certificate // the generated certificate's leaf; nil if none

	// unknownMu guards unknownLogged.
	unknownMu     sync.Mutex
	unknownLogged map[string]bool
}

// New builds a Source, generating the self-signed certificate if asked, and with ACME
// preparing the cache directory and loading the certificates cached there (Start orders
// the missing ones).
func New(opts Options) (*Source, error) {
	s := &Source{
		byName:        map[string]*tls.Certificate{},
		byWildcard:    map[string]*tls.Certificate{},
		opts:          opts,
		log:           opts.Logger,
		unknownLogged: map[string]bool{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for i := range opts.Static {
		s.add(&opts.Static[i])
	}
	if opts.SelfSigned {
		cert, err := SelfSigned(opts.SelfSignedNames, 90*24*time.Hour)
		if err != nil {
			return nil, err
		}
		s.add(&cert)
		s.selfSigned = cert.Leaf
	}
	if s.fallback == nil && (len(opts.Static) > 0 || opts.SelfSigned) {
		return nil, errors.New("certs: no usable certificate")
	}
	switch {
	case opts.ACMEOf != nil:
		s.acme = opts.ACMEOf.acme
	case opts.ACME != nil:
		a, err := newACME(*opts.ACME, s.log)
		if err != nil {
			return nil, err
		}
		s.acme = a
	}
	if a := s.acme; a != nil {
		s.covered = append(s.covered, a.names...)
		for _, name := range a.names {
			if s.Lookup(name) != nil {
				s.log.Warn(fmt.Sprintf("tls.acme.domains lists %s, which a static certificate covers: that one is served, the ACME one is obtained for nothing", name))
			}
		}
	}
	return s, nil
}

func (s *Source) add(c *tls.Certificate) {
	if c.Leaf == nil {
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return
		}
		c.Leaf = leaf
	}
	if s.fallback == nil {
		s.fallback = c
	}
	names := append([]string{}, c.Leaf.DNSNames...)
	for _, ip := range c.Leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Leaf.Subject.CommonName != "" {
		names = append(names, c.Leaf.Subject.CommonName)
	}
	for _, n := range names {
		n = strings.ToLower(n)
		s.covered = append(s.covered, n)
		if rest, ok := strings.CutPrefix(n, "*."); ok {
			if _, dup := s.byWildcard[rest]; !dup {
				s.byWildcard[rest] = c
			}
		} else if _, dup := s.byName[n]; !dup {
			s.byName[n] = c
		}
	}
}

// Lookup returns the certificate that covers name exactly or by wildcard, or nil.
func (s *Source) Lookup(name string) *tls.Certificate {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if c := s.byName[name]; c != nil {
		return c
	}
	if _, parent, ok := strings.Cut(name, "."); ok {
		return s.byWildcard[parent]
	}
	return nil
}

// GetCertificate implements the tls.Config.GetCertificate hook: the static certificate
// covering the SNI name, else the ACME certificate of a listed domain, else the default
// certificate. An uncovered name is logged once and counted. It never contacts a CA: ACME
// certificates are obtained in the background (Start), and a CA's TLS-ALPN-01 validation
// gets the token certificate of the order in flight.
func (s *Source) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.acme != nil && isACMEChallenge(hello) {
		return s.acme.challengeCert(hello)
	}
	var local net.Addr
	if hello.Conn != nil {
		local = hello.Conn.LocalAddr()
	}
	c, known, err := s.choose(hello.ServerName, local)
	if !known {
		s.unknownName(hello.ServerName)
	}
	return c, err
}

// Served returns the leaf of the certificate that a handshake for serverName (its SNI)
// gets: GetCertificate's choice, without its log line and count. A request on that
// connection may ask for the names it covers, and gets 421 for others (package proxy).
// It returns nil, which checks nothing, when there is no certificate; for the
// self-signed one, which vouches for no name a client could verify (and serves any name,
// such as a site behind a CDN that does not verify the origin's certificate); and
// without SNI: a client dialling an IP address (a load balancer's health check, say)
// named no site it could be misdirected from.
func (s *Source) Served(serverName string) *x509.Certificate {
	if serverName == "" {
		return nil
	}
	c, _, _ := s.choose(serverName, nil)
	if c == nil || c.Leaf == nil || c.Leaf == s.selfSigned {
		return nil
	}
	return c.Leaf
}

// choose is the certificate for serverName on the local address (nil: unknown): the
// static certificate covering the name, else the ACME certificate of a listed domain,
// else, without a name, the one of the local IP address, else the default certificate.
// known is false when no certificate covers the name.
func (s *Source) choose(serverName string, local net.Addr) (c *tls.Certificate, known bool, err error) {
	if c := s.Lookup(serverName); c != nil {
		return c, true, nil
	}
	if s.acme != nil {
		if d := s.acme.domain(serverName); d != nil {
			c, err := s.acmeCertificate(d)
			return c, true, err
		}
	}
	// Clients dialling an IP send no SNI; a certificate with that IP in its SANs covers
	// them: a static one, else the ACME one of tls.acme.ip_addresses.
	if serverName == "" && local != nil {
		if host, _, err := net.SplitHostPort(local.String()); err == nil {
			if c := s.Lookup(normalizeName(host)); c != nil {
				return c, true, nil
			}
			if s.acme != nil {
				if d := s.acme.domain(host); d != nil {
					c, err := s.acmeCertificate(d)
					return c, true, err
				}
			}
		}
	}
	if s.fallback != nil {
		return s.fallback, false, nil
	}
	return nil, false, fmt.Errorf("certs: no certificate for server name %q", serverName)
}

// acmeCertificate is the certificate of an ACME name: its own, else (not obtained yet)
// the default certificate, else an error.
func (s *Source) acmeCertificate(d *acmeDomain) (*tls.Certificate, error) {
	if c := s.acme.certificate(d); c != nil {
		return c, nil
	}
	if s.fallback != nil {
		return s.fallback, nil
	}
	return nil, fmt.Errorf("certs: the certificate for %s is not obtained yet", d.name)
}

func (s *Source) unknownName(name string) {
	if s.opts.Observer != nil {
		s.opts.Observer.UnknownServerName()
	}
	s.unknownMu.Lock()
	seen := s.unknownLogged[name]
	if !seen {
		if len(s.unknownLogged) >= maxRememberedNames {
			clear(s.unknownLogged)
		}
		s.unknownLogged[name] = true
	}
	s.unknownMu.Unlock()
	if seen {
		return
	}
	shown := name
	if shown == "" {
		shown = "(no SNI)"
	}
	s.log.Warn(fmt.Sprintf("TLS handshake for server name %s, which no certificate covers (covered: %s); did DNS point another name at this box?",
		shown, strings.Join(s.covered, ", ")), "server_name", name)
}

// TLSConfig returns the server TLS configuration: TLS 1.2 or later, only forward-secret
// AEAD suites for TLS 1.2, HTTP/2 and HTTP/1.1 offered through ALPN (and acme-tls/1 for
// TLS-ALPN-01 validations when ACME is on).
func (s *Source) TLSConfig() *tls.Config {
	minVersion := s.opts.MinVersion
	if minVersion == 0 {
		minVersion = tls.VersionTLS12
	}
	return &tls.Config{
		MinVersion:     minVersion,
		GetCertificate: s.GetCertificate,
		NextProtos:     s.nextProtos(),
		// TLS 1.3 suites are not configurable and all good; these are the TLS 1.2 ones
		// with ECDHE and an AEAD, in Go's preference order.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
}

// HTTPHandler wraps fallback with the ACME HTTP-01 challenge responder when ACME is on,
// and makes HTTP-01 the second choice after TLS-ALPN-01 (call it before Start); without
// ACME it returns fallback unchanged.
func (s *Source) HTTPHandler(fallback http.Handler) http.Handler {
	if s.acme == nil {
		return fallback
	}
	return s.acme.httpHandler(fallback)
}

// SelfSigned returns a new self-signed ECDSA P-256 certificate valid for names plus
// localhost, 127.0.0.1 and ::1, from an hour ago for the given lifetime.
func SelfSigned(names []string, lifetime time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "edgeproxy self-signed", Organization: []string{"edgeproxy"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" && n != "localhost" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: self-signing: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
