// Package edge assembles a running edgeproxy from a configuration: it binds the listeners,
// builds the certificate source, balancer, health checker, proxy and metrics, connects them
// (health feeds the balancer, everything reports to telemetry) and serves until its context
// ends, then drains.
//
// It exists so that cmd/edgeproxy only parses flags and handles signals, and so that tests
// and `edgeproxy demo` can run an edge in-process.
package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"

	"edgeproxy/balancer"
	"edgeproxy/certs"
	"edgeproxy/config"
	"edgeproxy/health"
	"edgeproxy/passthrough"
	"edgeproxy/proxy"
	"edgeproxy/telemetry"
	"edgeproxy/telemetry/tlscost"
	"edgeproxy/tlsserve"
)

// Edge is one configured, bound edgeproxy. Use New, then Run.
type Edge struct {
	log     *slog.Logger
	metrics *telemetry.Metrics
	bal     *balancer.Balancer
	checker *health.Checker
	certs   *certs.Source // the source the listeners were built with

	// reloadMu serialises Reload; cfg is the configuration in effect.
	reloadMu sync.Mutex
	cfg      *config.Config

	// Reload swaps these; the request path reads them without a lock.
	certSrc atomic.Pointer[certs.Source]
	handler atomic.Pointer[proxy.Handler]
	// upstream is reused across reloads that keep the pool's timeouts, so that
	// keep-alive connections to targets survive a reload.
	upstream *proxy.Upstream

	// tls is the HTTPS listener's TLS: its configuration, which reloads swap, and its
	// session tickets, which outlive reloads; nil without that listener.
	tls *tlsserve.Server
	// tlsCost measures what TLS costs in CPU; nil until tls.tls_cost is first on (see
	// accountant). Whether it measures is up to the configuration in tls.
	tlsCost *tlscost.Accountant
	// fastPath is proxy.fast_path as bound at start.
	fastPath bool
	// passthrough routes connections by SNI under the TLS layer; nil when the
	// configuration at start had no passthrough entries.
	passthrough *passthrough.Router

	runCtx context.Context // set by Run; bounds drains

	// acme is the tls.acme in effect: e.certs obtains and renews its certificates, and
	// sources built by reloads share them (a change of tls.acme needs a restart).
	acme config.ACME

	servers   []server
	listeners []net.Listener

	// failOpenMu guards failingOpen, so that entering and leaving fail-open is logged once.
	failOpenMu  sync.Mutex
	failingOpen bool
}

// New builds the parts from cfg and binds every listener, so that a taken or forbidden
// port is reported before anything starts.
func New(cfg *config.Config, log *slog.Logger) (*Edge, error) {
	if err := checkResolved(cfg); err != nil {
		return nil, err
	}
	e := &Edge{cfg: cfg, log: log, metrics: telemetry.New()}
	if err := e.build(); err != nil {
		return nil, err
	}
	if err := e.bind(); err != nil {
		e.closeListeners()
		return nil, err
	}
	return e, nil
}

func (e *Edge) build() error {
	cfg := e.cfg
	src, err := e.newCertSource(cfg)
	if err != nil {
		return err
	}
	e.certs = src
	e.acme = cfg.TLS.ACME
	e.useCertSource(src, cfg)

	upTLS, err := e.upstreamTLS(cfg)
	if err != nil {
		return err
	}
	e.bal = balancer.New(cfg.Pool.Targets)
	opts := healthOptions(cfg, upTLS)
	opts.Observer, opts.Logger, opts.OnChange, opts.OnProven = e.metrics, e.log, e.healthChanged, e.healthProven
	e.checker = health.New(opts)
	e.passthrough = e.newPassthrough(cfg)
	e.handler.Store(e.newHandler(cfg, upTLS))
	return nil
}

// healthProven ends a passive ejection once active checks have passed healthy_threshold
// times in a row since it began.
func (e *Edge) healthProven(addr string) {
	if t := e.bal.Lookup(addr); t != nil && t.Ejected() {
		e.bal.Restore(t)
		e.log.Info("target "+addr+" back from passive ejection: active checks pass", "target", addr)
	}
}

// passiveHealth is the proxy's PassiveReporter: the balancer's outlier detection, plus the
// metric and the restart of the target's count of passing checks on each ejection.
type passiveHealth struct{ e *Edge }

