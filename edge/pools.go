package edge

import (
	"context"
	"crypto/tls"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"edgeproxy/balance"
	"edgeproxy/config"
	"edgeproxy/fastpath"
	"edgeproxy/health"
	"edgeproxy/mixedcontent"
	"edgeproxy/pool"
	"edgeproxy/proxy"
)

// pools are the edge's target groups by name: pool (the pool block) or each of pools.
// Reload updates a pool that stays in place (its targets keep their state), starts a new
// one, and drains a removed one.
type pools struct {
	mu     sync.Mutex // guards byName, gone and each entry's upstreams
	byName map[string]*poolRuntime
	// gone are pools a reload removed, kept so that their draining targets' connections
	// can still be broken (retireTarget) and their drains waited for.
	gone     []*poolRuntime
	checkCtx context.Context // Run's; nil before Run
}

// poolRuntime is one running pool: its targets and state, and how both data paths reach
// them.
type poolRuntime struct {
	pool *pool.Pool
	// up is the upstream in use; prev the one a reload replaced, which may still carry
	// requests to a draining target (retire breaks those too).
	up, prev *upstream
	cfg      config.Pool // the settings up was built with
}

// upstream is how the edge reaches a pool's targets on both data paths: the fast path's
// pool of keep-alive connections and net/http's transport, built from one set of timeouts
// and TLS settings. A reload that keeps those settings keeps it, and its connections.
type upstream struct {
	fast      *fastpath.Upstream
	transport *http.Transport
}

func newUpstream(p *config.Pool, tlsConfig *tls.Config) *upstream {
	return &upstream{
		fast:      fastpath.NewUpstream(p.ConnectTimeout, p.ResponseHeaderTimeout, tlsConfig),
		transport: proxy.NewTransport(p.ConnectTimeout, p.ResponseHeaderTimeout, tlsConfig),
	}
}

// CloseIdle closes the idle connections of both paths.
func (u *upstream) CloseIdle() {
	u.fast.CloseIdle()
	u.transport.CloseIdleConnections()
}

// poolPlan is a pool of a configuration being built: what Reload commits.
type poolPlan struct {
	name string
	cfg  pool.Config
	conf *config.Pool
	up   *upstream  // the upstream to use: the running one, or a new one
	pool *pool.Pool // the running pool, or a new one, not started until commitPools
	new  bool
}

// plan builds, for every pool of cfg, its pool configuration and upstream, reusing the
// running upstream when the pool's timeouts and TLS settings are unchanged. It changes
// nothing.
func (e *Edge) planPools(cfg *config.Config) []poolPlan {
	e.pools.mu.Lock()
	defer e.pools.mu.Unlock()
	var out []poolPlan
	for _, np := range cfg.Resolved.Pools {
		upTLS := e.upstreamTLS(np.Name, np.Pool, cfg)
		p := poolPlan{name: np.Name, conf: np.Pool, cfg: poolConfig(np.Name, np.Pool, upTLS)}
		cur := e.pools.byName[np.Name]
		if cur != nil && sameUpstream(&cur.cfg, np.Pool) {
			p.up = cur.up
		} else {
			p.up = newUpstream(np.Pool, upTLS)
		}
		if cur != nil {
			p.pool = cur.pool
		} else {
			name := np.Name
			p.pool, p.new = pool.New(p.cfg, pool.Options{Observer: e.metrics.Pool(name), Logger: e.log,
				OnRetire: func(addr string) { e.retireTarget(name, addr) }}), true
		}
		out = append(out, p)
	}
	return out
}

func sameUpstream(a, b *config.Pool) bool {
	return a.ConnectTimeout == b.ConnectTimeout && a.ResponseHeaderTimeout == b.ResponseHeaderTimeout &&
		reflect.DeepEqual(a.TLS, b.TLS)
}

// commitPools puts plans in effect: pools that stay are updated in place, new ones made
// (and started, once Run has), removed ones drained by their deregistration delay.
func (e *Edge) commitPools(plans []poolPlan) {
	// Pool updates run without e.pools.mu: an update may retire a target at once, and
	// OnRetire (retireTarget) takes the lock.
	var updates []func()
	var closeIdle []*upstream
	e.pools.mu.Lock()
	if e.pools.byName == nil {
		e.pools.byName = map[string]*poolRuntime{}
	}
	keep := map[string]bool{}
	for _, p := range plans {
		keep[p.name] = true
		cur := e.pools.byName[p.name]
		if p.new {
			cur = &poolRuntime{pool: p.pool}
			e.pools.byName[p.name] = cur
			if ctx := e.pools.checkCtx; ctx != nil {
				updates = append(updates, func() { p.pool.Start(ctx) })
			}
		} else {
			updates = append(updates, func() { p.pool.Update(p.cfg) })
		}
		if cur.up != p.up {
			if cur.up != nil {
				closeIdle = append(closeIdle, cur.up)
			}
			cur.prev, cur.up = cur.up, p.up
		}
		cur.cfg = *p.conf
	}
	for name, cur := range e.pools.byName {
		if !keep[name] {
			// A removed pool: its targets drain as removed targets do; then it is gone.
			removed := cur.pool
			updates = append(updates, func() {
				c := removed.Config()
				c.Targets = nil
				removed.Update(c)
			})
			delete(e.pools.byName, name)
			e.pools.gone = append(e.pools.gone, cur)
			e.metrics.ForgetPool(name)
			e.log.Info("pool "+name+" removed: its targets drain", "pool", name)
		}
	}
	e.pools.mu.Unlock()
	for _, update := range updates {
		update()
	}
	// Requests in flight keep their connections; idle ones of replaced upstreams go.
	for _, u := range closeIdle {
		u.CloseIdle()
	}
}

