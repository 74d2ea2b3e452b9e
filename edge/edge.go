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
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"edgeproxy/balancer"
	"edgeproxy/certs"
	"edgeproxy/config"
	"edgeproxy/fastpath"
	"edgeproxy/health"
	"edgeproxy/mixedcontent"
	"edgeproxy/passthrough"
	"edgeproxy/proxy"
	"edgeproxy/telemetry"
	"edgeproxy/telemetry/tlscost"
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
	backend atomic.Pointer[fastpath.Backend]
	// upstream and transport are reused across reloads that keep the pool's timeouts,
	// so that keep-alive connections to targets survive a reload: the fast path's and
	// net/http's.
	upstream  *fastpath.Upstream
	transport *http.Transport

	// tickets rotates the HTTPS listener's session ticket keys. That listener's tls.Config
	// outlives reloads, so clients keep resuming across them.
	tickets tlscost.SessionTickets
	// tlsCost measures what TLS costs in CPU; nil when tls.tls_cost is false (read at
	// start; a reload does not change it).
	tlsCost *tlscost.Accountant
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
	e.certSrc.Store(src)

	upTLS, err := e.upstreamTLS(cfg)
	if err != nil {
		return err
	}
	e.bal = balancer.New(cfg.Pool.Targets)
	opts := healthOptions(cfg, upTLS)
	opts.Observer, opts.Logger, opts.OnChange, opts.OnProven = e.metrics, e.log, e.healthChanged, e.healthProven
	e.checker = health.New(opts)
	e.passthrough = e.newPassthrough(cfg)
	e.backend.Store(e.newBackend(cfg, upTLS))
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

// newCertSource loads the certificates cfg names.
func (e *Edge) newCertSource(cfg *config.Config) (*certs.Source, error) {
	var static []tls.Certificate
	for _, cf := range cfg.TLS.Certificates {
		c, err := config.LoadCertificate(cf)
		if err != nil {
			return nil, fmt.Errorf("edge: %s: %w", cf.Cert, err)
		}
		static = append(static, c)
		// Static files expire too (certbot renews them outside edgeproxy): the same gauge
		// as ACME's, so one alert covers both. Names come from the configured files.
		for _, name := range c.Leaf.DNSNames {
			e.metrics.CertificateExpiry(name, c.Leaf.NotAfter)
			e.metrics.CertificateNotBefore(name, c.Leaf.NotBefore)
		}
	}
	minVersion := uint16(tls.VersionTLS12)
	if cfg.TLS.MinVersion == "1.3" {
		minVersion = tls.VersionTLS13
	}
	opts := certs.Options{
		Static: static, SelfSigned: cfg.TLS.SelfSigned, MinVersion: minVersion,
		Logger: e.log, Observer: e.metrics,
	}
	if e.certs != nil { // a reload
		if !reflect.DeepEqual(e.acme, cfg.TLS.ACME) {
			e.log.Warn("reload: tls.acme changed; it takes effect only after a restart")
		}
		opts.ACMEOf = e.certs
		return certs.New(opts)
	}
	if a := cfg.TLS.ACME; a.Enabled() {
		var roots *x509.CertPool
		if a.CARoots != "" {
			var err error
			if roots, err = config.LoadCARoots(a.CARoots); err != nil {
				return nil, fmt.Errorf("edge: tls.acme.ca_roots: %w", err)
			}
		}
		opts.ACME = &certs.ACMEOptions{
			Domains: a.Domains, IPAddresses: a.IPAddresses, Profile: a.Profile,
			Email: a.Email, DirectoryURL: a.Directory, RootCAs: roots,
			CacheDir: a.CacheDir, RenewBefore: a.RenewBefore, Observer: e.metrics,
		}
	}
	e.acme = cfg.TLS.ACME
	return certs.New(opts)
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
	conf := &tls.Config{ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		roots, err := config.LoadCARoots(t.CA)
		if err != nil {
			return nil, fmt.Errorf("edge: pool.tls.ca: %w", err)
		}
		conf.RootCAs = roots
	}
	if t.InsecureSkipVerify {
		e.log.Warn("pool.tls.insecure_skip_verify is on: target certificates are NOT verified; anyone on the path to the targets can impersonate them")
	}
	return conf, nil
}

