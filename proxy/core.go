package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"edgeproxy/pool"
)

// The data-path core: what happens to a request between its head being read and its
// response being written, whichever wire format carries it. Both the net/http handler
// (ServeHTTP) and the HTTP/1.1 fast path (package fastpath) drive an Exchange the same
// way:
//
//	if status := h.Begin(&x, contentLength); status != 0 { answer h's error page; Finish }
//	err := h.Forward(&x, sender, idempotent)   // attempts, passive health, retries
//	if err != nil { status = h.Fail(&x, err, sender) ... answer the error page }
//	h.Finish(&x, status, bytes, describe)      // metrics, access log, in-flight count
//
// so that target choice, the retry rules and their budget, passive health, error
// classification, metrics and the access log exist once. The wire formats differ only in
// how they read and write bytes.

// Exchange is one request on its way through the data path: its target, the attempts made
// and when it began. The zero value is ready for Begin; the fast path reuses one per
// connection, so that a request allocates nothing here.
type Exchange struct {
	start  time.Time
	route  *route
	pool   *poolState // the route's pool; nil for a redirect or fixed response
	target *pool.Target
	tries  int

	// watch is set by the net/http path: the attempt's context is cancelled, with
	// errDeregistered as its cause, when the target is retired by a reload whose
	// deregistration delay is over. The fast path needs none: the pool's retire hook
	// breaks its upstream connections (fastpath.Upstream.AbortTarget).
	watch   context.CancelCauseFunc
	unwatch func() bool
}

// Pool is the name of the pool the exchange's route forwards to; "" for none.
func (x *Exchange) Pool() string {
	if x.pool == nil {
		return ""
	}
	return x.pool.Name
}

// Target is the target of the exchange's current attempt, nil before Begin picked one.
func (x *Exchange) Target() *pool.Target { return x.target }

// moveTo makes t the exchange's target: counted in flight there and, on the net/http path,
// watched for its retirement.
func (x *Exchange) moveTo(t *pool.Target) {
	x.leave()
	x.target = t
	t.Begin()
	if x.watch != nil {
		cancel := x.watch
		x.unwatch = context.AfterFunc(t.Retired(), func() { cancel(errDeregistered) })
	}
}

// leave ends the exchange's stay on its target, if it has one.
func (x *Exchange) leave() {
	if x.target == nil {
		return
	}
	if x.unwatch != nil {
		x.unwatch()
		x.unwatch = nil
	}
	x.target.End()
}

// errDeregistered is the cause of an attempt cancelled because its target was removed by
// a reload and its deregistration delay ended.
var errDeregistered = errors.New("proxy: deregistration delay ended: the target was removed by a reload")

// A Sender is one wire format's way of sending a request to a target.
type Sender interface {
	// Send sends the request to t and reads the response head. bodySent reports whether
	// any of the request body may have reached t: such a request is never replayed.
	Send(t *pool.Target) (bodySent bool, err error)
	Describer
}

// A Describer tells the core's log lines which request they are about.
type Describer interface {
	// Describe returns the method and request target; it is called only when a line is
	// written, so that the fast path converts its bytes only then.
	Describe() (method, uri string)
}

// Begin starts the exchange x for a request that took route (the index RouteFast or
// routeHTTP gave; -1 for none; RouteMisdirected for a host the connection's certificate
// does not cover) and whose body has contentLength bytes (-1 when unknown): it picks a
// target of the route's pool and counts the request in flight there. It returns 0 when
// the request may go on, or the status to answer: -1 for a route's redirect or fixed
// response, 404 when no route matched and 421 when misdirected (then Answer says what to
// write), 503 when the pool has no target at all, 413 when the body is over
// limits.max_body_bytes.
func (h *Handler) Begin(x *Exchange, route int, contentLength int64) (refuse int) {
	x.start, x.target, x.tries, x.pool = time.Now(), nil, 0, nil
	x.route = h.routeAt(route)
	if x.route.pool == nil {
		switch route {
		case -1:
			h.obs.ProxyError(ReasonNoRoute)
		case RouteMisdirected:
			h.obs.ProxyError(ReasonMisdirected)
		}
		return -1 // the caller asks Answer
	}
	x.pool = x.route.pool
	pick := x.pool.Picker.Next()
	if pick.Target == nil {
		h.obs.ProxyError(ReasonNoTarget)
		return http.StatusServiceUnavailable
	}
	if h.opts.MaxBodyBytes > 0 && contentLength > h.opts.MaxBodyBytes {
		h.obs.ProxyError(ReasonBodyTooLarge)
		return http.StatusRequestEntityTooLarge
	}
	if pick.FailOpen {
		h.obs.FailOpen(x.pool.Name)
	}
	x.pool.budget.deposit()
	x.moveTo(pick.Target)
	return 0
}

