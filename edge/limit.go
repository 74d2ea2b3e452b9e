package edge

import (
	"net"
	"sync"
	"syscall"
	"time"

	"edgeproxy/internal/sysconn"
)

func errAddrInUse() error { return syscall.EADDRINUSE }
func errAccess() error    { return syscall.EACCES }

// acceptWait is how long a connection beyond limits.max_connections waits for a free slot
// before it is refused (closed), so that a short burst queues instead of failing.
const acceptWait = 100 * time.Millisecond

// limitListener caps the number of open connections accepted from ln at max.
func limitListener(ln net.Listener, max int) net.Listener {
	return &limitedListener{Listener: ln, sem: make(chan struct{}, max)}
}

type limitedListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c = sysconn.Wrap(c)
		select {
		case l.sem <- struct{}{}:
			return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
		}
		t := time.NewTimer(acceptWait)
		select {
		case l.sem <- struct{}{}:
			t.Stop()
			return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
		case <-t.C:
			_ = c.Close() // over the limit: refuse rather than queue without bound
		}
	}
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// NetConn returns the connection below, so that passthrough can splice(2) it.
func (c *limitedConn) NetConn() net.Conn { return c.Conn }

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
