package proxy

import (
	"errors"
	"io"
	"net/http"
	"sync/atomic"

	"edgeproxy/pool"
)

// retryTransport is the net/http wire format's Sender: ReverseProxy calls it once per
// request, and it runs the core's Forward over the configured transport, so that the
// net/http path retries, reports passive health and classifies errors exactly as the fast
// path does.
type retryTransport struct{ h *Handler }

var _ http.RoundTripper = retryTransport{}

func (rt retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h := rt.h
	x, _ := req.Context().Value(attemptKey{}).(*Exchange)
	if x == nil || x.pool == nil {
		return nil, errors.New("proxy: a request outside an exchange") // ServeHTTP always sets one
	}
	s := &transportSender{rt: x.pool.Transport, req: req}
	if req.Body != nil && req.Body != http.NoBody {
		s.guard = &bodyGuard{ReadCloser: req.Body}
		guarded := *req // RoundTrippers must not modify the request they were given
		guarded.Body = s.guard
		s.req = &guarded
	}
	if err := h.Forward(x, s, IsIdempotent(req.Method)); err != nil {
		return nil, err
	}
	return s.resp, nil
}

// transportSender sends one request through an http.RoundTripper, to whichever target
// the core's Forward gives it.
type transportSender struct {
	rt    http.RoundTripper
	req   *http.Request
	guard *bodyGuard // nil for a request without a body
	resp  *http.Response
}

func (s *transportSender) Send(t *pool.Target) (bodySent bool, err error) {
	if s.req.URL.Host != t.Addr { // a retry: the same request, to another target
		retry := *s.req
		u := *s.req.URL
		u.Host = t.Addr
		retry.URL = &u
		s.req = &retry
	}
	s.resp, err = s.rt.RoundTrip(s.req)
	if err != nil && s.req.Context().Err() != nil {
		// The attempt's context ended (the client left, or the target was retired):
		// nobody is to blame for the error the transport returns.
		err = s.req.Context().Err()
	}
	return s.guard != nil && s.guard.read.Load(), err
}

func (s *transportSender) Describe() (method, uri string) {
	return s.req.Method, s.req.URL.RequestURI()
}

// describeRequest describes an incoming request for the core's log lines.
type describeRequest struct{ r *http.Request }

func (d describeRequest) Describe() (method, uri string) { return d.r.Method, d.r.RequestURI }

// bodyGuard notes whether any of a request body was read, so a retry never replays a body
// a target may have seen. The transport closes a request body when an attempt fails;
// while nothing was read that Close is ignored, so the body stays usable for a retry (the
// server closes it when the handler returns).
type bodyGuard struct {
	io.ReadCloser
	read atomic.Bool
}

func (g *bodyGuard) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if n > 0 {
		g.read.Store(true)
	}
	return n, err
}

func (g *bodyGuard) Close() error {
	if !g.read.Load() {
		return nil
	}
	return g.ReadCloser.Close()
}
