// Package edge assembles a running edgeproxy from a configuration: it binds the listeners,
// builds the certificate source, the pool (balancing, health checks, draining), the proxy
// and metrics, connects them (everything reports to telemetry) and serves until its
// context ends, then drains.
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"edgeproxy/certs"
	"edgeproxy/config"
	"edgeproxy/fastpath"
	"edgeproxy/passthrough"
	"edgeproxy/pool"
	"edgeproxy/proxy"
	"edgeproxy/telemetry"
	"edgeproxy/telemetry/tlscost"
	"edgeproxy/tlsserve"
)

// Edge is one configured, bound edgeproxy. Use New, then Run.
type Edge struct {
	log     *slog.Logger
	metrics *telemetry.Metrics
	pools   pools         // the target groups by name
	certs   *certs.Source // the source the listeners were built with

	// reloadMu serialises Reload; cfg is the configuration in effect (Reload stores it
	// last; Run, Addrs and the summary read it without the lock).
	reloadMu sync.Mutex
	cfg      atomic.Pointer[config.Config]

	// Reload swaps these; the request path reads them without a lock.
	certSrc atomic.Pointer[certs.Source]
	backend atomic.Pointer[fastpath.Backend]
	// beforeCommit, when set (by tests), is the last step of building a reload: its
	// error fails the reload before anything is committed.
	beforeCommit func() error

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

	// acme is the tls.acme in effect: e.certs obtains and renews its certificates, and
	// sources built by reloads share them (a change of tls.acme needs a restart).
	acme config.ACME
	// fleet is this replica's handle on its fleet's shared state (tls.acme.storage.redis),
	// one per process; nil without (see fleet.go).
	fleet *fleetState

	servers   []server
	listeners []net.Listener
}

// New builds the parts from cfg and binds every listener, so that a taken or forbidden
// port is reported before anything starts.
func New(cfg *config.Config, log *slog.Logger) (*Edge, error) {
	if err := checkResolved(cfg); err != nil {
		return nil, err
	}
	e := &Edge{log: log, metrics: telemetry.New()}
	e.cfg.Store(cfg)
	if err := e.build(); err != nil {
		e.fleet.close()
		return nil, err
	}
	if err := e.bind(); err != nil {
		e.closeListeners()
		e.fleet.close()
		return nil, err
	}
	return e, nil
}

func (e *Edge) build() error {
	cfg := e.cfg.Load()
	src, err := e.newCertSource(cfg)
	if err != nil {
		return err
	}
	e.certs = src
	e.acme = cfg.TLS.ACME
	e.useCertSource(src, cfg)

	plans := e.planPools(cfg)
	e.commitPools(plans)
	e.passthrough = e.newPassthrough(cfg)
	e.backend.Store(e.newBackend(cfg, plans))
	return nil
}

// serveProxy hands each request to the handler of the configuration in effect.
func (e *Edge) serveProxy(w http.ResponseWriter, r *http.Request) {
	e.backend.Load().Handler.ServeHTTP(w, r)
}

func (e *Edge) bind() error {
	cfg := e.cfg.Load()
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
		e.fleet.shareTicketKeys(e.tls)
		srv := newServer(handler)
		proxy.ConformHTTP2(srv)
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
			srv := newServer(e.certs.HTTPHandler(handler))
			if cfg.Listen.H2C { // HTTP/2 with prior knowledge too (dataServer lets it through)
				var p http.Protocols
				p.SetHTTP1(true)
				p.SetUnencryptedHTTP2(true)
				srv.Protocols = &p
				proxy.ConformHTTP2(srv)
			}
			e.add(e.dataServer(srv), limitListener(ln, l.MaxConnections))
		}
	}
	if addr := cfg.Listen.Metrics; addr != "" {
		ln, err := listen("listen.metrics", addr)
		if err != nil {
			return err
		}
		admin := http.NewServeMux()
		admin.Handle("/", e.metrics.AdminHandler(e.targetsView))
		admin.Handle("GET /certificates", telemetry.JSONHandler(func() any { return e.certSrc.Load().Certificates() }))
		e.add(newServer(admin), ln)
	}
	return nil
}

// poolTargets is one entry of /targets?group=pool: a pool and its targets' health and
// balancing state.
type poolTargets struct {
	// Pool is the pool's name ("pool" for the pool block) or "passthrough" for the
	// targets of the passthrough entries (TCP connect checks, no balancing state).
	Pool    string        `json:"pool"`
	Targets []pool.Status `json:"targets"`
}

// targetStatus is one entry of /targets: a target's status and the pool it belongs to
// (one address may be in several: a backend that takes re-encrypted and passed-through
// TLS, or serves two pools).
type targetStatus struct {
	Pool string `json:"pool"`
	pool.Status
}

