// Package tlsserve terminates TLS on the HTTPS listener: it owns the listener's tls.Config,
// picks the certificate for each ClientHello, rotates the session-ticket keys, and lets a
// reload replace the whole configuration (certificates, minimum version, the TLS cost
// accounting) for the handshakes that follow, through GetConfigForClient, while the
// connections already open keep theirs.
//
// What TLS costs is measured by telemetry/tlscost: the listener hands each connection to
// the Accountant in effect and reports the certificate chosen to it; this package decides
// nothing about the accounting.
package tlsserve

import (
	"context"
	"crypto/tls"
	"net"
	"slices"
	"sync/atomic"

	"edgeproxy/internal/writebatch"
	"edgeproxy/telemetry/tlscost"
)

// Settings are what the HTTPS listener's TLS depends on, all of it replaceable by a reload.
type Settings struct {
	// Template is the certificate source's configuration (certs.Source.TLSConfig): its
	// GetCertificate picks the certificate, its NextProtos are the ALPN protocols offered
	// and its CipherSuites the TLS 1.2 suites. It is copied, not changed.
	Template *tls.Config
	// MinVersion is tls.VersionTLS12 or tls.VersionTLS13 (tls.min_version); zero means
	// TLS 1.2.
	MinVersion uint16
	// Cost measures the connections accepted while these settings are in effect; nil
	// measures none (tls.tls_cost: false).
	Cost *tlscost.Accountant
}

// Prepared is a configuration built from Settings that does not serve yet: a reload builds
// every part first and makes them serve (Server.Swap) only when all have built.
type Prepared struct {
	conf *tls.Config
	cost *tlscost.Accountant
}

// TicketKeySource installs session ticket keys on a configuration, now and whenever they
// change, until remove is called: the keys a fleet of replicas shares
// (fleet.TicketKeys), so that a client resumes on any replica.
type TicketKeySource interface {
	Apply(cfg *tls.Config) (remove func())
}

// Server is the TLS side of the HTTPS listener. Use New.
type Server struct {
	tickets SessionTickets
	// shared, when set (ShareTicketKeys), supplies the ticket keys instead of tickets;
	// removeShared stops it updating the configuration in effect.
	shared       TicketKeySource
	removeShared func()
	// base is the configuration each connection starts with: its GetConfigForClient
	// hands over the current one.
	base *tls.Config
	cur  atomic.Pointer[Prepared]
}

// New returns a Server serving s.
func New(s Settings) *Server {
	srv := &Server{}
	srv.base = &tls.Config{
		GetConfigForClient: srv.configForClient,
		// Handshakes take the current configuration's ALPN protocols; the base carries
		// them for net/http, which serves HTTP/2 only if its TLSConfig offers h2.
		NextProtos: slices.Clone(s.Template.NextProtos),
	}
	srv.Swap(srv.Prepare(s))
	return srv
}

// Prepare builds the configuration of s without putting it in effect.
func (srv *Server) Prepare(s Settings) *Prepared {
	conf := s.Template.Clone()
	conf.MinVersion = s.MinVersion
	if conf.MinVersion == 0 {
		conf.MinVersion = tls.VersionTLS12
	}
	conf.GetCertificate = chooseCertificate(conf.GetCertificate, conf.Certificates)
	return &Prepared{conf: conf, cost: s.Cost}
}

// Swap makes p the configuration of the handshakes and connections that begin from now
// on. Connections already accepted keep their accounting and, once their ClientHello is
// read, their configuration. p gets the session-ticket keys in use, so clients keep
// resuming across the swap.
func (srv *Server) Swap(p *Prepared) {
	if srv.shared != nil {
		remove := srv.shared.Apply(p.conf)
		srv.cur.Swap(p)
		srv.removeShared()
		srv.removeShared = remove
		return
	}
	srv.tickets.Attach(p.conf)
	if old := srv.cur.Swap(p); old != nil {
		srv.tickets.Detach(old.conf)
	}
}

// ShareTicketKeys makes src supply the session ticket keys of this and every later
// configuration, instead of the keys this Server rotates for itself. Call it once, before
// serving, and not concurrently with Swap.
func (srv *Server) ShareTicketKeys(src TicketKeySource) {
	p := srv.cur.Load()
	srv.tickets.Detach(p.conf)
	srv.shared = src
	srv.removeShared = src.Apply(p.conf)
}

// Current returns the configuration the next handshake gets: for tests and for clients
// (such as http.Server.TLSConfig) that want to see the settings in effect. It must not
// be changed.
func (srv *Server) Current() *tls.Config { return srv.cur.Load().conf }

// Config is the configuration to serve with (tls.Server, http.Server.TLSConfig): it
// carries the hand-over to the current configuration, and the ALPN protocols at start
// for net/http's HTTP/2 set-up (which may add to them; handshakes do not read them).
func (srv *Server) Config() *tls.Config { return srv.base }

func (srv *Server) configForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	return srv.cur.Load().conf, nil
}

// Listener returns a TLS listener over inner. Its Accept returns a *tls.Conn at once, its
// handshake not begun, measured by the Accountant in effect (Settings.Cost); run the
// handshake with Handshake in the goroutine that serves the connection.
func (srv *Server) Listener(inner net.Listener) net.Listener {
	return &listener{Listener: inner, srv: srv}
}

type listener struct {
	net.Listener
	srv *Server
}

// Accept returns the next connection, its handshake not yet done.
func (l *listener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return tls.Server(&writebatch.Conn{Conn: l.srv.cur.Load().cost.Conn(raw)}, l.srv.base), nil
}

// Handshake runs the handshake of a connection from Listener, measured if the accounting
// was on when it was accepted (tlscost.Handshake).
func Handshake(tc *tls.Conn) error { return tlscost.Handshake(tc) }

// Run rotates the session-ticket keys until ctx is done.
func (srv *Server) Run(ctx context.Context) { srv.tickets.Run(ctx) }

// chooseCertificate is the certificate choice of inner (or, without it, crypto/tls's among
// certs), reported to the TLS cost accounting for its key label.
func chooseCertificate(inner func(*tls.ClientHelloInfo) (*tls.Certificate, error), certs []tls.Certificate) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		var cert *tls.Certificate
		if inner != nil {
			var err error
			if cert, err = inner(hello); err != nil {
				return nil, err
			}
		}
		if cert == nil {
			cert = pickCertificate(certs, hello)
		}
		tlscost.CertificateChosen(hello, cert)
		return cert, nil
	}
}

// pickCertificate is what crypto/tls does without GetCertificate (or when it returns nil):
// the first of certs that hello supports, else the first.
func pickCertificate(certs []tls.Certificate, hello *tls.ClientHelloInfo) *tls.Certificate {
	if len(certs) == 0 {
		return nil
	}
	for i := range certs {
		if hello.SupportsCertificate(&certs[i]) == nil {
			return &certs[i]
		}
	}
	return &certs[0]
}
