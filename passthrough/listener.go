package passthrough

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Listener returns a listener over inner whose Accept returns the connections that are
// not passed through, with the bytes already read from them replayed first (they are
// *ReplayConn values when bytes were read). Each accepted connection's ClientHello is read
// in a goroutine of its own, within Options.PeekTimeout, so that a slow client delays no
// other; a connection for a routed name is spliced there and never returned.
//
// Anything that is not a readable ClientHello (plain HTTP, garbage, a malformed hello) is
// returned as it came, for the TLS layer to refuse. A nil Router returns inner.
func (r *Router) Listener(inner net.Listener) net.Listener {
	if r == nil {
		return inner
	}
	return &listener{Listener: inner, r: r, conns: make(chan net.Conn), errs: make(chan error),
		done: make(chan struct{}), pending: map[net.Conn]struct{}{}}
}

type listener struct {
	net.Listener
	r *Router

	conns chan net.Conn // connections to hand on, to Accept
	errs  chan error    // inner Accept errors, to Accept
	done  chan struct{} // closed by Close

	startOnce sync.Once
	closeOnce sync.Once

	// pendingMu guards pending, the connections whose ClientHello is being read (Close
	// closes them: no server knows them yet), and closed.
	pendingMu sync.Mutex
	pending   map[net.Conn]struct{}
	closed    bool
}

// Accept returns the next connection that is not passed through.
func (l *listener) Accept() (net.Conn, error) {
	l.startOnce.Do(func() { go l.acceptLoop() })
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// acceptLoop accepts from inner and peeks at each connection in a goroutine. It starts
// on the first Accept, as tls.NewListener's does; an inner error goes to the next Accept,
// which decides (the server backs off and retries temporary ones); it ends when inner is
// closed.
func (l *listener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
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
		if !l.track(c) {
			c.Close()
			return
		}
		go l.peek(c, time.Now())
	}
}

// peek reads c's ClientHello, then splices c or hands it on.
func (l *listener) peek(c net.Conn, accepted time.Time) {
	buf, name, err := readHello(c, accepted.Add(l.r.opts.PeekTimeout))
	l.untrack(c)
	if err != nil { // silent past the timeout, or gone: nothing to answer
		c.Close()
		l.r.log.Debug("passthrough: no ClientHello: "+err.Error(), "client", c.RemoteAddr().String())
		return
	}
	if b := l.r.route(name); b != nil {
		l.r.splice(c, buf, name, b)
		return
	}
	var out net.Conn = c
	if len(buf) > 0 {
		out = &ReplayConn{Conn: c, pending: buf}
	}
	select {
	case l.conns <- out:
	case <-l.done:
		c.Close()
	}
}

// readHello reads from c until it holds a whole ClientHello (or something that is not
// one), by deadline, and returns what it read and the hello's server name.
func readHello(c net.Conn, deadline time.Time) ([]byte, string, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return nil, "", err
	}
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			name, perr := serverName(buf)
			switch {
			case perr == nil:
				return buf, name, c.SetReadDeadline(time.Time{})
			case errors.Is(perr, errNotHello) || len(buf) >= maxHelloBytes+recordHeaderLen*4:
				return buf, "", c.SetReadDeadline(time.Time{})
			}
		}
		if err != nil {
			return nil, "", err
		}
	}
}

func (l *listener) track(c net.Conn) bool {
	l.pendingMu.Lock()
	defer l.pendingMu.Unlock()
	if l.closed {
		return false
	}
	l.pending[c] = struct{}{}
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.pendingMu.Lock()
	delete(l.pending, c)
	l.pendingMu.Unlock()
}

// Close closes inner and the connections whose ClientHello is still being read; Accept
// returns net.ErrClosed from then on. Spliced connections are the Router's (Shutdown).
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.Listener.Close()
		l.pendingMu.Lock()
		l.closed = true
		for c := range l.pending {
			c.Close()
		}
		l.pendingMu.Unlock()
	})
	return err
}

// ReplayConn is a connection whose first bytes were read by the passthrough listener:
// Read returns them first, then reads from the connection.
type ReplayConn struct {
	net.Conn
	pending []byte
}

// Read returns the replayed bytes first.
func (c *ReplayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

var _ net.Conn = (*ReplayConn)(nil)