// newBackend builds the proxy for cfg, reusing the upstreams (and their pooled
// connections) when the pool's timeouts and TLS settings are unchanged.
func (e *Edge) newBackend(cfg *config.Config, upstreamTLS *tls.Config) *fastpath.Backend {
	if e.upstream == nil || e.cfg == nil ||
		cfg.Pool.ConnectTimeout != e.cfg.Pool.ConnectTimeout ||
		cfg.Pool.ResponseHeaderTimeout != e.cfg.Pool.ResponseHeaderTimeout ||
		!reflect.DeepEqual(cfg.Pool.TLS, e.cfg.Pool.TLS) {
		if e.upstream != nil {
			oldUp, oldTransport := e.upstream, e.transport
			// Requests in flight keep their connections; idle ones of the old settings go.
			defer oldUp.CloseIdle()
			defer oldTransport.CloseIdleConnections()
		}
		e.upstream = fastpath.NewUpstream(cfg.Pool.ConnectTimeout, cfg.Pool.ResponseHeaderTimeout, upstreamTLS)
		e.transport = proxy.NewTransport(cfg.Pool.ConnectTimeout, cfg.Pool.ResponseHeaderTimeout, upstreamTLS)
	}
	var trusted []netip.Prefix
	for _, s := range cfg.Forwarding.TrustedProxies {
		p, _ := config.ParsePrefix(s) // validated by config
		trusted = append(trusted, p)
	}
	if pc := cfg.Pool.Passive; pc.ConsecutiveFailures > 0 {
		e.bal.SetPassive(&balancer.Passive{ConsecutiveFailures: pc.ConsecutiveFailures, EjectionTime: pc.EjectionTime})
	} else {
		e.bal.SetPassive(nil)
	}
	h := proxy.New(proxy.Options{
		Picker:         e.bal,
		Passive:        passiveHealth{e},
		TargetTLS:      cfg.Pool.TLS != nil,
		Retries:        cfg.Pool.Retries,
		Transport:      e.transport,
		TrustedProxies: trusted,
		HSTS:           cfg.Headers.HSTS,
		MaxBodyBytes:   cfg.Limits.MaxBodyBytes,
		AccessLog:      cfg.Log.Access,
		Logger:         e.log,
		Observer:       e.metrics,
		MixedContent: &mixedcontent.Policy{
			UpgradeInsecureRequests: cfg.Headers.UpgradeInsecureRequests,
			Report:                  cfg.Headers.MixedContentReport,
			SampleOneIn:             cfg.Headers.MixedContentSample,
			Observer:                e.metrics,
			Logger:                  e.log,
		},
	})
	return &fastpath.Backend{Handler: h, Upstream: e.upstream}
}

// serveProxy hands each request to the handler of the configuration in effect.
func (e *Edge) serveProxy(w http.ResponseWriter, r *http.Request) {
	e.backend.Load().Handler.ServeHTTP(w, r)
}

// getCertificate asks the certificate source of the configuration in effect.
func (e *Edge) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return e.certSrc.Load().GetCertificate(hello)
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
		srv := newServer(handler)
		proxy.ConformHTTP2(srv)
		srv.TLSConfig = e.certs.TLSConfig()
		srv.TLSConfig.GetCertificate = e.getCertificate // follows reloads
		e.tickets.Attach(srv.TLSConfig)
		if cfg.TLS.TLSCost {
			// The handshake deadline is proxy.Server's: read_header_timeout, as net/http's.
			opts := tlscost.Options{Registerer: e.metrics.Registry(), Logger: e.log}
			if !cfg.Proxy.FastPath {
				// net/http serves HTTP/1.1 and writes responses through the proxy's 32 KiB
				// copy buffer: a write may be cut into two full records.
				opts.MaxAppWrite = 32 << 10
			}
			a, err := tlscost.New(opts)
			if err != nil {
				return err
			}
			e.tlsCost = a
		}
		// Passthrough sits under the TLS layer: it splices the connections for its names
		// and hands the others on with their ClientHello replayed.
		inner := e.passthrough.Listener(limitListener(ln, l.MaxConnections))
		e.add(e.dataServer(srv), e.tlsCost.Listener(inner, srv.TLSConfig))
	}
	if addr := cfg.Listen.HTTP; addr != "" {
		ln, err := listen("listen.http", addr)
		if err != nil {
			return err
		}
		if cfg.Listen.HTTPMode == "redirect" {
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
		admin := http.NewServeMux()
		admin.Handle("/", e.metrics.AdminHandler(func() any { return e.targetStatuses() }))
		admin.Handle("GET /certificates", telemetry.JSONHandler(func() any { return e.certSrc.Load().Certificates() }))
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

// server is what the edge runs on each listener: an *http.Server, or a *fastpath.Server
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
	return fastpath.NewServer(fastpath.ServerOptions{
		Backend: e.backend.Load, HTTP: srv, FastPath: e.cfg.Proxy.FastPath,
		ReadHeaderTimeout: l.ReadHeaderTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: l.MaxHeaderBytes,
		Handshake: e.tlsCost.Handshake, // a nil Accountant's is (*tls.Conn).Handshake
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
	go e.tickets.Run(checkCtx)

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
		src = fmt.Sprintf("ACME for %s from %s", strings.Join(append(slices.Clone(a.Domains), a.IPAddresses...), ", "), a.Directory)
		if n := len(e.cfg.TLS.Certificates); n > 0 {
			src += fmt.Sprintf(", and %d static certificate(s)", n)
		}
	}
	return append(attrs, "certificates", src, "targets", e.cfg.Pool.Targets,
		"health_check", fmt.Sprintf("GET %s every %v", e.cfg.Pool.HealthCheck.Path, e.cfg.Pool.HealthCheck.Interval))
}
