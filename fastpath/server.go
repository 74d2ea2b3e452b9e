// Package fastpath is the HTTP/1.1 fast path: a connection server that reads requests
// with the strict parser of proxy/h1 and relays them over its own pool of keep-alive
// connections to the targets (Upstream), through the proxy core (proxy.Handler's Begin,
// Forward, Fail and Finish) that the net/http path uses too, so that both answer alike.
// What it does not serve itself (HTTP/2, upgrades, Expect, trailers, ...) it hands to a
// net/http server on the same connection, behind a gate that applies the same strict
// parser to every head.
package fastpath

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"edgeproxy/internal/writebatch"
	"edgeproxy/proxy"
)

// Backend is what the fast path sends requests through: the handler whose policy applies
// and the upstream pool that reaches its targets. A reload swaps it as one value.
type Backend struct {
	Handler *proxy.Handler
	// Upstream reaches the targets of the one pool; Upstreams those of each named pool,
	// by name (a pool missing there uses Upstream).
	Upstream  *Upstream
	Upstreams map[string]*Upstream
}

// upstream is the upstream pool of the pool named name.
func (b *Backend) upstream(name string) *Upstream {
	if u, ok := b.Upstreams[name]; ok {
		return u
	}
	return b.Upstream
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Backend returns the Backend in effect; a reload swaps what it returns. Required.
	Backend func() *Backend
	// HTTP serves what the fast path leaves to net/http: HTTP/2 (ALPN h2), and HTTP/1.1
	// connections from a request the fast path declines on (upgrades, Expect, trailers,
	// CONNECT, absolute-form targets). Its Handler should serve through the same Handler.
	// NewServer sets its ConnContext (wrapping any set). Required.
	HTTP *http.Server
	// FastPath false hands every connection to HTTP: the safety valve, and the baseline
	// of the performance comparison.
	FastPath bool
	// H2C hands a plain (non-TLS) connection whose first bytes are the HTTP/2 client
	// preface to HTTP as it is (HTTP/2 with prior knowledge, listen.h2c), for HTTP to
	// serve: its Protocols must then include UnencryptedHTTP2. Without it the preface is
	// refused as a malformed HTTP/1.1 head (505). Either way the check costs nothing after
	// a connection's first request.
	H2C bool
	// ReadHeaderTimeout bounds the TLS handshake and each request head; IdleTimeout the
	// wait for the next request on a kept-alive connection; MaxHeaderBytes a request head.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	// Handshake runs the TLS handshake of each *tls.Conn accepted, in the goroutine that
	// serves it; nil means (*tls.Conn).Handshake. The edge passes tlsserve.Handshake,
	// which measures what the handshake costs when tls.tls_cost was on at accept.
	Handshake func(*tls.Conn) error
	// Certificate returns the leaf of the certificate the handshake of st served (chosen
	// for st.ServerName), once per connection; a request on the connection whose host it
	// does not cover is answered 421 (proxy.Covers). nil, or a nil result, checks
	// nothing.
	Certificate func(st *tls.ConnectionState) *x509.Certificate
}

// Server serves client connections: HTTP/1.1 on the fast path, everything else through
// net/http on the same connection. Every HTTP/1.1 head that reaches net/http has passed
// the same strict parser as the fast path's (see gateConn), so both paths refuse the same
// requests. Use NewServer.
type Server struct {
	opts    ServerOptions
	handoff *connListener

	startHTTP  sync.Once
	inShutdown atomic.Bool

	// mu guards listeners and conns (true while a request is being read or served).
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*fastConn]bool
}

// NewServer returns a Server; it serves nothing until Serve.
func NewServer(opts ServerOptions) *Server {
	s := &Server{
		opts:      opts,
		handoff:   newConnListener(),
		listeners: map[net.Listener]struct{}{},
		conns:     map[*fastConn]bool{},
	}
	// net/http fills Request.TLS only for a *tls.Conn; for a connection handed over
	// behind the gate, the TLS state travels in the context (see requestTLS).
	prev := opts.HTTP.ConnContext
	opts.HTTP.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		switch g := c.(type) {
		case *gateConn:
			if g.tls != nil {
				ctx = proxy.WithServedCertificate(proxy.WithTLSState(ctx, g.tls), g.served)
			}
		case *tls.Conn: // HTTP/2, handed over as it is
			st := g.ConnectionState()
			ctx = proxy.WithServedCertificate(ctx, s.served(&st))
		}
		if prev != nil {
			ctx = prev(ctx, c)
		}
		return ctx
	}
	return s
}

