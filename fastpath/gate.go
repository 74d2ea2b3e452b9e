package fastpath

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strconv"

	"edgeproxy/proxy/h1"
)

// gateConn is a client connection on its way to net/http's server. It releases the bytes
// it reads only once they are known to be good: each request head must pass h1's strict
// parser (the fast path's), and each body is followed by its framing to find the next
// head. net/http alone is lax in ways a proxy must not be: it joins obs-folded lines,
// drops Content-Length when Transfer-Encoding is present and keeps the connection open,
// accepts bare LF. A head the gate refuses is replaced by a minimal one that net/http
// itself refuses with the same status (400, 501 or 505), so that net/http writes the
// error response after any earlier response on the connection, and closes it.
//
// After a request with Upgrade or CONNECT the rest of the connection is another protocol
// and passes unchecked. A head too long for the gate passes unchecked too: net/http
// refuses it (431), as its limit is below the gate's. With h2c, a plain connection that
// starts with the HTTP/2 client preface passes unchecked too, to net/http's HTTP/2
// server (see ServerOptions.H2C).
type gateConn struct {
	net.Conn
	tls    *tls.ConnectionState
	served *x509.Certificate // the certificate the handshake served, for the 421 check; nil for none
	h2c    bool              // the connection's first bytes are yet to be checked for the preface

	pending []byte // bytes read before the hand-over, to be checked first
	in      []byte // bytes read and not yet checked
	out     []byte // checked bytes, not yet read by net/http
	rbuf    []byte
	failed  error // after a refusal or a broken body: returned once out is drained, for good

	state    gateState
	scanNext int
	left     int64 // bytes of a Content-Length body still to come
	lim      h1.Limits
	req      h1.Request
	chunked  h1.Chunked
}

// gateReadSize is the size of the gate's reads from the connection.
const gateReadSize = 4096

type gateState uint8

const (
	gateHead    gateState = iota // the next bytes start a request head
	gateLength                   // in a Content-Length body
	gateChunked                  // in a chunked body
	gateOpaque                   // after an upgrade: no more HTTP/1.1 to check
	gateRefused                  // a refusal was released; then EOF
)

// newGateConn returns the gate for c, with the bytes already read from it. h2c lets a
// plain connection (state nil) that starts with the HTTP/2 client preface through.
func newGateConn(c net.Conn, state *tls.ConnectionState, served *x509.Certificate, pending []byte, maxHeaderBytes int, h2c bool) *gateConn {
	// net/http reads at most MaxHeaderBytes+4096 of a head before answering 431; the
	// gate's limit is above that, so an oversized head reaches net/http's own refusal.
	return &gateConn{Conn: c, tls: state, served: served, h2c: h2c && state == nil, pending: pending,
		lim: h1.Limits{MaxHeadBytes: maxHeaderBytes + 4096 + 1}}
}

// h2Preface is what an HTTP/2 client with prior knowledge sends first (RFC 9113,
// section 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// prefaceState says whether b, the first bytes of a connection, are the HTTP/2 client
// preface: prefaceYes when b starts with all of it, prefaceMaybe when b is a shorter
// part of it (more bytes decide), prefaceNo otherwise.
func prefaceState(b []byte) preface {
	n := min(len(b), len(h2Preface))
	switch {
	case string(b[:n]) != h2Preface[:n]:
		return prefaceNo
	case n < len(h2Preface):
		return prefaceMaybe
	}
	return prefaceYes
}

type preface uint8

const (
	prefaceNo preface = iota
	prefaceMaybe
	prefaceYes
)

