package fastpath

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"edgeproxy/internal/writebatch"
	"edgeproxy/mixedcontent"
	"edgeproxy/pool"
	"edgeproxy/proxy"
	"edgeproxy/proxy/h1"
)

// The HTTP/1.1 fast path: a connection loop over crypto/tls with the strict parser of
// package h1, pooled keep-alive connections to the targets, pooled buffers and one write
// per response head (with the first body bytes). It serves the requests it fully
// understands and hands the connection, with the bytes already read, to net/http for
// anything else (h1.Request.Declined). What happens to a request is decided by the
// proxy core (proxy.Handler's Begin, Forward, Fail and Finish), exactly as on the
// net/http path; this file only reads and writes the bytes.

const clientBufSize = 16 << 10

var clientBufPool = sync.Pool{New: func() any { b := make([]byte, clientBufSize); return &b }}

// outBufPool holds the buffers heads are written into (c.out), which an idle TLS
// connection gives back with its read buffer. One that grew past maxPooledOut (a large
// first body piece) is left to the collector.
var outBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

const maxPooledOut = 64 << 10

// fastConn is one client connection served by the fast path.
type fastConn struct {
	srv      *Server
	conn     net.Conn
	tls      *tls.ConnectionState // nil on a plain-HTTP listener
	batch    *writebatch.Conn     // the TLS connection's write batching; nil: none
	cert     *x509.Certificate    // the certificate the handshake served; nil: no 421 check
	remote   netip.Addr
	remoteAP string // RemoteAddr().String(), for the access log

	buf  []byte // buf[r:w] holds bytes read from the client and not yet consumed
	bufp *[]byte
	r, w int
	out  []byte // the head being written, plus the first body bytes
	outp *[]byte

	req     h1.Request
	resp    h1.Response
	chunked h1.Chunked
	served  int // requests served on this connection

	// Per request: the head's length at buf[r:], the bytes of buf[r:] the request used
	// (head and buffered body), whether its body went out in more than the first write,
	// whether all of it was read, and the response head's length in the upstream buffer.
	headLen      int
	bodyConsumed int
	bodyStreamed bool
	bodyDone     bool
	sent         bool // some of the request was written to a target
	respHead     int
	scan         *mixedcontent.Scan // the mixed-content scan of this response, or nil
	x            proxy.Exchange     // the request's way through the proxy core
	handler      *proxy.Handler     // the request's handler and upstream (see Backend)
	upstream     *Upstream
	up           *upstreamConn // the connection of the last attempt that got a response head
	one          [1]byte       // waitRequest's read, here so as not to allocate
	// covered[:coveredLen] is the last host cert covered (see covers).
	covered    [64]byte
	coveredLen int
}

// serve runs the loop until the connection closes or is handed to net/http.
func (c *fastConn) serve() {
	defer func() {
		if c.buf != nil {
			c.putBuf()
		}
	}()
	for {
		if err := c.readHead(); err != nil {
			if err == errH2C {
				c.handOff()
			}
			return
		}
		b := c.srv.opts.Backend()
		if c.req.Declined != h1.DeclineNone || declines(b.Handler, &c.req) {
			c.handOff()
			return
		}
		keepAlive := c.serveRequest(b)
		c.srv.setActive(c, false)
		c.served++
		if !keepAlive || c.srv.shuttingDown() {
			c.conn.Close()
			return
		}
	}
}

