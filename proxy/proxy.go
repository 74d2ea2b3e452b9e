// Package proxy is the data path: an http.Handler that sends each request to the target
// the balancer picks, with the forwarding headers Django needs, and answers failures with
// short, detail-free error pages.
//
// It is built on httputil.ReverseProxy with Rewrite (never Director), so hop-by-hop
// headers are removed in both directions and client-supplied forwarding headers never
// reach a target unless the client is a trusted proxy.
package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"time"

	"edgeproxy/pool"
	"edgeproxy/proxy/h1"
)

// Picker chooses the target of each request; *pool.Pool implements it.
type Picker interface {
	Next() pool.Pick
	// NextExcept picks a target other than t if there is one, for a retry.
	NextExcept(t *pool.Target) pool.Pick
}

// PassiveReporter learns the outcome of every attempt on a target, for passive outlier
// detection. A failure is a connection refused or reset, or a response-head timeout.
type PassiveReporter interface {
	ReportSuccess(t *pool.Target)
	ReportFailure(t *pool.Target) (ejected bool)
}

// Observer receives one call per answered request, for metrics. A nil Observer is valid.
type Observer interface {
	// Request is called once the response is finished; target is "" when none was chosen.
	Request(code int, target string, d time.Duration)
	// FailOpen is called for a request routed while no target was healthy.
	FailOpen()
	// Retry is called when a request that failed on target is sent to another one.
	Retry(target string)
}

// Options configure a Handler.
type Options struct {
	// Picker chooses targets. Required.
	Picker Picker
	// Upstream reaches the targets for both paths; nil means NewUpstream(5s, 60s, nil).
	Upstream *Upstream
	// Transport sends the net/http path's requests to targets; nil means
	// Upstream.Transport. (Tests put a fake here.)
	Transport http.RoundTripper
	// TargetTLS makes the requests to targets https (the Transport must speak TLS).
	TargetTLS bool
	// TrustedProxies are the client networks whose X-Forwarded-For and X-Forwarded-Proto
	// are kept (and extended); from anyone else they are replaced.
	TrustedProxies []netip.Prefix
	// HSTS is the Strict-Transport-Security value added to HTTPS responses; "" adds none.
	HSTS string
	// MaxBodyBytes limits request bodies (413 beyond); 0 means no limit.
	MaxBodyBytes int64
	// AccessLog writes one line per request to Logger.
	AccessLog bool
	// Logger receives errors and access lines; nil means no logging.
	Logger *slog.Logger
	// Observer receives per-request metrics; nil means none.
	Observer Observer
	// Passive receives every attempt's outcome; nil means no passive health.
	Passive PassiveReporter
	// Retries is how many times a request whose attempt failed may be sent to another
	// target: always when the connection failed before any byte was sent, and for GET,
	// HEAD and OPTIONS also on a reset before the response began. Never for a request
	// whose body reached a target. Bounded by a budget of 20% of requests. 0 means never.
	Retries int
	// MixedContent adds upgrade-insecure-requests to HTML and counts pages that load
	// http:// scripts or stylesheets (mixedcontent.go); nil means neither.
	MixedContent *MixedContent
}

// Handler proxies requests to the pool. Use New.
type Handler struct {
	opts     Options
	log      *slog.Logger
	rp       *httputil.ReverseProxy
	budget   retryBudget
	upstream *Upstream
	hsts     h1.Header // the HSTS field the fast path adds; nil for none
}

var _ http.Handler = (*Handler)(nil)

// New returns a Handler for opts.
func New(opts Options) *Handler {
	if opts.Upstream == nil {
		opts.Upstream = NewUpstream(5*time.Second, 60*time.Second, nil)
	}
	if opts.Transport == nil {
		opts.Transport = opts.Upstream.Transport
	}
	h := &Handler{opts: opts, log: opts.Logger, upstream: opts.Upstream}
	if opts.HSTS != "" {
		h.hsts = h1.Header{{Name: []byte("Strict-Transport-Security"), Value: []byte(opts.HSTS)}}
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.budget.tokens.Store(budgetCap)
	h.rp = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      retryTransport{h},
		BufferPool:     newBufferPool(),
		ErrorHandler:   h.serveError,
		ModifyResponse: h.modifyResponse,
		// Streaming responses (no Content-Length, or text/event-stream) are flushed after
		// every write by ReverseProxy itself; others are flushed when complete.
		FlushInterval: 0,
		ErrorLog:      slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
	}
	return h
}

