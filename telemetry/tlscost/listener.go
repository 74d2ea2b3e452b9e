package tlscost

import (
	"crypto/tls"
	"net"
	"time"

	"edgeproxy/internal/writebatch"
)

// Conn returns raw, accepted by a TLS listener, wrapped so that a measures it: the server
// makes its *tls.Conn over the result (tls.Server) and runs the handshake with Handshake,
// in the goroutine that serves the connection (proxy.Server does, through
// ServerOptions.Handshake). A connection whose handshake crypto/tls starts by itself (a
// Read or Write before Handshake) is served but not measured. The certificate chosen for
// it is reported with CertificateChosen. A nil Accountant returns raw, unmeasured.
//
// The handshake is not run by the listener in a goroutine of its own, handing the
// connection on when it is done, because that hand-off costs what the accounting must
// not: an extra goroutine, a channel send and the wake-up of the accepting goroutine
// per connection measured +5–10% CPU per new connection on a 2-core machine.
func (a *Accountant) Conn(raw net.Conn) net.Conn {
	if a == nil {
		return raw
	}
	return &conn{Conn: raw, a: a, accepted: time.Now()}
}

// CertificateChosen records the key type of cert (the key label of the handshake
// metrics) for the handshake of hello's connection. The certificate choice calls it;
// for a connection Conn did not wrap it does nothing.
//
// The choice runs inside the handshake's CPU segment, on the locked thread: it is part of
// what the handshake costs, and it must not wait (edgeproxy's certs.Source answers from
// memory; ACME orders are placed outside handshakes). Pausing the segment around it would
// cost two more readings of the thread clock per handshake (~1 µs each).
func CertificateChosen(hello *tls.ClientHelloInfo, cert *tls.Certificate) {
	if c, ok := measured(hello.Conn); ok && cert != nil {
		c.key = keyType(cert)
	}
}

// Handshake runs tc's handshake. If tc is over a connection from an Accountant's Conn and
// its handshake has not begun, that Accountant measures it: its CPU on the thread that
// runs it (see the package comment), within Options.HandshakeTimeout if set, counted as
// failed if it fails; the caller closes tc then, as after any failed handshake.
// Otherwise it is tc.Handshake(). A connection stays with the Accountant that accepted
// it, so turning the accounting off or on affects new connections only.
func Handshake(tc *tls.Conn) error {
	c, ok := measured(tc.NetConn())
	if !ok || c.started {
		return tc.Handshake()
	}
	c.started = true
	return c.a.handshake(c, tc)
}

// Handshake is the package's Handshake for connections of a alone: a connection another
// Accountant accepted is handshaken unmeasured. A nil Accountant measures nothing.
func (a *Accountant) Handshake(tc *tls.Conn) error {
	c, ok := measured(tc.NetConn())
	if a == nil || !ok || c.a != a {
		return tc.Handshake()
	}
	return Handshake(tc)
}

// measured returns the Accountant's wrapper of nc, found through the connections that
// sit above it and say what they wrap (NetConn, as the TLS listener's write batching
// does); false for a connection Conn did not wrap.
func measured(nc net.Conn) (*conn, bool) {
	for {
		switch c := nc.(type) {
		case *conn:
			return c, true
		case interface{ NetConn() net.Conn }:
			nc = c.NetConn()
		default:
			return nil, false
		}
	}
}

// listener is a TLS listener over inner whose connections a measures (see Conn): the
// calibration's. It serves config.Certificates[0] (or config.GetCertificate's choice) and
// reports it to CertificateChosen. config must not be changed or shared with another
// listener afterwards. A nil Accountant returns tls.NewListener(inner, config),
// unmeasured. (edgeproxy's HTTPS listener is tlsserve's.)
func (a *Accountant) listener(inner net.Listener, config *tls.Config) net.Listener {
	if a == nil {
		return tls.NewListener(inner, config)
	}
	inner0, certs := config.GetCertificate, config.Certificates
	config.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if inner0 != nil {
			cert, err := inner0(hello)
			CertificateChosen(hello, cert)
			return cert, err
		}
		if len(certs) == 0 {
			return nil, nil
		}
		CertificateChosen(hello, &certs[0])
		return &certs[0], nil
	}
	return &listener{Listener: inner, a: a, config: config}
}

type listener struct {
	net.Listener
	a      *Accountant
	config *tls.Config
}

// Accept returns the next connection, its handshake not yet done.
func (l *listener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return tls.Server(&writebatch.Conn{Conn: l.a.Conn(raw)}, l.config), nil // as tlsserve's listener
}