// readHead reads until buf[r:] starts with a whole request head and parses it into
// c.req. Before the first byte the wait is bounded by the idle timeout (the header
// timeout on a new connection); from the first byte, by the header timeout. A refused
// head is answered and the connection closed; a client that leaves between requests is
// closed quietly. A plain connection that starts with the HTTP/2 client preface, with
// ServerOptions.H2C, gets errH2C: it is net/http's to serve.
func (c *fastConn) readHead() error {
	s := c.srv
	if c.r == c.w {
		c.r, c.w = 0, 0
		wait := s.opts.IdleTimeout
		if c.served == 0 {
			wait = s.opts.ReadHeaderTimeout
		}
		c.conn.SetReadDeadline(time.Now().Add(wait))
		if err := c.waitRequest(); err != nil {
			c.conn.Close()
			return err
		}
	}
	c.srv.setActive(c, true) // a request has begun: Shutdown lets it finish
	c.conn.SetReadDeadline(time.Now().Add(s.opts.ReadHeaderTimeout))
	if c.served == 0 && c.tls == nil && s.opts.H2C {
		if err := c.checkPreface(); err != nil {
			return err
		}
	}
	lim := h1.Limits{MaxHeadBytes: s.opts.MaxHeaderBytes}
	for next := 0; ; {
		ready, nx := h1.ScanHead(c.buf[c.r:c.w], next, lim.MaxHeadBytes)
		next = nx
		if ready {
			break
		}
		if err := c.fill(); err != nil {
			c.conn.Close()
			return err
		}
	}
	n, err := h1.ParseRequest(c.buf[c.r:c.w], &c.req, lim)
	if herr, ok := err.(*h1.Error); ok { // not errors.As: its target would escape, per request
		c.refuse(herr)
		return err
	}
	c.conn.SetReadDeadline(time.Time{})
	c.headLen = n
	return nil
}

// errH2C is readHead's answer to a connection that starts with the HTTP/2 client preface.
var errH2C = errors.New("fastpath: HTTP/2 client preface")

// checkPreface reads, within the header timeout already set, until the connection's
// first bytes (buf[r:w]) are known to be the HTTP/2 client preface or not, and returns
// errH2C when they are. A client that sends part of the preface and goes quiet is closed
// at the deadline, as one that sends part of a head.
func (c *fastConn) checkPreface() error {
	for {
		switch prefaceState(c.buf[c.r:c.w]) {
		case prefaceNo:
			return nil
		case prefaceYes:
			c.conn.SetReadDeadline(time.Time{})
			return errH2C
		}
		if err := c.fill(); err != nil {
			c.conn.Close()
			return err
		}
	}
}

