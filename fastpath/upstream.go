package fastpath

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"edgeproxy/internal/sysconn"
)

// Upstream is the fast path's pool of keep-alive connections to the targets, with the
// pool's timeouts and TLS settings (the net/http path has its own, proxy.NewTransport,
// built from the same settings). It outlives a reload that keeps those settings, so
// pooled connections survive it.
type Upstream struct {
	connectTimeout        time.Duration
	responseHeaderTimeout time.Duration
	tls                   *tls.Config // nil: plain HTTP to the targets
	dialer                net.Dialer

	// mu guards idle, the fast path's idle connections per target address (most recently
	// used last), and busy, its connections in use: a list per target address.
	mu   sync.Mutex
	idle map[string][]*upstreamConn
	busy map[string]*upstreamConn
}

// Pool limits of the fast path, as proxy.NewTransport's for net/http.
const (
	maxIdlePerTarget  = 512
	upstreamIdleLimit = 90 * time.Second
	upstreamBufSize   = 16 << 10
)

// NewUpstream returns the fast path's upstream pool. tlsConfig nil means plain HTTP.
func NewUpstream(connectTimeout, responseHeaderTimeout time.Duration, tlsConfig *tls.Config) *Upstream {
	if tlsConfig != nil && tlsConfig.ClientSessionCache == nil {
		tlsConfig = tlsConfig.Clone()
		tlsConfig.ClientSessionCache = tls.NewLRUClientSessionCache(1024)
	}
	return &Upstream{
		connectTimeout:        connectTimeout,
		responseHeaderTimeout: responseHeaderTimeout,
		tls:                   tlsConfig,
		dialer:                net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second},
		idle:                  map[string][]*upstreamConn{},
		busy:                  map[string]*upstreamConn{},
	}
}

// AbortTarget breaks the fast path's connections busy with addr (their requests fail),
// for a target removed by a reload whose deregistration delay is over. net/http's
// requests to it are cancelled through the target's Retired context.
func (u *Upstream) AbortTarget(addr string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for c := u.busy[addr]; c != nil; c = c.next {
		c.Conn.SetDeadline(time.Unix(1, 0))
	}
}

// markBusy links c into the busy list of its target; u.mu must be held.
func (u *Upstream) markBusy(c *upstreamConn) {
	c.prev, c.next = nil, u.busy[c.addr]
	if c.next != nil {
		c.next.prev = c
	}
	u.busy[c.addr] = c
}

// unmarkBusy unlinks c from the busy list; u.mu must be held.
func (u *Upstream) unmarkBusy(c *upstreamConn) {
	switch {
	case c.prev != nil:
		c.prev.next = c.next
	case u.busy[c.addr] == c:
		if c.next == nil {
			delete(u.busy, c.addr)
		} else {
			u.busy[c.addr] = c.next
		}
	default:
		return // not busy
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
}

// release closes a connection that cannot be reused.
func (u *Upstream) release(c *upstreamConn) {
	u.mu.Lock()
	u.unmarkBusy(c)
	u.mu.Unlock()
	c.Close()
}

// CloseIdle closes every idle connection.
func (u *Upstream) CloseIdle() {
	u.mu.Lock()
	idle := u.idle
	u.idle = map[string][]*upstreamConn{}
	u.mu.Unlock()
	for _, conns := range idle {
		for _, c := range conns {
			c.Close()
		}
	}
}

// upstreamConn is one fast-path connection to a target, with its read buffer.
type upstreamConn struct {
	net.Conn
	addr     string
	buf      []byte // buf[r:w] holds bytes read and not yet consumed
	r, w     int
	idleFrom time.Time
	reused   bool // taken from the pool rather than dialled for this request

	prev, next *upstreamConn // in Upstream.busy while in use
}

var upstreamBufPool = sync.Pool{New: func() any { b := make([]byte, upstreamBufSize); return &b }}

// get returns an idle connection to addr, or dials one, and marks it busy. A pooled
// connection that the target has closed meanwhile is detected by a non-blocking read and
// discarded.
func (u *Upstream) get(addr string) (*upstreamConn, error) {
	for {
		u.mu.Lock()
		conns := u.idle[addr]
		var c *upstreamConn
		if n := len(conns); n > 0 {
			c = conns[n-1]
			conns[n-1] = nil
			u.idle[addr] = conns[:n-1]
		}
		u.mu.Unlock()
		if c == nil {
			break
		}
		if idle := time.Since(c.idleFrom); idle < upstreamIdleLimit && (idle < liveCheckAfter || c.alive()) {
			c.reused = true
			u.mu.Lock()
			u.markBusy(c)
			u.mu.Unlock()
			return c, nil
		}
		c.Close()
	}
	c, err := u.dial(context.Background(), addr)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	u.markBusy(c)
	u.mu.Unlock()
	return c, nil
}

func (u *Upstream) dial(ctx context.Context, addr string) (*upstreamConn, error) {
	conn, err := u.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn = sysconn.Wrap(conn)
	if u.tls != nil {
		conf := u.tls
		if conf.ServerName == "" {
			conf = conf.Clone()
			conf.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(conn, conf)
		hctx, cancel := context.WithTimeout(ctx, u.connectTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: conn.RemoteAddr(), Err: err}
		}
		conn = tc
	}
	return &upstreamConn{Conn: conn, addr: addr, buf: *upstreamBufPool.Get().(*[]byte)}, nil
}

// liveCheckAfter is how long a connection may sit idle before get checks that the
// target has not closed it. Below it the check is skipped (it costs a syscall and an
// allocation); a connection closed meanwhile is still caught, by exchange's one retry on a
// fresh connection.
const liveCheckAfter = time.Second

// alive reports whether an idle connection is still open: a read that would block
// means it is; data or EOF means the target closed it (or broke the protocol).
func (c *upstreamConn) alive() bool {
	if c.r != c.w {
		return false // unsolicited bytes from an idle connection
	}
	if err := c.SetReadDeadline(time.Now()); err != nil {
		return false
	}
	c.r, c.w = 0, 0
	n, err := c.Conn.Read(c.buf[:1])
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	return c.SetReadDeadline(time.Time{}) == nil
}

// put returns a connection whose response was read whole to the pool.
func (u *Upstream) put(c *upstreamConn) {
	c.idleFrom = time.Now()
	c.reused = false
	u.mu.Lock()
	u.unmarkBusy(c)
	if conns := u.idle[c.addr]; len(conns) < maxIdlePerTarget {
		u.idle[c.addr] = append(conns, c)
		u.mu.Unlock()
		return
	}
	u.mu.Unlock()
	c.Close()
}

// fill reads more from the target into the buffer, compacting it first.
func (c *upstreamConn) fill() error {
	if c.r > 0 {
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	}
	if c.w == len(c.buf) {
		return errResponseHeadTooLarge
	}
	n, err := c.Conn.Read(c.buf[c.w:])
	c.w += n
	if n > 0 {
		return nil
	}
	return err
}

// Close closes the connection and returns its buffer.
func (c *upstreamConn) Close() error {
	err := c.Conn.Close()
	if c.buf != nil {
		b := c.buf
		c.buf = nil
		upstreamBufPool.Put(&b)
	}
	return err
}

var errResponseHeadTooLarge = errors.New("fastpath: response head larger than 16 KiB")
