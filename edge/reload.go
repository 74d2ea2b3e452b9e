package edge

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"time"

	"edgeproxy/balancer"
	"edgeproxy/config"
	"edgeproxy/fastpath"
)

// Reload applies a new configuration without closing a listener or failing a request:
// targets, health-check settings, certificates and the proxy's settings change in place.
// Targets that stay keep their health state; new ones are probed at once and join after
// their first pass; removed ones get no new requests and drain (see drain). Settings that
// belong to a bound listener (listen addresses, server timeouts and limits) need a
// restart: they are kept, with a warning. On error nothing has changed.
func (e *Edge) Reload(cfg *config.Config) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	old := e.cfg
	oldUpstream := e.upstream // busy with the requests a drain may have to break

	if !reflect.DeepEqual(old.Listen, cfg.Listen) {
		e.log.Warn("reload: listen addresses changed; they take effect only after a restart")
	}
	if old.Proxy != cfg.Proxy {
		e.log.Warn("reload: proxy.fast_path changed; it takes effect only after a restart")
	}
	if limitsNeedRestart(old.Limits, cfg.Limits) {
		e.log.Warn("reload: server limits (timeouts, header size, connections) changed; they take effect only after a restart")
	}
	if !reflect.DeepEqual(old.TLS, cfg.TLS) {
		src, err := e.newCertSource(cfg)
		if err != nil {
			return fmt.Errorf("edge: reload: %w", err)
		}
		e.certSrc.Store(src)
	}

	upTLS, err := e.upstreamTLS(cfg)
	if err != nil {
		return fmt.Errorf("edge: reload: %w", err)
	}
	backend := e.newBackend(cfg, upTLS)
	opts := healthOptions(cfg, upTLS)
	e.checker.Reconfigure(opts)
	removed := e.bal.SetTargets(cfg.Pool.Targets)
	e.checker.SetTargets(cfg.Pool.Targets)
	e.reloadPassthrough(cfg)
	e.backend.Store(backend)
	e.cfg = cfg

	var added []string
	for _, a := range cfg.Pool.Targets {
		if !slices.Contains(old.Pool.Targets, a) {
			added = append(added, a)
		}
	}
	var gone []string
	for _, t := range removed {
		gone = append(gone, t.Addr)
		go e.drain(e.runCtx, t, cfg.Pool.DeregistrationDelay, oldUpstream)
	}
	e.log.Info("reloaded configuration", "targets", cfg.Pool.Targets, "added", added, "removed", gone)
	return nil
}

func limitsNeedRestart(a, b config.Limits) bool {
	a.MaxBodyBytes, b.MaxBodyBytes = 0, 0 // applied by the proxy, reloadable
	a.ShutdownTimeout, b.ShutdownTimeout = 0, 0
	return a != b
}

// drain waits until a removed target has no request in flight, or its deregistration delay
// is over (then cancels what still runs), and forgets it.
func (e *Edge) drain(ctx context.Context, t *balancer.Target, delay time.Duration, upstream *fastpath.Upstream) {
	if ctx == nil {
		ctx = context.Background()
	}
	deadline := time.NewTimer(delay)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
wait:
	for t.InFlight() > 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			e.log.Warn(fmt.Sprintf("target %s removed: deregistration delay %v over, cancelling %d request(s) still in flight", t.Addr, delay, t.InFlight()))
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	t.Retire()                   // cancels the net/http path's requests to t
	upstream.AbortTarget(t.Addr) // and breaks the fast path's
	e.checker.Forget(t.Addr)
	e.metrics.ForgetTarget(t.Addr)
	e.log.Info(fmt.Sprintf("target %s removed and drained after %v", t.Addr, time.Since(start).Round(time.Millisecond)), "target", t.Addr)
}