// retireTarget is a pool's OnRetire: it breaks the fast path's connections still busy
// with a target whose deregistration delay ended (the pool cancelled net/http's through
// Target.Retired) and forgets the target's metrics.
func (e *Edge) retireTarget(poolName, addr string) {
	e.pools.mu.Lock()
	var ups []*upstream
	if cur := e.pools.byName[poolName]; cur != nil {
		ups = []*upstream{cur.up, cur.prev}
	}
	for _, g := range e.pools.gone {
		if g.pool.Name() == poolName {
			ups = append(ups, g.up, g.prev)
		}
	}
	e.pools.mu.Unlock()
	for _, u := range ups {
		if u != nil {
			u.fast.AbortTarget(addr)
		}
	}
	e.metrics.ForgetTarget(poolName, addr)
}

// startPools starts every pool's checks; they stop when ctx is done.
func (e *Edge) startPools(ctx context.Context) {
	e.pools.mu.Lock()
	defer e.pools.mu.Unlock()
	e.pools.checkCtx = ctx
	for _, cur := range e.pools.byName {
		cur.pool.Start(ctx)
	}
}

// waitPools waits for every pool's checks and drains to end.
func (e *Edge) waitPools() {
	for _, p := range e.poolsAndGone() {
		p.Wait()
	}
}

// poolsAndGone returns the running pools and those reloads removed, in name order.
func (e *Edge) poolsAndGone() []*pool.Pool {
	e.pools.mu.Lock()
	all := e.poolListLocked()
	for _, g := range e.pools.gone {
		all = append(all, g.pool)
	}
	e.pools.mu.Unlock()
	slices.SortStableFunc(all, func(a, b *pool.Pool) int { return strings.Compare(a.Name(), b.Name()) })
	return all
}

// poolListLocked is poolList; e.pools.mu must be held.
func (e *Edge) poolListLocked() []*pool.Pool {
	out := make([]*pool.Pool, 0, len(e.pools.byName))
	for _, v := range e.pools.byName {
		out = append(out, v.pool)
	}
	slices.SortFunc(out, func(a, b *pool.Pool) int { return strings.Compare(a.Name(), b.Name()) })
	return out
}

// poolConfig is the configuration of the pool named name.
func poolConfig(name string, p *config.Pool, upstreamTLS *tls.Config) pool.Config {
	return pool.Config{
		Name: name, Targets: p.Targets, Health: healthOptions(p, upstreamTLS),
		Passive:             pool.Passive{ConsecutiveFailures: p.Passive.ConsecutiveFailures, EjectionTime: p.Passive.EjectionTime},
		DeregistrationDelay: p.DeregistrationDelay,
		Balance:             balance.Name(p.Balance),
		Weights:             p.Weights,
		SlowStart:           balance.SlowStart{Duration: time.Duration(p.SlowStart.DurationSeconds) * time.Second},
	}
}

func healthOptions(p *config.Pool, upstreamTLS *tls.Config) health.Options {
	hc := p.HealthCheck
	return health.Options{
		Path: hc.Path, Host: hc.Host, Interval: hc.Interval, Timeout: hc.Timeout,
		HealthyThreshold: hc.HealthyThreshold, UnhealthyThreshold: hc.UnhealthyThreshold,
		Matcher: hc.Matcher, TLSConfig: upstreamTLS,
	}
}

// upstreamTLS is the client TLS configuration for re-encrypting to a pool's targets, or
// nil for plain HTTP. Health checks and the proxy share it.
func (e *Edge) upstreamTLS(name string, p *config.Pool, cfg *config.Config) *tls.Config {
	t := p.TLS
	if t == nil {
		return nil
	}
	if t.InsecureSkipVerify {
		e.log.Warn("tls.insecure_skip_verify is on for pool "+name+": target certificates are NOT verified; anyone on the path to the targets can impersonate them", "pool", name)
	}
	return &tls.Config{ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12,
		RootCAs: cfg.Resolved.PoolRoots[name]} // nil: the system roots
}

// newBackend builds the proxy for cfg over plans' pools.
func (e *Edge) newBackend(cfg *config.Config, plans []poolPlan) *fastpath.Backend {
	b := &fastpath.Backend{Upstreams: map[string]*fastpath.Upstream{}}
	var pools []proxy.Pool
	for _, p := range plans {
		pools = append(pools, proxy.Pool{Name: p.name, Picker: p.pool, Passive: p.pool,
			Transport: p.up.transport, TargetTLS: p.conf.TLS != nil, Retries: p.conf.Retries})
		b.Upstreams[p.name] = p.up.fast
	}
	b.Handler = proxy.New(proxy.Options{
		Pools:          pools,
		Routes:         cfg.Resolved.Routes,
		TrustedProxies: cfg.Resolved.TrustedProxies,
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
	return b
}

// poolNamed returns the running pool named name, or nil.
func (e *Edge) poolNamed(name string) *pool.Pool {
	e.pools.mu.Lock()
	defer e.pools.mu.Unlock()
	if cur := e.pools.byName[name]; cur != nil {
		return cur.pool
	}
	return nil
}