// Answer is the edge's own answer for an exchange whose Begin returned -1: the route's
// redirect or fixed response, 404 when no route matched, or 421 when misdirected. host and target are the
// request's (a redirect keeps what it does not replace).
func (h *Handler) Answer(x *Exchange, host, target string, isTLS bool) Action {
	a, _ := x.route.action(host, target, isTLS)
	return a
}

// Forward sends the request with s to x's target. When an attempt fails and the target is
// to blame (refused, reset, closed or timed out), it tells passive health, and sends the
// request to another target if the retry rules allow: retries left (Options.Retries), the
// budget not spent, another target to pick, and the request replayable — nothing of its
// body sent, and either nothing sent at all (a failed dial) or an idempotent method met a
// closed or reset connection before its response began. It returns nil once an attempt
// succeeded (the response head is in), or the last attempt's error.
func (h *Handler) Forward(x *Exchange, s Sender, idempotent bool) error {
	for {
		bodySent, err := s.Send(x.target)
		if err == nil {
			x.pool.Passive.ReportSuccess(x.target)
			return nil
		}
		if !blamesTarget(err) {
			return err // the client left, or the request itself was at fault
		}
		failed := x.target
		if x.pool.Passive.ReportFailure(failed) {
			h.log.Warn("target "+failed.Addr+" ejected by passive health: consecutive failed requests", "target", failed.Addr, "error", err.Error())
		}
		if x.tries >= x.pool.Retries || !replayable(err, idempotent, bodySent) {
			return err
		}
		next := x.pool.Picker.NextExcept(failed)
		if next.Target == nil || next.Target == failed || !x.pool.budget.take() {
			return err
		}
		x.tries++
		x.moveTo(next.Target)
		h.obs.Retry(x.pool.Name, failed.Addr)
		method, _ := s.Describe()
		h.log.Info("retrying on another target", "failed", failed.Addr, "target", next.Target.Addr, "method", method, "error", err.Error())
	}
}

// Reasons a request was answered by the edge rather than by a target, as counted by
// Observer.ProxyError (the metric's reason label).
const (
	ReasonNoTarget     = "no_target"      // 503: the pool has no target
	ReasonNoRoute      = "no_route"       // 404: no route matched
	ReasonMisdirected  = "misdirected"    // 421: the connection's certificate does not cover the host
	ReasonBodyTooLarge = "body_too_large" // 413: over limits.max_body_bytes
	ReasonBadRequest   = "bad_request"    // 400/431/501/505: the strict parser refused the head
	ReasonClientClosed = "client_closed"  // 499: the client went away first
	ReasonTimeout      = "target_timeout" // 504: no response head within response_header_timeout
	ReasonTargetError  = "target_error"   // 502: refused, reset, closed, or a broken response
	ReasonDeregistered = "deregistered"   // 502: the target was removed and its deregistration delay ended
)

// Fail classifies the error that ended x's attempts, as Caddy's statusError does, logs
// it and counts it. It returns the status to answer: 502 when the target was removed by a
// reload and its deregistration delay ended while the request was in flight (an ALB closes
// such connections too; logged as "deregistration delay ended"), 413 for a body over the
// limit, 499 (nothing to write) when the client went away, 504 for a timeout, 502
// otherwise. The error page never carries the detail; the log does.
func (h *Handler) Fail(x *Exchange, err error, s Describer) (status int) {
	reason := classify(x.target, err)
	status = reasonStatus[reason]
	if reason == ReasonClientClosed {
		h.obs.ProxyError(reason)
		return status
	}
	addr := ""
	if x.target != nil {
		addr = x.target.Addr
	}
	method, uri := s.Describe()
	msg := "proxy error"
	if reason == ReasonDeregistered {
		msg = "proxy error: deregistration delay ended; the target was removed by a reload"
	}
	h.log.Warn(msg, "target", addr, "method", method, "uri", uri, "status", status, "reason", reason, "error", err.Error())
	h.obs.ProxyError(reason)
	return status
}

