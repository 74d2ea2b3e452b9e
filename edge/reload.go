package edge

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"edgeproxy/balancer"
	"edgeproxy/config"
	"edgeproxy/proxy"
)

// Reload applies a new configuration without closing a listener or failing a request:
// targets, health-check settings, certificates, the TLS settings (tls.min_version,
// tls.tls_cost: for the handshakes that follow) and the proxy's settings change in place.
// Targets that stay keep their health state; new ones are probed at once and join after
// their first pass; removed ones get no new requests and drain (see drain). Settings that
// belong to a bound listener or to start-up (see restartOnly) are kept, with a warning
// naming each key changed. log.format is the caller's: it owns the log handler. On error
// nothing has changed.
func (e *Edge) Reload(cfg *config.Config) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	old := e.cfg
	oldUpstream := e.upstream // busy with the requests a drain may have to break

	if err := checkResolved(cfg); err != nil {
		return err
	}
	for _, key := range needsRestart(old, cfg) {
		e.log.Warn("reload: "+key+" changed; it takes effect only after a restart", "key", key)
	}
	tlsPart, err := e.prepareTLSReload(old, cfg)
	if err != nil {
		return fmt.Errorf("edge: reload: %w", err)
	}

	upTLS, err := e.upstreamTLS(cfg)
	if err != nil {
		return fmt.Errorf("edge: reload: %w", err)
	}
	handler := e.newHandler(cfg, upTLS)
	opts := healthOptions(cfg, upTLS)
	e.checker.Reconfigure(opts)
	removed := e.bal.SetTargets(cfg.Pool.Targets)
	e.checker.SetTargets(cfg.Pool.Targets)
	e.reloadPassthrough(cfg)
	e.commitTLSReload(tlsPart)
	e.handler.Store(handler)
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

// needsRestart lists the keys that differ between old and cfg and that only a restart
// applies (see restartOnly), each once.
func needsRestart(old, cfg *config.Config) []string {
	var keys []string
	for _, key := range config.Changed(old, cfg) {
		if k, ok := restartOnly(key); ok && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// restartOnly reports whether a change of key takes effect only after a restart: it is
// bound to a listener (addresses, the plain-HTTP mode, the server's timeouts and limits,
// the data path) or to work begun at start (ACME orders and renewals). It returns the key
// to name: the key itself, or the block that needs the restart as a whole (tls.acme for
// tls.acme.email). Every other key is applied by Reload, or by the caller for log.format
// (see the README's Reload table).
func restartOnly(key string) (string, bool) {
	for _, k := range []string{
		"listen.https", "listen.http", "listen.http_mode", "listen.metrics",
		"limits.read_header_timeout", "limits.idle_timeout", "limits.max_header_bytes", "limits.max_connections",
		"proxy.fast_path",
		"tls.acme",
	} {
		if key == k || strings.HasPrefix(key, k+".") {
			return k, true
		}
	}
	return "", false
}

// drain waits until a removed target has no request in flight, or its deregistration delay
// is over (then cancels what still runs), and forgets it.
func (e *Edge) drain(ctx context.Context, t *balancer.Target, delay time.Duration, upstream *proxy.Upstream) {
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
