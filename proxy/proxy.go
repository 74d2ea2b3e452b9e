// Package proxy is the data path's handler and policy: an http.Handler that sends each
// request to the target its pool picks, with the forwarding headers Django needs, and
// answers failures with short, detail-free error pages; and the core that the HTTP/1.1
// fast path (package fastpath) drives for the requests it serves itself (core.go), so
// that both wire formats share one target choice, retry rule, error classification,
// header policy, error page and access log.
//
// The net/http side is built on httputil.ReverseProxy with Rewrite (never Director), so
// hop-by-hop headers are removed in both directions and client-supplied forwarding
// headers never reach a target unless the client is a trusted proxy.
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

	"edgeproxy/mixedcontent"
	"edgeproxy/pool"
	"edgeproxy/proxy/h1"
	"edgeproxy/routing"
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

// Observer receives one call per answered request, for metrics; telemetry.Metrics
// implements it.
type Observer interface {
	// Request is called once the response is finished, with the pool and route the
	// request took ("" for none: pool for a redirect or fixed response, route when no
	// route matched) and its target ("" when none was chosen).
	Request(code int, pool, route, target string, d time.Duration)
	// FailOpen is called for a request routed while no target of pool was healthy.
	FailOpen(pool string)
	// Retry is called when a request of pool that failed on target is sent to another
	// one.
	Retry(pool, target string)
	// ProxyError is called for a request the edge answered itself, with why (one of the
	// Reason constants).
	ProxyError(reason string)
}

// Options configure a Handler.
type Options struct {
	// Picker chooses targets. Required.
	Picker Picker
	// Transport sends the net/http path's requests to targets; nil means
	// NewTransport(5s, 60s, nil). (The fast path has its own upstream pool.)
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
	// http:// scripts or stylesheets; nil means neither.
	MixedContent *mixedcontent.Policy

	// Pools and Routes are the target groups and the listener rules that choose among
	// them. Without Pools, Picker, Passive, Transport, TargetTLS and Retries above are the
	// one pool, named "pool"; without Routes, every request goes to the first pool.
	Pools  []Pool
	Routes *routing.Table
}

// Handler proxies requests to the pool. Use New.
type Handler struct {
	opts   Options
	log    *slog.Logger
	obs    Observer // Options.Observer, or one that does nothing
	fwd    forwarding
	rp     *httputil.ReverseProxy
	hsts   h1.Header // the HSTS field the fast path adds; nil for none
	table  *routing.Table
	routes []*route // the table's routes, compiled, in its order
	// singleDefault is true when the table is one route to a pool, without conditions:
	// the match is skipped.
	singleDefault bool
}

var _ http.Handler = (*Handler)(nil)