// handshake runs tc's handshake with opts.Handshake, or crypto/tls's own.
func (s *Server) handshake(tc *tls.Conn) error {
	if s.opts.Handshake != nil {
		return s.opts.Handshake(tc)
	}
	return tc.Handshake()
}

// served is opts.Certificate's answer for a connection, nil without it.
func (s *Server) served(st *tls.ConnectionState) *x509.Certificate {
	if s.opts.Certificate == nil {
		return nil
	}
	return s.opts.Certificate(st)
}

// Serve accepts connections from ln until Shutdown or Close, like http.Server.Serve. A
// *tls.Conn from ln is served over TLS (its handshake done here if not yet); any other
// connection as plain HTTP.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.inShutdown.Load() {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.handoff.setAddr(ln.Addr())
	s.mu.Unlock()
	s.startHTTP.Do(func() {
		go func() { _ = s.opts.HTTP.Serve(s.handoff) }()
	})
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.inShutdown.Load() {
				return http.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// As net/http does: back off on errors such as EMFILE, then go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go s.serveConn(c)
	}
}

func (s *Server) serveConn(c net.Conn) {
	var state *tls.ConnectionState
	var served *x509.Certificate
	if tc, ok := c.(*tls.Conn); ok {
		tc.SetDeadline(time.Now().Add(s.opts.ReadHeaderTimeout))
		err := s.handshake(tc)
		tc.SetDeadline(time.Time{})
		if err != nil {
			tc.Close()
			return
		}
		st := tc.ConnectionState()
		if st.NegotiatedProtocol == "h2" {
			s.handoff.push(tc) // net/http's HTTP/2 server takes the *tls.Conn as it is
			return
		}
		state, served = &st, s.served(&st)
	}
	if !s.opts.FastPath {
		s.handOff(c, state, served, nil)
		return
	}
	fc := &fastConn{srv: s, conn: c, tls: state, cert: served, remoteAP: c.RemoteAddr().String()}
	fc.batch = writebatch.Under(c)
	if ap, err := netip.ParseAddrPort(fc.remoteAP); err == nil {
		fc.remote = ap.Addr().Unmap()
	}
	if !s.track(fc) {
		c.Close()
		return
	}
	defer s.untrack(fc)
	fc.serve()
}

// handOff gives an HTTP/1.x connection, with pending bytes already read from it, to
// net/http behind the strict head gate.
func (s *Server) handOff(c net.Conn, state *tls.ConnectionState, served *x509.Certificate, pending []byte) {
	s.handoff.push(newGateConn(c, state, served, pending, s.opts.MaxHeaderBytes, s.opts.H2C))
}

func (s *Server) track(c *fastConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inShutdown.Load() {
		return false
	}
	s.conns[c] = false
	return true
}

func (s *Server) untrack(c *fastConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// setActive marks a connection busy from the first byte of a request until its response
// is written; Shutdown closes only connections that are not.
func (s *Server) setActive(c *fastConn, active bool) {
	s.mu.Lock()
	if _, ok := s.conns[c]; ok {
		s.conns[c] = active
	}
	s.mu.Unlock()
}

func (s *Server) shuttingDown() bool { return s.inShutdown.Load() }

// Shutdown stops accepting, closes idle connections, lets requests in flight finish (on
// both paths) and returns when all are done or ctx ends, like http.Server.Shutdown.
func (s *Server) Shutdown(ctx context.Context) error {
	s.inShutdown.Store(true)
	s.mu.Lock()
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	httpDone := make(chan error, 1)
	go func() { httpDone <- s.opts.HTTP.Shutdown(ctx) }()

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		for c, active := range s.conns {
			if !active {
				c.conn.Close()
			}
		}
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			<-httpDone
			return ctx.Err()
		case <-tick.C:
		}
	}
	return <-httpDone
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.inShutdown.Store(true)
	s.mu.Lock()
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.conn.Close()
	}
	s.mu.Unlock()
	return s.opts.HTTP.Close()
}

// connListener is the net.Listener through which the fast path hands connections to
// net/http's server.
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr atomic.Pointer[net.Addr]
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) setAddr(a net.Addr) { l.addr.CompareAndSwap(nil, &a) }

func (l *connListener) Addr() net.Addr {
	if a := l.addr.Load(); a != nil {
		return *a
	}
	return &net.TCPAddr{}
}