// targetGroups lists the pools in name order, each with its targets by address (a pool a
// reload removed is listed while its targets drain), then the passthrough targets.
func (e *Edge) targetGroups() []poolTargets {
	out := []poolTargets{} // [], not null, when there are none
	for _, p := range e.poolsAndGone() {
		if st := p.Statuses(); len(st) > 0 || e.poolNamed(p.Name()) == p {
			out = append(out, poolTargets{Pool: p.Name(), Targets: st})
		}
	}
	if st := e.passthrough.Statuses(); len(st) > 0 {
		g := poolTargets{Pool: "passthrough"}
		for _, s := range st {
			g.Targets = append(g.Targets, pool.Status{Status: s})
		}
		out = append(out, g)
	}
	return out
}

// targetsView is what /targets shows: one list of every target, each with its pool, in
// the order of targetGroups; or with ?group=pool, targetGroups itself.
func (e *Edge) targetsView(r *http.Request) any {
	groups := e.targetGroups()
	if r.URL.Query().Get("group") == "pool" {
		return groups
	}
	out := []targetStatus{}
	for _, g := range groups {
		for _, s := range g.Targets {
			out = append(out, targetStatus{Pool: g.Pool, Status: s})
		}
	}
	return out
}

// httpsPort is the bound HTTPS port (the real one when the config says port 0).
func (e *Edge) httpsPort() string {
	if len(e.listeners) == 0 || e.cfg.Load().Listen.HTTPS == "" {
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
// net/http server then serves behind the strict head gate alone. When srv's Protocols
// include UnencryptedHTTP2 (listen.h2c), connections that open with the HTTP/2 preface
// pass through both to srv.
func (e *Edge) dataServer(srv *http.Server) server {
	l := e.cfg.Load().Limits
	return fastpath.NewServer(fastpath.ServerOptions{
		Backend: e.backend.Load, HTTP: srv, FastPath: e.cfg.Load().Proxy.FastPath,
		H2C:               srv.Protocols != nil && srv.Protocols.UnencryptedHTTP2(),
		ReadHeaderTimeout: l.ReadHeaderTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: l.MaxHeaderBytes,
		Handshake: tlsserve.Handshake, // measured when tls.tls_cost was on at accept
		// A request whose host the connection's certificate does not cover gets 421.
		Certificate: func(st *tls.ConnectionState) *x509.Certificate {
			return e.certSrc.Load().Served(st.ServerName)
		},
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
		{"https", e.cfg.Load().Listen.HTTPS}, {"http", e.cfg.Load().Listen.HTTP}, {"metrics", e.cfg.Load().Listen.Metrics},
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
	defer e.fleet.run(ctx)() // last: the certificates use the store until they stop
	// Checks and drains outlive ctx until the servers have drained.
	checkCtx, stopChecks := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopChecks()
		e.waitPools()
		e.passthrough.Wait()
	}()
	e.startPools(checkCtx)
	e.passthrough.Start(checkCtx)
	if e.tls != nil {
		go e.tls.Run(checkCtx)
	}
	// The TLS cost calibration goes on measuring while the edge is idle (tlscost.Refine).
	// An accountant that a reload creates later (tls.tls_cost turned on) is not refined.
	e.reloadMu.Lock()
	cost := e.tlsCost
	e.reloadMu.Unlock()
	refined := make(chan struct{})
	go func() {
		defer close(refined)
		cost.Refine(ctx)
	}()
	defer func() { <-refined }()

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
	e.log.Info("shutting down: draining in-flight requests", "timeout", e.cfg.Load().Limits.ShutdownTimeout)
	drainCtx, cancel := context.WithTimeout(context.Background(), e.cfg.Load().Limits.ShutdownTimeout)
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
	if n := len(e.cfg.Load().TLS.Certificates); n > 0 {
		src = fmt.Sprintf("%d static certificate(s)", n)
	}
	if a := e.acme; a.Enabled() {
		src = fmt.Sprintf("ACME for %s from %s", strings.Join(append(slices.Clone(a.Domains), a.IPAddresses...), ", "), a.Directory)
		if n := len(e.cfg.Load().TLS.Certificates); n > 0 {
			src += fmt.Sprintf(", and %d static certificate(s)", n)
		}
	}
	cfg := e.cfg.Load()
	if len(cfg.Pools) == 0 {
		return append(attrs, "certificates", src, "targets", cfg.Pool.Targets,
			"health_check", fmt.Sprintf("GET %s every %v", cfg.Pool.HealthCheck.Path, cfg.Pool.HealthCheck.Interval))
	}
	var pools []string
	for _, p := range cfg.Resolved.Pools {
		pools = append(pools, fmt.Sprintf("%s %v (GET %s every %v)", p.Name, p.Targets, p.HealthCheck.Path, p.HealthCheck.Interval))
	}
	return append(attrs, "certificates", src, "pools", strings.Join(pools, "; "), "routes", len(cfg.Resolved.Routes.Routes()))
}
