package edge

import (
	"fmt"
	"slices"
	"strings"

	"edgeproxy/config"
)

// Reload applies a new configuration without closing a listener or failing a request:
// targets, health-check settings, certificates, the TLS settings (tls.min_version,
// tls.tls_cost: for the handshakes that follow) and the proxy's settings change in place.
// Targets that stay keep their state (health, passive ejection, place in the rotation);
// new ones are probed at once and join after their first pass; removed ones get no new
// requests and drain within pool.deregistration_delay (see package pool). Settings that
// belong to a bound listener or to start-up (see restartOnly) are kept, with a warning
// naming each key changed. log.format is the caller's: it owns the log handler.
//
// Everything new is built first and committed only once all of it built: on error
// nothing has changed.
func (e *Edge) Reload(cfg *config.Config) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	old := e.cfg.Load()

	// Build. Nothing here changes what serves.
	if err := checkResolved(cfg); err != nil {
		return err
	}
	tlsPart, err := e.prepareTLSReload(old, cfg)
	if err != nil {
		return fmt.Errorf("edge: reload: %w", err)
	}
	plans := e.planPools(cfg)
	backend := e.newBackend(cfg, plans)
	if e.beforeCommit != nil {
		if err := e.beforeCommit(); err != nil {
			return fmt.Errorf("edge: reload: %w", err)
		}
	}

	// Commit.
	for _, key := range needsRestart(old, cfg) {
		e.log.Warn("reload: "+key+" changed; it takes effect only after a restart", "key", key)
	}
	e.commitTLSReload(tlsPart)
	e.commitPools(plans)
	e.reloadPassthrough(cfg)
	e.backend.Store(backend)
	e.cfg.Store(cfg)

	was, now := targetsByPool(old), targetsByPool(cfg)
	var added, removed []string
	for _, a := range now {
		if !slices.Contains(was, a) {
			added = append(added, a)
		}
	}
	for _, a := range was {
		if !slices.Contains(now, a) {
			removed = append(removed, a)
		}
	}
	e.log.Info("reloaded configuration", "targets", now, "added", added, "removed", removed)
	return nil
}

// targetsByPool lists cfg's targets as "POOL/ADDR", pool by pool, so that the reload's log
// line says what changed in every pool.
func targetsByPool(cfg *config.Config) []string {
	var out []string
	for _, p := range cfg.Resolved.Pools {
		for _, a := range p.Targets {
			out = append(out, p.Name+"/"+a)
		}
	}
	return out
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
		"listen.https", "listen.http", "listen.http_mode", "listen.h2c", "listen.metrics",
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