func (p passiveHealth) ReportSuccess(t *balancer.Target) { p.e.bal.ReportSuccess(t) }

func (p passiveHealth) ReportFailure(t *balancer.Target) bool {
	if !p.e.bal.ReportFailure(t) {
		return false
	}
	p.e.metrics.PassiveEjection(t.Addr)
	p.e.checker.ResetPasses(t.Addr)
	return true
}

func healthOptions(cfg *config.Config, upstreamTLS *tls.Config) health.Options {
	hc := cfg.Pool.HealthCheck
	return health.Options{
		Path: hc.Path, Host: hc.Host, Interval: hc.Interval, Timeout: hc.Timeout,
		HealthyThreshold: hc.HealthyThreshold, UnhealthyThreshold: hc.UnhealthyThreshold,
		Matcher: hc.Matcher, TLSConfig: upstreamTLS,
	}
}

// upstreamTLS is the client TLS configuration for re-encrypting to the targets, or nil
// for plain HTTP. It is built once per configuration: health checks and the proxy share it.
func (e *Edge) upstreamTLS(cfg *config.Config) (*tls.Config, error) {
	t := cfg.Pool.TLS
	if t == nil {
		return nil, nil
	}
	conf := &tls.Config{ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12,
		RootCAs: cfg.Resolved.UpstreamRoots} // nil: the system roots
	if t.InsecureSkipVerify {
		e.log.Warn("pool.tls.insecure_skip_verify is on: target certificates are NOT verified; anyone on the path to the targets can impersonate them")
	}
	return conf, nil
}

// newHandler builds the proxy for cfg, reusing the upstream (and its pooled
// connections) when the pool's timeouts and TLS settings are unchanged.
func (e *Edge) newHandler(cfg *config.Config, upstreamTLS *tls.Config) *proxy.Handler {
	if e.upstream == nil || e.cfg == nil ||
		cfg.Pool.ConnectTimeout != e.cfg.Pool.ConnectTimeout ||
		cfg.Pool.ResponseHeaderTimeout != e.cfg.Pool.ResponseHeaderTimeout ||
		!reflect.DeepEqual(cfg.Pool.TLS, e.cfg.Pool.TLS) {
		if e.upstream != nil {
			old := e.upstream
			// Requests in flight keep their connections; idle ones of the old settings go.
			defer old.CloseIdle()
		}
		e.upstream = proxy.NewUpstream(cfg.Pool.ConnectTimeout, cfg.Pool.ResponseHeaderTimeout, upstreamTLS)
	}
	if pc := cfg.Pool.Passive; pc.ConsecutiveFailures > 0 {
		e.bal.SetPassive(&balancer.Passive{ConsecutiveFailures: pc.ConsecutiveFailures, EjectionTime: pc.EjectionTime})
	} else {
		e.bal.SetPassive(nil)
	}
	return proxy.New(proxy.Options{
		Picker:         e.bal,
		Passive:        passiveHealth{e},
		TargetTLS:      cfg.Pool.TLS != nil,
		Retries:        cfg.Pool.Retries,
		Upstream:       e.upstream,
		TrustedProxies: cfg.Resolved.TrustedProxies,
		HSTS:           cfg.Headers.HSTS,
		MaxBodyBytes:   cfg.Limits.MaxBodyBytes,
		AccessLog:      cfg.Log.Access,
		Logger:         e.log,
		Observer:       e.metrics,
		MixedContent: &proxy.MixedContent{
			UpgradeInsecureRequests: cfg.Headers.UpgradeInsecureRequests,
			Report:                  cfg.Headers.MixedContentReport,
			SampleOneIn:             cfg.Headers.MixedContentSample,
			Observer:                e.metrics,
			Logger:                  e.log,
		},
	})
}

// serveProxy hands each request to the handler of the configuration in effect.
func (e *Edge) serveProxy(w http.ResponseWriter, r *http.Request) {
	e.handler.Load().ServeHTTP(w, r)
}