// New returns a Handler for opts. Hooks left nil get a no-op default here, once, so that
// no call site checks for them.
func New(opts Options) *Handler {
	h := &Handler{opts: opts, log: opts.Logger, obs: opts.Observer, fwd: forwarding{trusted: opts.TrustedProxies}}
	h.compileRoutes(opts)
	if opts.HSTS != "" {
		h.hsts = h1.Header{{Name: []byte("Strict-Transport-Security"), Value: []byte(opts.HSTS)}}
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.obs == nil {
		h.obs = nopObserver{}
	}
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

// nopObserver and nopPassive stand in for hooks that Options leave nil.
type nopObserver struct{}

func (nopObserver) Request(int, string, string, string, time.Duration) {}
func (nopObserver) FailOpen(string)                                    {}
func (nopObserver) Retry(string, string)                               {}
func (nopObserver) ProxyError(string)                                  {}

type nopPassive struct{}

func (nopPassive) ReportSuccess(*pool.Target)      {}
func (nopPassive) ReportFailure(*pool.Target) bool { return false }

// AccessLog reports whether the handler writes an access log line per request.
func (h *Handler) AccessLog() bool { return h.opts.AccessLog }

// Logger is the handler's logger, for the fast path's own notices.
func (h *Handler) Logger() *slog.Logger { return h.log }

// Observer is the handler's observer (a no-op one when Options left it nil).
func (h *Handler) Observer() Observer { return h.obs }

// MixedContent is the handler's mixed-content policy, nil for none.
func (h *Handler) MixedContent() *mixedcontent.Policy { return h.opts.MixedContent }

// MaxBodyBytes is limits.max_body_bytes; 0 means no limit.
func (h *Handler) MaxBodyBytes() int64 { return h.opts.MaxBodyBytes }

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

// attemptKey is the context key of the net/http path's Exchange.
type attemptKey struct{}

// ServeHTTP picks a target and proxies r to it: the net/http wire format of the core.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	isTLS := requestTLS(r) != nil
	if h.opts.HSTS != "" && isTLS {
		// Set before proxying so that error pages carry it too; modifyResponse removes a
		// target's own value, so the edge's policy is the one clients see.
		w.Header().Set("Strict-Transport-Security", h.opts.HSTS)
	}
	rec := &recorder{ResponseWriter: w}
	x := &Exchange{}
	// The attempt's context ends when the client's does, or, with errDeregistered as its
	// cause, when the target is retired while the request runs.
	ctx, cancel := context.WithCancelCause(context.WithValue(r.Context(), attemptKey{}, x))
	defer cancel(nil)
	x.watch = cancel
	switch status := h.Begin(x, h.routeChecked(r), r.ContentLength); status {
	case -1:
		writeAction(rec, h.Answer(x, r.Host, r.RequestURI, isTLS))
	case 0:
		if h.opts.MaxBodyBytes > 0 && r.Body != nil {
			r.Body = http.MaxBytesReader(rec, r.Body, h.opts.MaxBodyBytes)
		}
		h.rp.ServeHTTP(rec, r.WithContext(ctx))
	default:
		writeErrorPage(rec, status)
	}
	h.Finish(x, rec.code(), rec.bytes, func(l *AccessLine) {
		l.Client, l.Method, l.Host, l.URI, l.Proto, l.Engine = r.RemoteAddr, r.Method, r.Host, r.RequestURI, r.Proto, "net/http"
	})
}

// rewrite builds the outgoing request. ReverseProxy has already removed hop-by-hop and
// client-supplied forwarding headers from Out; dropFolded removes their "_" spellings.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(attemptKey{}).(*Exchange)
	pr.Out.URL.Scheme = "http"
	if x.pool.TargetTLS {
		pr.Out.URL.Scheme = "https"
	}
	pr.Out.URL.Host = x.target.Addr
	// Django's ALLOWED_HOSTS checks the site's name, so the client's Host goes through
	// unchanged (SetURL would replace it with the target address).
	pr.Out.Host = pr.In.Host
	dropFolded(pr.Out.Header, pr.In.Header["Connection"], h1.DropsRequestField)
	h.setForwarding(pr.Out, pr.In)
}

func (h *Handler) modifyResponse(resp *http.Response) error {
	if h.opts.HSTS != "" && requestTLS(resp.Request) != nil {
		resp.Header.Del("Strict-Transport-Security")
	}
	dropFolded(resp.Header, resp.Header["Connection"], h1.DropsResponseField)
	h.opts.MixedContent.Apply(resp)
	return nil
}

// serveError answers a failed proxy attempt with the core's classification (Fail).
func (h *Handler) serveError(w http.ResponseWriter, r *http.Request, err error) {
	x, _ := r.Context().Value(attemptKey{}).(*Exchange)
	if x == nil {
		x = &Exchange{}
	}
	if context.Cause(r.Context()) == errDeregistered {
		err = errDeregistered
	} else if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		err = errClientGone
	}
	code := h.Fail(x, err, describeRequest{r})
	if code == 499 {
		// The client left; there is no one to answer.
		if rec, ok := w.(*recorder); ok {
			rec.status = 499
		}
		return
	}
	writeErrorPage(w, code)
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

type tlsStateKey struct{}

// WithTLSState returns ctx carrying the TLS state of a connection that reaches net/http
// without being a *tls.Conn (the fast path hands connections over behind its gate), so
// that the handler still knows the request came over TLS.
func WithTLSState(ctx context.Context, st *tls.ConnectionState) context.Context {
	return context.WithValue(ctx, tlsStateKey{}, st)
}

// requestTLS is r.TLS, or the TLS state of a connection the fast path handed to net/http.
func requestTLS(r *http.Request) *tls.ConnectionState {
	if r.TLS != nil {
		return r.TLS
	}
	st, _ := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState)
	return st
}