// Read returns checked bytes, reading and checking more as needed. A read error is
// returned when there is nothing checked to return; it is not kept, since net/http
// interrupts reads with deadlines and reads on afterwards.
//
// Once the rest of the connection is opaque (an upgrade, h2c) and everything read before
// was released, a large read goes straight to the connection and a small one through
// rbuf, g.out then being its unread part: HTTP/2's framer reads each frame header (9
// bytes) and payload apart, and this keeps that to one system call per buffer, as
// crypto/tls's record buffer does over TLS (the TLS-cost benchmark subtracts h2c from
// HTTP/2 over TLS).
func (g *gateConn) Read(p []byte) (int, error) {
	if g.state == gateOpaque && len(g.out) == 0 && len(g.in) == 0 && len(g.pending) == 0 {
		if len(p) >= gateReadSize {
			return g.Conn.Read(p)
		}
		if g.rbuf == nil {
			g.rbuf = make([]byte, gateReadSize)
		}
		n, err := g.Conn.Read(g.rbuf)
		if n == 0 {
			return 0, err
		}
		g.out = g.rbuf[:n]
	}
	for len(g.out) == 0 {
		if g.advance() {
			continue
		}
		if g.failed != nil {
			return 0, g.failed
		}
		if len(g.pending) > 0 {
			g.in = append(g.in, g.pending...)
			g.pending = nil
			continue
		}
		if g.rbuf == nil {
			g.rbuf = make([]byte, gateReadSize)
		}
		n, err := g.Conn.Read(g.rbuf)
		g.in = append(g.in, g.rbuf[:n]...)
		if err != nil && !g.advance() {
			return 0, err
		}
	}
	n := copy(p, g.out)
	g.out = g.out[n:]
	if len(g.out) == 0 {
		g.out = g.out[:0:0] // let the released bytes go
	}
	return n, nil
}

// advance checks what it can of g.in and moves it to g.out; it reports progress.
func (g *gateConn) advance() bool {
	if len(g.in) == 0 {
		return false
	}
	switch g.state {
	case gateHead:
		if g.h2c {
			switch prefaceState(g.in) {
			case prefaceMaybe:
				return false
			case prefaceYes:
				g.state = gateOpaque // HTTP/2 from here on: net/http's to check
				g.release(len(g.in))
				return true
			}
			g.h2c = false
		}
		ready, next := h1.ScanHead(g.in, g.scanNext, g.lim.MaxHeadBytes)
		g.scanNext = next
		if !ready {
			return false
		}
		n, err := h1.ParseRequest(g.in, &g.req, g.lim)
		var herr *h1.Error
		if errors.As(err, &herr) {
			if herr.Status == 431 {
				g.release(len(g.in))
				g.state = gateOpaque
				return true
			}
			g.out = append(g.out, refusalHead(herr.Status)...)
			g.in = nil
			g.state = gateRefused
			g.failed = io.EOF
			return true
		}
		if err != nil {
			return false
		}
		g.release(n)
		g.scanNext = 0
		switch {
		case g.req.Upgrade || g.req.Declined == h1.DeclineConnect:
			g.state = gateOpaque
		case g.req.Framing == h1.FramingLength && g.req.ContentLength > 0:
			g.state, g.left = gateLength, g.req.ContentLength
		case g.req.Framing == h1.FramingChunked:
			g.state = gateChunked
			g.chunked.Reset()
		}
		return true
	case gateLength:
		k := int(min(g.left, int64(len(g.in))))
		g.release(k)
		if g.left -= int64(k); g.left == 0 {
			g.state = gateHead
		}
		return true
	case gateChunked:
		n, err := g.chunked.Scan(g.in)
		g.release(n)
		if err != nil {
			// The head went through already: fail the body read, which makes net/http
			// give up on the request and close the connection.
			g.in = nil
			g.failed = err
			return true
		}
		if g.chunked.Done() {
			g.state = gateHead
		}
		return n > 0
	case gateOpaque:
		g.release(len(g.in))
		return true
	}
	g.in = nil // gateRefused: nothing more goes through
	return false
}

func (g *gateConn) release(n int) {
	g.out = append(g.out, g.in[:n]...)
	g.in = g.in[n:]
}

// refusalHead is a request head that net/http refuses with the given status (and then
// closes the connection).
func refusalHead(status int) []byte {
	switch status {
	case 501:
		return []byte("GET / HTTP/1.1\r\nHost: refused\r\nTransfer-Encoding: refused\r\n\r\n")
	case 505:
		return []byte("GET / HTTP/9.9\r\nHost: refused\r\n\r\n")
	default:
		return []byte("REFUSED-" + strconv.Itoa(status) + "\r\n\r\n") // a malformed request line: 400
	}
}