var reasonStatus = map[string]int{
	ReasonClientClosed: 499,
	ReasonBodyTooLarge: http.StatusRequestEntityTooLarge,
	ReasonTimeout:      http.StatusGatewayTimeout,
	ReasonTargetError:  http.StatusBadGateway,
	ReasonDeregistered: http.StatusBadGateway,
}

// classify says why an exchange on t failed with err.
func classify(t *pool.Target, err error) string {
	var maxBytes *http.MaxBytesError
	var ce ClientError
	switch {
	case t != nil && t.Retired().Err() != nil || errors.Is(err, errDeregistered):
		return ReasonDeregistered
	case errors.As(err, &maxBytes):
		return ReasonBodyTooLarge
	case errors.As(err, &ce) || errors.Is(err, errClientGone):
		return ReasonClientClosed
	case isTimeout(err):
		return ReasonTimeout
	}
	return ReasonTargetError
}

// errClientGone marks an attempt the net/http path gave up because the client's request
// context ended.
var errClientGone = errors.New("proxy: the client went away")

// ClientError is a failure on the client's side of an exchange (the client's connection
// broke while its body was read, or while the response was written): it is not the
// target's fault, so it counts neither against the target nor as a reason to retry.
type ClientError struct{ Err error }

func (e ClientError) Error() string { return "client: " + e.Err.Error() }
func (e ClientError) Unwrap() error { return e.Err }

// Finish records the end of x: the in-flight count on its target, the metrics, and, when
// the access log is on, the line that describe fills in (called only then, so that the
// fast path converts its bytes only then).
func (h *Handler) Finish(x *Exchange, status int, bytes int64, describe func(*AccessLine)) {
	target := ""
	if x.target != nil {
		target = x.target.Addr
		x.leave()
		x.target = nil
	}
	d := time.Since(x.start)
	poolName, routeName := "", ""
	if x.pool != nil {
		poolName = x.pool.Name
	}
	if x.route != nil {
		routeName = x.route.name
	}
	h.obs.Request(status, poolName, routeName, target, d)
	if h.opts.AccessLog {
		line := AccessLine{Status: status, Bytes: bytes, Duration: d, Target: target, Pool: poolName, Route: routeName}
		describe(&line)
		h.log.LogAttrs(context.Background(), slog.LevelInfo, "access",
			slog.String("client", line.Client), slog.String("method", line.Method),
			slog.String("host", line.Host), slog.String("uri", line.URI), slog.String("proto", line.Proto),
			slog.Int("status", line.Status), slog.Int64("bytes", line.Bytes), slog.Duration("duration", line.Duration),
			slog.String("route", line.Route), slog.String("pool", line.Pool),
			slog.String("target", line.Target), slog.String("engine", line.Engine))
	}
}

// AccessLine is one line of the access log. Finish fills in the outcome; the wire format
// describes the request.
type AccessLine struct {
	Client, Method, Host, URI, Proto string
	// Engine is the wire format that served the request: "fast" or "net/http".
	Engine   string
	Status   int
	Bytes    int64
	Duration time.Duration
	// Route and Pool are the route the request took and its pool ("" for none).
	Route, Pool string
	Target      string
}

// blamesTarget reports whether err is the target's fault: a refused or reset connection,
// a closed one, or a timeout. A ClientError, an oversized body and a cancelled request
// are not.
func blamesTarget(err error) bool {
	var maxBytes *http.MaxBytesError
	var ce ClientError
	if errors.As(err, &ce) || errors.As(err, &maxBytes) || errors.Is(err, context.Canceled) ||
		errors.Is(err, errClientGone) || errors.Is(err, errDeregistered) {
		return false
	}
	return isDialError(err) || IsConnGone(err) || isTimeout(err)
}

// replayable reports whether a failed request may be sent again: nothing of its body was
// sent, and either nothing was sent at all (the dial failed) or the method is idempotent
// and the connection was closed or reset before a response began.
func replayable(err error, idempotent, bodySent bool) bool {
	if bodySent {
		return false
	}
	return isDialError(err) || idempotent && IsConnGone(err)
}

func isDialError(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

// IsConnGone reports whether err says the connection was closed or reset (EOF, reset,
// broken pipe, closed): the errors after which an idempotent request may be replayed.
func IsConnGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

// IsIdempotent reports whether a request of this method may be replayed on another target
// after its connection failed (GET, HEAD, OPTIONS).
func IsIdempotent[M ~string | ~[]byte](method M) bool {
	switch string(method) {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
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