// healthChanged publishes a health transition to the balancer and logs entering and
// leaving fail-open (no healthy target: traffic goes to all, as on an ALB).
func (e *Edge) healthChanged(addr string, healthy bool) {
	e.bal.SetHealthy(addr, healthy)
	anyHealthy := false
	for _, t := range e.bal.Targets() {
		anyHealthy = anyHealthy || t.Healthy()
	}
	e.failOpenMu.Lock()
	defer e.failOpenMu.Unlock()
	switch {
	case !anyHealthy && !e.failingOpen:
		e.failingOpen = true
		e.log.Warn("no healthy target: failing open, requests go to all targets")
	case anyHealthy && e.failingOpen:
		e.failingOpen = false
		e.log.Info("a target is healthy again: fail-open over")
	}
}

func (e *Edge) bind() error {
	cfg := e.cfg
	l := cfg.Limits
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: l.ReadHeaderTimeout,
			IdleTimeout:       l.IdleTimeout,
			MaxHeaderBytes:    l.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
		}
	}
	handler := http.HandlerFunc(e.serveProxy)

	if addr := cfg.Listen.HTTPS; addr != "" {
		ln, err := listen("listen.https", addr)
		if err != nil {
			return err
		}
		e.fastPath = cfg.Proxy.FastPath
		settings, err := e.tlsSettings(cfg, e.certs)
		if err != nil {
			return err
		}
		e.tls = tlsserve.New(settings)
		srv := newServer(handler)
		srv.TLSConfig = e.tls.Config()
		// Passthrough sits under the TLS layer: it splices the connections for its names
		// and hands the others on with their ClientHello replayed.
		inner := e.passthrough.Listener(limitListener(ln, l.MaxConnections))
		e.add(e.dataServer(srv), e.tls.Listener(inner))
	}
	if addr := cfg.Listen.HTTP; addr != "" {
		ln, err := listen("listen.http", addr)
		if err != nil {
			return err
		}
		if cfg.Resolved.HTTPMode == config.HTTPRedirect {
			h := proxy.RedirectHandler(e.httpsPort())
			e.add(newServer(e.certs.HTTPHandler(h)), limitListener(ln, l.MaxConnections))
		} else {
			// Plain-HTTP proxying (benchmarks, a TLS-terminating balancer in front): the
			// same data path as https. ACME HTTP-01 challenges still answer first.
			e.add(e.dataServer(newServer(e.certs.HTTPHandler(handler))), limitListener(ln, l.MaxConnections))
		}
	}
	if addr := cfg.Listen.Metrics; addr != "" {
		ln, err := listen("listen.metrics", addr)
		if err != nil {
			return err
		}
		admin := e.metrics.AdminHandler(func() any { return e.targetStatuses() })
		e.add(newServer(admin), ln)
	}
	return nil
}

// targetStatus is one entry of /targets: a target's health, and the set it belongs to
// (one address may be in both: a backend that takes re-encrypted and passed-through TLS).
type targetStatus struct {
	// Pool is "pool" for pool.targets (HTTP(S) health checks) or "passthrough" for the
	// targets of the passthrough entries (TCP connect checks).
	Pool string `json:"pool"`
	health.Status
}

// targetStatuses lists the pool's targets, then the passthrough targets.
func (e *Edge) targetStatuses() []targetStatus {
	out := []targetStatus{} // [], not null, when there are none
	for _, s := range e.checker.Statuses() {
		out = append(out, targetStatus{Pool: "pool", Status: s})
	}
	for _, s := range e.passthrough.Statuses() {
		out = append(out, targetStatus{Pool: "passthrough", Status: s})
	}
	return out
}

// httpsPort is the bound HTTPS port (the real one when the config says port 0).
func (e *Edge) httpsPort() string {
	if len(e.listeners) == 0 || e.cfg.Listen.HTTPS == "" {
		return ""
	}
	_, port, _ := net.SplitHostPort(e.listeners[0].Addr().String())
	return port
}

// server is what the edge runs on each listener: an *http.Server, or a *proxy.Server
// (the fast path with net/http behind it).
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
}

// dataServer puts the fast path in front of srv, unless proxy.fast_path is off; the
// net/http server then serves behind the strict head gate alone.
func (e *Edge) dataServer(srv *http.Server) server {
	l := e.cfg.Limits
	return proxy.NewServer(proxy.ServerOptions{
		Handler: e.handler.Load, HTTP: srv, FastPath: e.cfg.Proxy.FastPath,
		ReadHeaderTimeout: l.ReadHeaderTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: l.MaxHeaderBytes,
		Handshake: tlsserve.Handshake, // measured when tls.tls_cost was on at accept
	})
}