// waitRequest waits for the first bytes of the next request. On TLS it gives the read
// buffer and the head buffer back to their pools while the connection idles and waits
// with a one-byte read: the record's other bytes stay decrypted in the tls.Conn, so this
// costs no extra system call and saves 16 KiB (read) and 4 KiB or more (heads and the
// first body piece) per idle keep-alive connection.
func (c *fastConn) waitRequest() error {
	if c.tls == nil || c.buf == nil {
		return c.fill()
	}
	c.putBuf()
	n, err := c.conn.Read(c.one[:])
	if n == 0 {
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	c.getBuf()
	c.buf[0] = c.one[0]
	c.w = 1
	return nil
}

// getBuf takes a read buffer and a head buffer from their pools; putBuf gives them back
// (a read buffer grown for a long head, or a head buffer grown past maxPooledOut, is left
// to the collector). The pools hold *[]byte, and bufp and outp keep the pointers they
// came in, so that none of this allocates.
func (c *fastConn) getBuf() {
	c.bufp = clientBufPool.Get().(*[]byte)
	c.buf = *c.bufp
	c.outp = outBufPool.Get().(*[]byte)
	c.out = (*c.outp)[:0]
}

func (c *fastConn) putBuf() {
	if c.bufp != nil && len(c.buf) == clientBufSize {
		clientBufPool.Put(c.bufp)
	}
	c.buf, c.bufp = nil, nil
	if c.outp != nil && cap(c.out) <= maxPooledOut {
		*c.outp = c.out[:0]
		outBufPool.Put(c.outp)
	}
	c.out, c.outp = nil, nil
}

// fill reads more from the client, compacting or growing the buffer as a head needs.
func (c *fastConn) fill() error {
	if c.buf == nil {
		c.getBuf()
	}
	if c.w == len(c.buf) {
		if c.r > 0 {
			c.w = copy(c.buf, c.buf[c.r:c.w])
			c.r = 0
		} else {
			// A head longer than the pooled buffer: grow, up to max_header_bytes (ScanHead
			// stops at that limit, so this cannot grow further).
			grown := make([]byte, 2*len(c.buf))
			copy(grown, c.buf[:c.w])
			if c.bufp != nil {
				clientBufPool.Put(c.bufp)
				c.bufp = nil
			}
			c.buf = grown
		}
	}
	n, err := c.conn.Read(c.buf[c.w:])
	c.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// refuse answers a head the parser refused, and closes the connection: what follows a
// bad head cannot be trusted to start a request.
func (c *fastConn) refuse(herr *h1.Error) {
	h := c.srv.opts.Backend().Handler
	h.Logger().Debug("refused request head", "client", c.remoteAP, "status", herr.Status, "reason", herr.Reason)
	c.out = proxy.AppendErrorResponse(c.out[:0], herr.Status, h.HSTS(c.tls != nil), true)
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.conn.Write(c.out)
	h.Observer().Request(herr.Status, "", "", "", 0)
	c.conn.Close()
}

// handOff gives the connection, with the bytes read and not consumed, to net/http.
func (c *fastConn) handOff() {
	pending := append([]byte(nil), c.buf[c.r:c.w]...)
	c.srv.handOff(c.conn, c.tls, c.cert, pending)
}

// declines reports whether the fast path should leave a valid request to net/http for a
// reason of h's configuration rather than of the request.
func declines(h *proxy.Handler, req *h1.Request) bool {
	// A chunked body's decoded size is only known as it streams; net/http's
	// MaxBytesReader enforces the limit on it.
	return h.MaxBodyBytes() > 0 && req.Framing == h1.FramingChunked
}

// serveRequest proxies the parsed request c.req through the proxy core and reports
// whether the client connection may carry another request.
func (c *fastConn) serveRequest(b *Backend) (keepAlive bool) {
	h := b.Handler
	req := &c.req
	keepAlive = req.KeepAlive
	c.handler = h
	c.bodyConsumed, c.bodyStreamed, c.bodyDone, c.sent, c.scan = c.headLen, false, false, false, nil
	contentLength := int64(-1)
	if req.Framing == h1.FramingLength {
		contentLength = req.ContentLength
	}
	route := proxy.RouteMisdirected
	if c.covers(req.Host) {
		route = h.RouteFast(req)
	}
	status, bytes := h.Begin(&c.x, route, contentLength), int64(0)
	switch {
	case status == -1:
		// The route's redirect or fixed response (or 404: no route matched).
		a := h.Answer(&c.x, string(req.Host), string(req.Target), c.tls != nil)
		status = a.Status
		closeAfter := !c.bodyDrainable()
		c.out = proxy.AppendAction(c.out[:0], a, h.HSTS(c.tls != nil), closeAfter)
		_, err := c.conn.Write(c.out)
		keepAlive = err == nil && !closeAfter && keepAlive
	case status == http.StatusRequestEntityTooLarge:
		// Read (and drop) a body of moderate size first, as net/http does: a client still
		// sending it would otherwise see its connection reset instead of the 413.
		drained := c.discardBody(maxDiscardBytes)
		c.writeError(h, status, !drained)
		keepAlive = drained && keepAlive
	case status != 0:
		keepAlive = c.writeError(h, status, !c.bodyDrainable()) && keepAlive
	default:
		c.upstream = b.upstream(c.x.Pool())
		if err := h.Forward(&c.x, c, proxy.IsIdempotent(req.Method)); err != nil {
			status = h.Fail(&c.x, err, c)
			if status == 499 {
				keepAlive = false // the client went away
				break
			}
			if c.sent && req.Framing != h1.FramingNone && !c.bodyDone {
				keepAlive = false // part of the body is still on the wire
			}
			keepAlive = c.writeError(h, status, !keepAlive) && keepAlive
			break
		}
		status = c.resp.Status
		var ok bool
		bytes, ok = c.relayResponse(c.up)
		keepAlive = ok && keepAlive
	}
	c.r += c.bodyConsumed
	c.bodyConsumed = 0
	h.Finish(&c.x, status, bytes, c.describeAccess)
	c.handler, c.upstream, c.up = nil, nil, nil
	return keepAlive
}

// covers reports whether the certificate the connection's handshake served covers host
// (proxy.Covers). The last host covered is remembered, so that the requests of a
// keep-alive connection, which name one host, check it once, without allocating.
func (c *fastConn) covers(host []byte) bool {
	if c.cert == nil || string(host) == string(c.covered[:c.coveredLen]) {
		return true
	}
	if !proxy.Covers(c.cert, host) {
		return false
	}
	if len(host) <= len(c.covered) {
		c.coveredLen = copy(c.covered[:], host)
	}
	return true
}

// describeAccess fills in the access log line of the current request.
func (c *fastConn) describeAccess(l *proxy.AccessLine) {
	req := &c.req
	l.Client, l.Method, l.Host, l.URI = c.remoteAP, string(req.Method), string(req.Host), string(req.Target)
	l.Proto, l.Engine = "HTTP/1."+strconv.Itoa(req.Minor), "fast"
}

// Describe names the current request in the core's log lines.
func (c *fastConn) Describe() (method, uri string) {
	return string(c.req.Method), string(c.req.Target)
}

// Send is the core's Sender: it sends the request to t and reads the response head.
func (c *fastConn) Send(t *pool.Target) (bodySent bool, err error) {
	up, sent, err := c.exchange(t)
	c.sent = c.sent || sent
	c.up = up
	return sent && c.req.Framing != h1.FramingNone, err
}

// exchange sends the request to t and reads the response head into c.resp (1xx interim
// responses are relayed to the client on the way). sent reports whether any of the
// request reached the target, which decides whether it may be retried. A pooled
// connection that turns out closed is replaced by a new one once, transparently, when
// nothing of the request body was streamed yet.
func (c *fastConn) exchange(t *pool.Target) (up *upstreamConn, sent bool, err error) {
	u := c.upstream
	for attempt := 0; ; attempt++ {
		up, err = u.get(t.Addr)
		if err != nil {
			return nil, false, err
		}
		sent, err = c.sendRequest(up)
		if err == nil || sent && !isClientError(err) && proxy.IsConnGone(err) {
			// Even when the body could not all be written (a target may answer early, a 413
			// say, and close), its response may be there: read it, as net/http does.
			if rerr := c.readResponseHead(up); rerr == nil {
				err = nil // relayResponse closes the client connection: !c.bodyDone
			} else if err == nil {
				err = rerr
			}
		}
		if err == nil {
			return up, true, nil
		}
		// A pooled connection the target closed as it was reused: send again on a fresh one
		// if nothing was sent, or the request is idempotent and bodiless (net/http's rule).
		stale := up.reused && attempt == 0 && !c.bodyStreamed && proxy.IsConnGone(err) &&
			(!sent || proxy.IsIdempotent(c.req.Method) && c.req.Framing == h1.FramingNone)
		u.release(up)
		if !stale {
			return nil, sent, err
		}
		// The target closed an idle connection as it was reused: try a fresh one.
	}
}

// sendRequest writes the rewritten head and the body. The head goes out with the body
// bytes already read in one write; the rest of the body streams from the client.
func (c *fastConn) sendRequest(up *upstreamConn) (sent bool, err error) {
	req := &c.req
	claimed, _ := req.Header.Get("X-Forwarded-Proto")
	opts := c.handler.RequestHeadOptions(c.remote, c.tls != nil, claimed, up.addr)
	c.out = h1.AppendRequestHead(c.out[:0], req, &opts)
	up.SetWriteDeadline(time.Now().Add(c.upstream.responseHeaderTimeout))
	defer up.SetWriteDeadline(time.Time{})

	bodyStart := c.r + c.headLen
	switch req.Framing {
	case h1.FramingNone:
		c.bodyDone = true
		_, err = up.Write(c.out)
		return err == nil, err
	case h1.FramingLength:
		inBuf := int64(c.w - bodyStart)
		first := min(inBuf, req.ContentLength)
		c.out = append(c.out, c.buf[bodyStart:bodyStart+int(first)]...)
		if _, err = up.Write(c.out); err != nil {
			return false, err
		}
		c.bodyConsumed = c.headLen + int(first)
		left := req.ContentLength - first
		c.bodyDone = left == 0
		if left > 0 {
			c.bodyStreamed = true
			if err := c.streamBody(up, left); err != nil {
				return true, err
			}
			c.bodyDone = true
		}
		return true, nil
	default: // chunked, forwarded as received after checking it
		c.chunked.Reset()
		n, cerr := c.chunked.Scan(c.buf[bodyStart:c.w])
		c.out = append(c.out, c.buf[bodyStart:bodyStart+n]...)
		c.bodyConsumed = c.headLen + n
		if cerr != nil {
			return false, proxy.ClientError{Err: cerr}
		}
		if _, err = up.Write(c.out); err != nil {
			return false, err
		}
		c.bodyDone = c.chunked.Done()
		if !c.bodyDone {
			c.bodyStreamed = true
			if err := c.streamChunked(up); err != nil {
				return true, err
			}
			c.bodyDone = true
		}
		return true, nil
	}
}

// streamBody copies the rest of a Content-Length body from the client to the target,
// through the client buffer (which holds nothing else: the head was consumed).
func (c *fastConn) streamBody(up *upstreamConn, left int64) error {
	c.r, c.w, c.bodyConsumed = 0, 0, 0
	c.conn.SetReadDeadline(time.Now().Add(c.srv.opts.IdleTimeout))
	defer c.conn.SetReadDeadline(time.Time{})
	for left > 0 {
		n, err := c.conn.Read(c.buf[:min(int64(len(c.buf)), left)])
		if n > 0 {
			if _, werr := up.Write(c.buf[:n]); werr != nil {
				return werr
			}
			left -= int64(n)
		}
		if err != nil && left > 0 {
			return proxy.ClientError{Err: err}
		}
	}
	return nil
}

// streamChunked copies the rest of a chunked body, checking its coding, and keeps any
// bytes after its end (a pipelined request) in the client buffer.
func (c *fastConn) streamChunked(up *upstreamConn) error {
	c.r, c.w, c.bodyConsumed = 0, 0, 0
	c.conn.SetReadDeadline(time.Now().Add(c.srv.opts.IdleTimeout))
	defer c.conn.SetReadDeadline(time.Time{})
	for !c.chunked.Done() {
		n, err := c.conn.Read(c.buf)
		if n > 0 {
			k, cerr := c.chunked.Scan(c.buf[:n])
			if k > 0 {
				if _, werr := up.Write(c.buf[:k]); werr != nil {
					return werr
				}
			}
			if cerr != nil {
				return proxy.ClientError{Err: cerr}
			}
			if c.chunked.Done() {
				c.r, c.w = k, n // what follows the body
				c.bodyConsumed = 0
				return nil
			}
		}
		if err != nil {
			return proxy.ClientError{Err: err}
		}
	}
	return nil
}

// readResponseHead reads the target's response head, relaying interim 1xx responses.
func (c *fastConn) readResponseHead(up *upstreamConn) error {
	up.SetReadDeadline(time.Now().Add(c.upstream.responseHeaderTimeout))
	defer up.SetReadDeadline(time.Time{})
	lim := h1.Limits{MaxHeadBytes: upstreamBufSize}
	for {
		n, err := h1.ParseResponse(up.buf[up.r:up.w], &c.resp, c.req.Method, lim)
		if errors.Is(err, h1.ErrIncomplete) {
			if ferr := up.fill(); ferr != nil {
				if errors.Is(ferr, os.ErrDeadlineExceeded) {
					return timeoutError{}
				}
				return ferr
			}
			continue
		}
		if err != nil {
			return err
		}
		if c.resp.Status >= 200 || c.resp.Status == http.StatusSwitchingProtocols {
			c.respHead = n
			return nil
		}
		// An interim response (103 Early Hints): pass it on and read on.
		c.out = h1.AppendResponseHead(c.out[:0], &c.resp, nil)
		if _, err := c.conn.Write(c.out); err != nil {
			return proxy.ClientError{Err: err}
		}
		up.r += n
	}
}

// timeoutError is the fast path's response-header timeout; it is a net.Error timeout, as
// net/http's is, so both paths answer 504.
type timeoutError struct{}

func (timeoutError) Error() string   { return "proxy: timeout awaiting response headers" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// relayResponse writes the response head and body to the client and returns the upstream
// connection to the pool when it can carry another request. It returns the body bytes
// sent and whether the client connection can go on.
func (c *fastConn) relayResponse(up *upstreamConn) (bytes int64, keepAlive bool) {
	h := c.handler
	resp := &c.resp
	keepAlive = true
	opts := h1.ResponseHeadOptions{Extra: h.HSTS(c.tls != nil)}
	decode := false
	if resp.Framing == h1.FramingChunked && c.req.Minor == 0 {
		resp.Framing = h1.FramingClose // an HTTP/1.0 client gets the data, delimited by the close
		decode = true
	}
	if resp.Framing == h1.FramingClose || !c.req.KeepAlive || !c.bodyDone {
		opts.Close = true
		keepAlive = false
	} else if c.req.Minor == 0 {
		opts.KeepAlive = true
	}
	if m := h.MixedContent(); m.Active() && c.tls != nil {
		opts.Extra, c.scan = m.Start(resp, opts.Extra, c.req.Host, c.req.Target)
	}
	c.out = h1.AppendResponseHead(c.out[:0], resp, &opts)
	up.r += c.respHead
	upstreamOK := resp.KeepAlive
	var err error
	switch resp.Framing {
	case h1.FramingNone:
		_, err = c.conn.Write(c.out)
	case h1.FramingLength:
		bytes, err = c.copyLength(up, resp.ContentLength)
	case h1.FramingChunked:
		bytes, err = c.copyChunked(up, false)
	case h1.FramingClose:
		if decode {
			bytes, err = c.copyChunked(up, true)
			upstreamOK = upstreamOK && err == nil
		} else {
			bytes, err = c.copyUntilClose(up)
			upstreamOK = false
		}
	}
	c.scan.Finish()
	c.scan = nil
	if err != nil {
		if isClientError(err) {
			h.Logger().Debug("client went away during the response", "client", c.remoteAP, "error", err.Error())
		} else {
			h.Logger().Warn("target broke off the response", "target", up.addr, "error", err.Error())
		}
		c.upstream.release(up)
		return bytes, false
	}
	if upstreamOK && up.r == up.w {
		c.upstream.put(up)
	} else {
		c.upstream.release(up)
	}
	return bytes, keepAlive
}

// copyLength sends c.out (the head) with the first body bytes in one write, then the
// rest of a body of n bytes.
func (c *fastConn) copyLength(up *upstreamConn, n int64) (int64, error) {
	first := min(int64(up.w-up.r), n)
	c.scan.Feed(up.buf[up.r : up.r+int(first)])
	c.out = append(c.out, up.buf[up.r:up.r+int(first)]...)
	up.r += int(first)
	if err := c.writeBody(c.out); err != nil { // head and first piece: one batch if two records
		return 0, proxy.ClientError{Err: err}
	}
	sent, left := first, n-first
	if left == 0 {
		return sent, nil
	}
	buf, pooled := bodyBuf(up, left)
	if pooled != nil {
		defer bodyBufPool.Put(pooled)
	}
	for left > 0 {
		up.r, up.w = 0, 0
		k, err := up.Conn.Read(buf[:min(int64(len(buf)), left)])
		if k > 0 {
			c.scan.Feed(buf[:k])
			if werr := c.writeBody(buf[:k]); werr != nil {
				return sent, proxy.ClientError{Err: werr}
			}
			sent += int64(k)
			left -= int64(k)
		}
		if err != nil && left > 0 {
			return sent, err
		}
	}
	return sent, nil
}

// bodyBuf returns the buffer to read the rest of a body of left bytes into: the target
// connection's own (16 KiB), or, for a longer rest, a 64 KiB one from bodyBufPool, so
// that a body that has arrived is read in one system call and not in four; pooled is
// what to give back to the pool after, or nil. (up.buf holds nothing then: the bytes
// that came with the response head have been sent.)
func bodyBuf(up *upstreamConn, left int64) (buf []byte, pooled *[]byte) {
	if left <= int64(len(up.buf)) {
		return up.buf, nil
	}
	pooled = bodyBufPool.Get().(*[]byte)
	return *pooled, pooled
}

// bodyBufPool holds the 64 KiB buffers of long bodies (bodyBuf), as *[]byte so that
// neither Get nor Put allocates.
var bodyBufPool = sync.Pool{New: func() any { b := make([]byte, bodyBufSize); return &b }}

const bodyBufSize = 64 << 10

// writeBody writes a piece of a response (the head with the first body bytes, or body) to
// the client. Over TLS, a piece longer than one record is written as one batch
// (internal/writebatch, when the listener provides it): crypto/tls's records of one Write
// leave in one system call, as plain HTTP's bytes do, instead of one each.
func (c *fastConn) writeBody(p []byte) error { return writebatch.Write(c.conn, c.batch, p) }

// copyChunked forwards a chunked body as received, checking it (or, with decode, sends
// only its data, for an HTTP/1.0 client).
func (c *fastConn) copyChunked(up *upstreamConn, decode bool) (int64, error) {
	c.chunked.Reset()
	var sent int64
	first := true
	for {
		in := up.buf[up.r:up.w]
		var n int
		var err error
		var data []byte
		if decode {
			var m int
			n, m, err = c.chunked.DecodeInPlace(in)
			data = in[:m]
		} else {
			n, err = c.chunked.Scan(in)
			data = in[:n]
		}
		up.r += n
		if err != nil {
			return sent, err
		}
		c.scan.Feed(data) // the raw chunks when forwarding them: tags rarely span a chunk line
		if first {
			c.out = append(c.out, data...)
			if werr := c.writeBody(c.out); werr != nil {
				return sent, proxy.ClientError{Err: werr}
			}
			first = false
		} else if len(data) > 0 {
			if _, werr := c.conn.Write(data); werr != nil {
				return sent, proxy.ClientError{Err: werr}
			}
		}
		sent += int64(len(data))
		if c.chunked.Done() {
			return sent, nil
		}
		up.r, up.w = 0, 0
		if ferr := up.fill(); ferr != nil {
			return sent, ferr
		}
	}
}

// copyUntilClose forwards a body delimited by the target closing the connection.
func (c *fastConn) copyUntilClose(up *upstreamConn) (int64, error) {
	first := int64(up.w - up.r)
	c.scan.Feed(up.buf[up.r:up.w])
	c.out = append(c.out, up.buf[up.r:up.w]...)
	up.r = up.w
	if err := c.writeBody(c.out); err != nil {
		return 0, proxy.ClientError{Err: err}
	}
	sent := first
	buf, pooled := bodyBuf(up, bodyBufSize)
	if pooled != nil {
		defer bodyBufPool.Put(pooled)
	}
	for {
		k, err := up.Conn.Read(buf)
		if k > 0 {
			c.scan.Feed(buf[:k])
			if werr := c.writeBody(buf[:k]); werr != nil {
				return sent, proxy.ClientError{Err: werr}
			}
			sent += int64(k)
		}
		if errors.Is(err, io.EOF) {
			return sent, nil
		}
		if err != nil {
			return sent, err
		}
	}
}

// writeError answers the current request with an error page. It reports whether the
// write succeeded; closeAfter adds Connection: close.
func (c *fastConn) writeError(h *proxy.Handler, code int, closeAfter bool) bool {
	c.out = proxy.AppendErrorResponse(c.out[:0], code, h.HSTS(c.tls != nil), closeAfter)
	_, err := c.conn.Write(c.out)
	return err == nil
}

// maxDiscardBytes is the most of an unwanted request body the fast path reads and drops
// to answer on a connection that stays usable; net/http's limit too.
const maxDiscardBytes = 256 << 10

// discardBody reads and drops the request's Content-Length body if it is at most limit
// bytes and arrives within the idle timeout, and reports whether it did.
func (c *fastConn) discardBody(limit int64) bool {
	n := c.req.ContentLength
	if c.req.Framing != h1.FramingLength || n > limit {
		return false
	}
	if c.bodyDrainable() {
		return true
	}
	left := n - int64(c.w-c.r-c.headLen)
	c.r, c.w, c.bodyConsumed = 0, 0, 0
	c.conn.SetReadDeadline(time.Now().Add(c.srv.opts.IdleTimeout))
	defer c.conn.SetReadDeadline(time.Time{})
	for left > 0 {
		k, err := c.conn.Read(c.buf[:min(int64(len(c.buf)), left)]) // never past the body
		left -= int64(k)
		if err != nil && left > 0 {
			return false
		}
	}
	return true
}

// bodyDrainable reports whether the request's body is wholly in the buffer, so that the
// connection can carry on after an error answered without reading it.
func (c *fastConn) bodyDrainable() bool {
	switch c.req.Framing {
	case h1.FramingNone:
		return true
	case h1.FramingLength:
		if int64(c.w-c.r-c.headLen) >= c.req.ContentLength {
			c.bodyConsumed = c.headLen + int(c.req.ContentLength)
			return true
		}
	}
	return false
}

// isClientError reports whether err is the client's side failing (proxy.ClientError).
// errors.AsType, not errors.As: a variable whose address errors.As takes escapes, which
// cost the fast path one allocation per request.
func isClientError(err error) bool {
	_, ok := errors.AsType[proxy.ClientError](err)
	return ok
}
