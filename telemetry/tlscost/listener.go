package tlscost

import (
	"crypto/tls"
	"net"
	"time"
)

// Listener returns a TLS listener over inner whose connections a can measure. Its Accept
// returns a *tls.Conn at once, as tls.NewListener does; the server must then run each
// connection's handshake with Accountant.Handshake, in the goroutine that serves the
// connection (proxy.Server does, through ServerOptions.Handshake). A connection whose
// handshake crypto/tls starts by itself (a Read or Write before Handshake) is served but
// not measured.
//
// The handshake is not run by the listener in a goroutine of its own, handing the
// connection on when it is done, because that hand-off costs what the accounting must
// not: an extra goroutine, a channel send and the wake-up of the accepting goroutine
// per connection measured +5–10% CPU per new connection on a 2-core machine.
//
// Listener installs a wrapper of config.GetCertificate (or of the choice among
// config.Certificates); config must not be changed or shared with another listener
// afterwards. A nil Accountant returns tls.NewListener(inner, config), unmeasured.
func (a *Accountant) Listener(inner net.Listener, config *tls.Config) net.Listener {
	if a == nil {
		return tls.NewListener(inner, config)
	}
	config.GetCertificate = getCertificate(config.GetCertificate, config.Certificates)
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
	return tls.Server(&conn{Conn: raw, a: l.a, accepted: time.Now()}, l.config), nil
}

// Handshake runs tc's handshake. If tc came from one of a's listeners and its handshake
// has not begun, it is measured: its CPU on the thread that runs it (see the package
// comment), within Options.HandshakeTimeout if set, counted as failed if it fails; the caller
// closes tc then, as after any failed handshake. Otherwise, and for a nil Accountant, it
// is tc.Handshake().
func (a *Accountant) Handshake(tc *tls.Conn) error {
	c, ok := tc.NetConn().(*conn)
	if a == nil || !ok || c.a != a || c.started {
		return tc.Handshake()
	}
	c.started = true
	return a.handshake(c, tc)
}