// NewTransport returns the transport to the targets: keep-alive pooled (sized for a busy
// edge), HTTP/1.1, no compression changes, connect and response-head timeouts. With
// tlsConfig set it speaks TLS to the targets (re-encrypt), resuming sessions.
func NewTransport(connectTimeout, responseHeaderTimeout time.Duration, tlsConfig *tls.Config) *http.Transport {
	if tlsConfig != nil && tlsConfig.ClientSessionCache == nil {
		tlsConfig = tlsConfig.Clone()
		tlsConfig.ClientSessionCache = tls.NewLRUClientSessionCache(1024)
	}
	return &http.Transport{
		TLSClientConfig:        tlsConfig,
		TLSHandshakeTimeout:    connectTimeout,
		Proxy:                  nil, // never an environment proxy between edge and targets
		DialContext:            (&net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:           4096,
		MaxIdleConnsPerHost:    512,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  responseHeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 1 << 20,
		ForceAttemptHTTP2:      false,
	}
}

type attemptKey struct{}

// attempt is the request's current target; a retry moves it to another one.
type attempt struct {
	target *pool.Target
	tries  int
	cancel context.CancelFunc
	stop   func() bool // unhooks cancel from target.Retired()
}

// moveTo makes t the attempt's target: counted in flight there, and cancelled if t is
// retired by a reload while the request runs (its deregistration delay is over).
func (a *attempt) moveTo(t *pool.Target) {
	if a.target != nil {
		a.stop()
		a.target.End()
	}
	a.target = t
	t.Begin()
	a.stop = context.AfterFunc(t.Retired(), a.cancel)
}

func (a *attempt) done() {
	a.stop()
	a.target.End()
	a.cancel()
}

// ServeHTTP picks a target and proxies r to it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if h.opts.HSTS != "" && requestTLS(r) != nil {
		// Set before proxying so that error pages carry it too; modifyResponse removes a
		// target's own value, so the edge's policy is the one clients see.
		w.Header().Set("Strict-Transport-Security", h.opts.HSTS)
	}
	rec := &recorder{ResponseWriter: w}
	pick := h.opts.Picker.Next()
	target := ""
	switch {
	case pick.Target == nil:
		h.plainError(rec, http.StatusServiceUnavailable)
	case h.opts.MaxBodyBytes > 0 && r.ContentLength > h.opts.MaxBodyBytes:
		h.plainError(rec, http.StatusRequestEntityTooLarge)
	default:
		if pick.FailOpen && h.opts.Observer != nil {
			h.opts.Observer.FailOpen()
		}
		if h.opts.MaxBodyBytes > 0 && r.Body != nil {
			r.Body = http.MaxBytesReader(rec, r.Body, h.opts.MaxBodyBytes)
		}
		h.budget.deposit()
		a := &attempt{}
		ctx, cancel := context.WithCancel(context.WithValue(r.Context(), attemptKey{}, a))
		a.cancel = cancel
		a.moveTo(pick.Target)
		h.rp.ServeHTTP(rec, r.WithContext(ctx))
		target = a.target.Addr
		a.done()
	}
	code := rec.code()
	d := time.Since(start)
	if h.opts.Observer != nil {
		h.opts.Observer.Request(code, target, d)
	}
	if h.opts.AccessLog {
		h.log.LogAttrs(r.Context(), slog.LevelInfo, "access",
			slog.String("client", r.RemoteAddr), slog.String("method", r.Method),
			slog.String("host", r.Host), slog.String("uri", r.RequestURI), slog.String("proto", r.Proto),
			slog.Int("status", code), slog.Int64("bytes", rec.bytes), slog.Duration("duration", d),
			slog.String("target", target), slog.String("engine", "net/http"))
	}
}

// rewrite builds the outgoing request. ReverseProxy has already removed hop-by-hop and
// client-supplied forwarding headers from Out.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	a := pr.In.Context().Value(attemptKey{}).(*attempt)
	pr.Out.URL.Scheme = "http"
	if h.opts.TargetTLS {
		pr.Out.URL.Scheme = "https"
	}
	pr.Out.URL.Host = a.target.Addr
	// Django's ALLOWED_HOSTS checks the site's name, so the client's Host goes through
	// unchanged (SetURL would replace it with the target address).
	pr.Out.Host = pr.In.Host

	clientIP := remoteIP(pr.In.RemoteAddr)
	trusted := h.trusted(clientIP)
	xff := clientIP.String()
	if prior := pr.In.Header.Values("X-Forwarded-For"); trusted && len(prior) > 0 {
		xff = strings.Join(prior, ", ") + ", " + xff
	}
	// One allocation for both values, instead of one per Header.Set (the keys are
	// already canonical).
	vals := make([]string, 2)
	vals[0], vals[1] = xff, pr.In.Host
	if clientIP.IsValid() {
		pr.Out.Header["X-Forwarded-For"] = vals[0:1:1]
	}
	if pr.In.Host != "" {
		pr.Out.Header["X-Forwarded-Host"] = vals[1:2:2]
	}
	removeUnderscoreForwarding(pr.Out.Header)
	proto := protoHTTP
	if requestTLS(pr.In) != nil {
		proto = protoHTTPS
	} else if p := pr.In.Header.Get("X-Forwarded-Proto"); trusted && p == "https" {
		proto = protoHTTPS // a TLS-terminating load balancer in front says what the client used
	}
	pr.Out.Header["X-Forwarded-Proto"] = proto
}

