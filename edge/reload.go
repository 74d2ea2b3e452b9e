package edge

import (
	"fmt"
	"reflect"
	"slices"

	"edgeproxy/certs"
	"edgeproxy/config"
)

// Reload applies a new configuration without closing a listener or failing a request:
// targets, health-check settings, certificates and the proxy's settings change in place.
// Targets that stay keep their state (health, passive ejection, place in the rotation);
// new ones are probed at once and join after their first pass; removed ones get no new
// requests and drain within pool.deregistration_delay (see package pool). Settings that
// belong to a bound listener (listen addresses, server timeouts and limits) need a
// restart: they are kept, with a warning.
//
// Everything new is built first and committed only once all of it built: on error
// nothing has changed.
func (e *Edge) Reload(cfg *config.Config) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	old := e.cfg

	// Build. Nothing here changes what serves.
	var src *certs.Source // nil: the certificates stay
	if !reflect.DeepEqual(old.TLS, cfg.TLS) {
		var err error
		if src, err = e.newCertSource(cfg); err != nil {
			return fmt.Errorf("edge: reload: %w", err)
		}
	}
	upTLS, err := e.upstreamTLS(cfg)
	if err != nil {
		return fmt.Errorf("edge: reload: %w", err)
	}
	upstream := e.upstreamFor(cfg, upTLS)
	backend := e.newBackend(cfg, upstream)
	if e.beforeCommit != nil {
		if err := e.beforeCommit(); err != nil {
			return fmt.Errorf("edge: reload: %w", err)
		}
	}

	// Commit.
	if !reflect.DeepEqual(old.Listen, cfg.Listen) {
		e.log.Warn("reload: listen addresses changed; they take effect only after a restart")
	}
	if old.Proxy != cfg.Proxy {
		e.log.Warn("reload: proxy.fast_path changed; it takes effect only after a restart")
	}
	if limitsNeedRestart(old.Limits, cfg.Limits) {
		e.log.Warn("reload: server limits (timeouts, header size, connections) changed; they take effect only after a restart")
	}
	if src != nil {
		e.certSrc.Store(src)
	}
	e.setUpstream(upstream)
	e.pool.Update(poolConfig(cfg, upTLS))
	e.reloadPassthrough(cfg)
	e.backend.Store(backend)
	e.cfg = cfg

	var added, removed []string
	for _, a := range cfg.Pool.Targets {
		if !slices.Contains(old.Pool.Targets, a) {
			added = append(added, a)
		}
	}
	for _, a := range old.Pool.Targets {
		if !slices.Contains(cfg.Pool.Targets, a) {
			removed = append(removed, a)
		}
	}
	e.log.Info("reloaded configuration", "targets", cfg.Pool.Targets, "added", added, "removed", removed)
	return nil
}

// setUpstream makes u the upstream in use. One it replaces keeps the connections of
// requests in flight (a drain may still break some, see retireTarget); its idle ones go.
func (e *Edge) setUpstream(u *upstream) {
	e.upstreamMu.Lock()
	old := e.upstream
	if u != old {
		e.upstream, e.prevUpstream = u, old
	}
	e.upstreamMu.Unlock()
	if u != old && old != nil {
		old.CloseIdle()
	}
}

func limitsNeedRestart(a, b config.Limits) bool {
	a.MaxBodyBytes, b.MaxBodyBytes = 0, 0 // applied by the proxy, reloadable
	a.ShutdownTimeout, b.ShutdownTimeout = 0, 0
	return a != b
}
