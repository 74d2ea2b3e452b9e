package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
)

// retryTransport sends each attempt with the configured transport, reports its outcome
// for passive health, and retries on another target when that is safe (see
// Options.Retries).
type retryTransport struct{ h *Handler }

var _ http.RoundTripper = retryTransport{}

func (rt retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h := rt.h
	a, _ := req.Context().Value(attemptKey{}).(*attempt)
	if a == nil {
		return h.opts.Transport.RoundTrip(req)
	}
	var guard *bodyGuard
	if req.Body != nil && req.Body != http.NoBody {
		guard = &bodyGuard{ReadCloser: req.Body}
		guarded := *req // RoundTrippers must not modify the request they were given
		guarded.Body = guard
		req = &guarded
	}
	for {
		resp, err := h.opts.Transport.RoundTrip(req)
		if err == nil {
			if h.opts.Passive != nil {
				h.opts.Passive.ReportSuccess(a.target)
			}
			return resp, nil
		}
		if req.Context().Err() != nil || !blamesTarget(err) {
			return nil, err // the client left, or the request itself was at fault
		}
		failed := a.target
		if h.opts.Passive != nil && h.opts.Passive.ReportFailure(failed) {
			h.log.Warn("target "+failed.Addr+" ejected by passive health: consecutive failed requests", "target", failed.Addr, "error", err.Error())
		}
		if a.tries >= h.opts.Retries || !replayable(req, err, guard) {
			return nil, err
		}
		next := h.opts.Picker.NextExcept(failed)
		if next.Target == nil || next.Target == failed || !h.budget.take() {
			return nil, err
		}
		a.tries++
		a.moveTo(next.Target)
		if h.opts.Observer != nil {
			h.opts.Observer.Retry(failed.Addr)
		}
		h.log.Info("retrying on another target", "failed", failed.Addr, "target", next.Target.Addr, "method", req.Method, "error", err.Error())
		retry := *req
		u := *req.URL
		u.Host = next.Target.Addr
		retry.URL = &u
		req = &retry
	}
}

// blamesTarget reports whether err is the target's fault: a refused or reset connection,
// a closed one, or a timeout.
func blamesTarget(err error) bool {
	var maxBytes *http.MaxBytesError
	if errors.As(err, &maxBytes) || errors.Is(err, context.Canceled) {
		return false
	}
	var netErr net.Error
	return isDialError(err) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, &netErr) && netErr.Timeout()
}

func isDialError(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

// replayable reports whether the request can be sent again: nothing of its body was
// read, and either the connection failed before anything was sent, or the method is
// idempotent and the connection was reset (or closed) before a response began.
func replayable(req *http.Request, err error, body *bodyGuard) bool {
	if body != nil && body.read.Load() {
		return false
	}
	if isDialError(err) {
		return true
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
	}
	return false
}

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

// retryBudget allows retries of at most 20% of requests (plus a burst of 10), so that
// retries cannot double the load on a pool that is failing. Units are thousandths of a
// retry.
type retryBudget struct{ tokens atomic.Int64 }

const (
	budgetPerRequest = 200
	budgetPerRetry   = 1000
	budgetCap        = 10 * budgetPerRetry
)

func (b *retryBudget) deposit() {
	if b.tokens.Load() < budgetCap {
		b.tokens.Add(budgetPerRequest)
	}
}

func (b *retryBudget) take() bool {
	for {
		v := b.tokens.Load()
		if v < budgetPerRetry {
			return false
		}
		if b.tokens.CompareAndSwap(v, v-budgetPerRetry) {
			return true
		}
	}
}
