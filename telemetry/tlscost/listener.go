package tlscost

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
)

// Listener returns a TLS listener over inner that measures every connection. Its Accept
// returns *tls.Conn values whose handshake is already done: the handshake runs in a
// goroutine per connection, under measurement and within Options.HandshakeTimeout, and a
// connection whose handshake fails is counted, closed and never returned.
//
// Listener installs a wrapper of config.GetCertificate (or of the choice among
// config.Certificates); config must not be changed or shared with another listener
// afterwards. A nil Accountant returns tls.NewListener(inner, config), unmeasured.
func (a *Accountant) Listener(inner net.Listener, config *tls.Config) net.Listener {
	if a == nil {
		return tls.NewListener(inner, config)
	}
	config.GetCertificate = getCertificate(config.GetCertificate, config.Certificates)
	return &listener{
		Listener: inner,
		a:        a,
		config:   config,
		conns:    make(chan *tls.Conn),
		errs:     make(chan error),
		done:     make(chan struct{}),
		pending:  map[*conn]struct{}{},
	}
}

type listener struct {
	net.Listener
	a      *Accountant
	config *tls.Config

	conns chan *tls.Conn // handshaken connections, to Accept
	errs  chan error     // inner Accept errors, to Accept
	done  chan struct{}  // closed by Close

	startOnce sync.Once
	closeOnce sync.Once

	// pendingMu guards pending and closed: the connections in their handshake, which
	// Close closes (net/http does not know them yet, so its Shutdown cannot).
	pendingMu sync.Mutex
	pending   map[*conn]struct{}
	closed    bool

	wg sync.WaitGroup // the accept loop and the handshake goroutines
}

// Accept returns the next connection whose handshake succeeded.
func (l *listener) Accept() (net.Conn, error) {
	l.startOnce.Do(func() {
		l.wg.Add(1)
		go l.acceptLoop()
	})
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// acceptLoop accepts from inner and starts a handshake for each connection. It starts on
// the first Accept, so that nothing is accepted before the server serves, as with
// tls.NewListener. An error from inner goes to the next Accept, which decides (net/http
// backs off and retries temporary ones); the loop ends when inner is closed.
func (l *listener) acceptLoop() {
	defer l.wg.Done()
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.errs <- err:
			case <-l.done:
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c := &conn{Conn: raw, a: l.a}
		if !l.track(c) {
			_ = raw.Close()
			return
		}
		l.wg.Add(1)
		go l.handshake(c)
	}
}

func (l *listener) handshake(c *conn) {
	defer l.wg.Done()
	tc := tls.Server(c, l.config)
	ok := l.a.handshake(c, tc)
	l.untrack(c)
	if !ok {
		_ = c.Conn.Close()
		return
	}
	select {
	case l.conns <- tc:
	case <-l.done:
		_ = tc.Close()
	}
}

func (l *listener) track(c *conn) bool {
	l.pendingMu.Lock()
	defer l.pendingMu.Unlock()
	if l.closed {
		return false
	}
	l.pending[c] = struct{}{}
	return true
}

func (l *listener) untrack(c *conn) {
	l.pendingMu.Lock()
	delete(l.pending, c)
	l.pendingMu.Unlock()
}

// Close closes inner and every connection still in its handshake; Accept returns
// net.ErrClosed from then on. Connections already returned by Accept are the server's.
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.Listener.Close()
		l.pendingMu.Lock()
		l.closed = true
		for c := range l.pending {
			_ = c.Conn.Close()
		}
		l.pendingMu.Unlock()
	})
	return err
}

// wait blocks until the accept loop and every handshake goroutine have returned (tests).
func (l *listener) wait() { l.wg.Wait() }