// protoHTTP and protoHTTPS are shared X-Forwarded-Proto values, so that setting the field
// allocates nothing. Nothing modifies a request's header values in place (an append to
// these makes a copy: their capacity is 1).
var (
	protoHTTP  = []string{"http"}
	protoHTTPS = []string{"https"}
)

// removeUnderscoreForwarding drops fields such as X_Forwarded_For: WSGI servers (gunicorn)
// map "_" and "-" to the same environ key, so such a field could stand in for a
// forwarding field the edge sets. The fast path's writer drops them too.
func removeUnderscoreForwarding(h http.Header) {
	for name := range h {
		if !strings.Contains(name, "_") {
			continue
		}
		switch http.CanonicalHeaderKey(strings.ReplaceAll(name, "_", "-")) {
		case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded":
			delete(h, name)
		}
	}
}

func (h *Handler) trusted(ip netip.Addr) bool {
	for _, p := range h.opts.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func remoteIP(remoteAddr string) netip.Addr {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (h *Handler) modifyResponse(resp *http.Response) error {
	if h.opts.HSTS != "" && requestTLS(resp.Request) != nil {
		resp.Header.Del("Strict-Transport-Security")
	}
	h.opts.MixedContent.apply(resp)
	return nil
}

// serveError answers a failed proxy attempt, sorting errors as Caddy's statusError does:
// 504 for a timeout, 413 for an oversized body, 499 (nothing written) when the client went
// away, 502 otherwise. The body never carries internal detail; the log does.
func (h *Handler) serveError(w http.ResponseWriter, r *http.Request, err error) {
	addr := ""
	if a, _ := r.Context().Value(attemptKey{}).(*attempt); a != nil {
		addr = a.target.Addr
	}
	var maxBytes *http.MaxBytesError
	var netErr net.Error
	code := http.StatusBadGateway
	switch {
	case errors.As(err, &maxBytes):
		code = http.StatusRequestEntityTooLarge
	case r.Context().Err() != nil && errors.Is(err, context.Canceled):
		// The client left; there is no one to answer and the target is not to blame.
		if rec, ok := w.(*recorder); ok {
			rec.status = 499
		}
		return
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		code = http.StatusGatewayTimeout
	}
	h.log.Warn("proxy error", "target", addr, "method", r.Method, "uri", r.RequestURI, "status", code, "error", err.Error())
	h.plainError(w, code)
}

func (h *Handler) plainError(w http.ResponseWriter, code int) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, "%d %s\n", code, http.StatusText(code))
}

// recorder notes the status and size of a response for metrics and the access log. It
// passes Flush and Hijack through, so streaming and protocol upgrades work.
type recorder struct {
	http.ResponseWriter
	status   int
	bytes    int64
	hijacked bool
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
		// The edge passes a target's response on as it is: net/http must not add a
		// Content-Type the target did not send (sniffing is the client's call).
		if _, ok := r.Header()["Content-Type"]; !ok {
			r.Header()["Content-Type"] = nil
		}
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

// Hijack hands the connection to ReverseProxy for a protocol upgrade (WebSocket), which
// then writes the 101 response itself.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil {
		r.hijacked = true
		r.status = http.StatusSwitchingProtocols
	}
	return c, brw, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) code() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}

// bufferPool backs ReverseProxy's copy buffers with sync.Pool: without one, ReverseProxy
// allocates 32 KiB for every response, however small.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(p []byte) { b.p.Put(&p) }

// RedirectHandler answers plain-HTTP requests with a 308 to the same host, path and query
// over https. httpsPort is the HTTPS listener's port; it is added to the location unless 443.
func RedirectHandler(httpsPort string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if host == "" {
			http.Error(w, "400 Bad Request: missing Host", http.StatusBadRequest)
			return
		}
		if strings.Contains(host, ":") {
			host = "[" + host + "]" // IPv6 literal
		}
		if httpsPort != "" && httpsPort != "443" {
			host += ":" + httpsPort
		}
		w.Header().Set("Location", "https://"+host+r.URL.RequestURI())
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusPermanentRedirect)
		_, _ = fmt.Fprintln(w, "308 Permanent Redirect")
	})
}