func (e *Edge) add(srv server, ln net.Listener) {
	e.servers = append(e.servers, srv)
	e.listeners = append(e.listeners, ln)
}

func listen(key, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		hint := ""
		switch {
		case errors.Is(err, errAddrInUse()):
			hint = " (another process has this port; find it with `ss -ltnp`)"
		case errors.Is(err, errAccess()):
			hint = " (ports below 1024 need CAP_NET_BIND_SERVICE; the systemd unit grants it)"
		}
		return nil, fmt.Errorf("edge: %s %s: %w%s", key, addr, err, hint)
	}
	return ln, nil
}

func (e *Edge) closeListeners() {
	for _, ln := range e.listeners {
		_ = ln.Close()
	}
}

// Addrs returns the bound listener addresses by config key ("https", "http", "metrics").
func (e *Edge) Addrs() map[string]string {
	out := map[string]string{}
	i := 0
	for _, key := range []struct{ name, addr string }{
		{"https", e.cfg.Listen.HTTPS}, {"http", e.cfg.Listen.HTTP}, {"metrics", e.cfg.Listen.Metrics},
	} {
		if key.addr != "" {
			out[key.name] = e.listeners[i].Addr().String()
			i++
		}
	}
	return out
}

// Metrics returns the edge's metrics, for parts wired in by later features.
func (e *Edge) Metrics() *telemetry.Metrics { return e.metrics }

// Run starts health checks and serves until ctx is done, then stops accepting, lets
// in-flight requests finish within limits.shutdown_timeout, and returns. It returns an
// error only if a listener fails or the drain times out.
func (e *Edge) Run(ctx context.Context) error {
	e.reloadMu.Lock()
	e.runCtx = ctx
	e.reloadMu.Unlock()
	checkCtx, stopChecks := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopChecks()
		e.checker.Wait()
		e.passthrough.Wait()
	}()
	e.checker.Start(checkCtx, e.cfg.Pool.Targets)
	e.passthrough.Start(checkCtx)
	if e.tls != nil {
		go e.tls.Run(checkCtx)
	}

	serveErr := make(chan error, len(e.servers))
	for i, srv := range e.servers {
		go func() {
			if err := srv.Serve(e.listeners[i]); !errors.Is(err, http.ErrServerClosed) {
				serveErr <- err
			}
		}()
	}
	// ACME orders start once the listeners serve, as the CA validates through them.
	certCtx, stopCerts := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopCerts()
		e.certs.Wait()
	}()
	e.certs.Start(certCtx)
	e.log.Info("edgeproxy serving", e.summary()...)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
	}
	e.log.Info("shutting down: draining in-flight requests", "timeout", e.cfg.Limits.ShutdownTimeout)
	drainCtx, cancel := context.WithTimeout(context.Background(), e.cfg.Limits.ShutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(e.servers))
	for i, srv := range e.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = srv.Shutdown(drainCtx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = e.passthrough.Shutdown(drainCtx) // connections left at the deadline are closed
	}()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, srv := range e.servers {
			_ = srv.Close()
		}
		return errors.Join(runErr, fmt.Errorf("edge: drain: %w", err))
	}
	e.log.Info("drained; bye")
	return runErr
}

func (e *Edge) summary() []any {
	var attrs []any
	for k, v := range e.Addrs() {
		attrs = append(attrs, k, v)
	}
	src := "self-signed"
	if n := len(e.cfg.TLS.Certificates); n > 0 {
		src = fmt.Sprintf("%d static certificate(s)", n)
	}
	if a := e.acme; a.Enabled() {
		src = fmt.Sprintf("ACME for %s from %s", strings.Join(a.Domains, ", "), a.Directory)
		if n := len(e.cfg.TLS.Certificates); n > 0 {
			src += fmt.Sprintf(", and %d static certificate(s)", n)
		}
	}
	return append(attrs, "certificates", src, "targets", e.cfg.Pool.Targets,
		"health_check", fmt.Sprintf("GET %s every %v", e.cfg.Pool.HealthCheck.Path, e.cfg.Pool.HealthCheck.Interval))
}
