package edge

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"edgeproxy/config"
)

// reloadBase is the configuration each row of TestReload_KeysAppliedOrNeedingRestart
// changes, one section at a time.
var reloadBase = map[string]string{
	"listen":      `{https: "127.0.0.1:8443"}`,
	"tls":         `{self_signed: true}`,
	"pool":        `{targets: ["127.0.0.1:8000"]}`,
	"limits":      `{}`,
	"forwarding":  `{}`,
	"headers":     `{}`,
	"log":         `{}`,
	"proxy":       `{}`,
	"passthrough": `[]`,
}

// reloadYAML is reloadBase with each section of overrides (section, value pairs) set to
// its value; the value "" leaves the section out.
func reloadYAML(t *testing.T, overrides ...string) *config.Config {
	t.Helper()
	sections := maps.Clone(reloadBase)
	for i := 0; i+1 < len(overrides); i += 2 {
		sections[overrides[i]] = overrides[i+1]
	}
	var b strings.Builder
	for _, s := range []string{"listen", "tls", "pool", "pools", "routes", "limits", "forwarding", "headers", "log", "proxy", "passthrough"} {
		if v := sections[s]; v != "" {
			b.WriteString(s + ": " + v + "\n")
		}
	}
	cfg, err := config.Parse("edge.yaml", []byte(b.String()))
	if err != nil {
		t.Fatalf("%v: %v", overrides, err)
	}
	return cfg
}

// Each key a reload may change, and whether the reload applies it or logs that it needs
// a restart. The README's Reload table is this one.
func TestReload_KeysAppliedOrNeedingRestart(t *testing.T) {
	const applied, restart = false, true
	for _, tt := range []struct {
		key, section, value string
		restart             bool
	}{
		{"listen.https", "listen", `{https: "127.0.0.1:9443"}`, restart},
		{"listen.http", "listen", `{https: "127.0.0.1:8443", http: "127.0.0.1:8080"}`, restart},
		{"listen.http_mode", "listen", `{https: "127.0.0.1:8443", http_mode: proxy}`, restart},
		{"listen.h2c", "listen", `{https: "127.0.0.1:8443", http: "127.0.0.1:8080", http_mode: proxy, h2c: true}`, restart},
		{"listen.metrics", "listen", `{https: "127.0.0.1:8443", metrics: "127.0.0.1:9180"}`, restart},
		{"tls.min_version", "tls", `{self_signed: true, min_version: "1.3"}`, applied},
		{"tls.tls_cost", "tls", `{self_signed: true, tls_cost: false}`, applied},
		{"tls.certificates", "tls", `{self_signed: true, certificates: [{cert: a.crt, key: a.key}]}`, applied},
		{"tls.self_signed", "tls", `{certificates: [{cert: a.crt, key: a.key}]}`, applied},
		{"tls.acme", "tls", `{acme: {domains: [www.example.com], cache_dir: /var/lib/edgeproxy/acme}}`, restart}, // the block as a whole
		{"pool.targets", "pool", `{targets: ["127.0.0.1:8001"]}`, applied},
		{"pool.health_check.interval", "pool", `{targets: ["127.0.0.1:8000"], health_check: {interval: 5s}}`, applied},
		{"pool.connect_timeout", "pool", `{targets: ["127.0.0.1:8000"], connect_timeout: 1s}`, applied},
		{"pool.response_header_timeout", "pool", `{targets: ["127.0.0.1:8000"], response_header_timeout: 1s}`, applied},
		{"pool.deregistration_delay", "pool", `{targets: ["127.0.0.1:8000"], deregistration_delay: 1s}`, applied},
		{"pool.passive.consecutive_failures", "pool", `{targets: ["127.0.0.1:8000"], passive: {consecutive_failures: 0}}`, applied},
		{"pool.retries", "pool", `{targets: ["127.0.0.1:8000"], retries: 0}`, applied},
		{"pool.tls", "pool", `{targets: ["127.0.0.1:8000"], tls: {server_name: app.test}}`, applied},
		{"limits.read_header_timeout", "limits", `{read_header_timeout: 5s}`, restart},
		{"limits.idle_timeout", "limits", `{idle_timeout: 1m}`, restart},
		{"limits.max_header_bytes", "limits", `{max_header_bytes: 8192}`, restart},
		{"limits.max_connections", "limits", `{max_connections: 10}`, restart},
		{"limits.max_body_bytes", "limits", `{max_body_bytes: 1024}`, applied},
		{"limits.shutdown_timeout", "limits", `{shutdown_timeout: 5s}`, applied},
		{"forwarding.trusted_proxies", "forwarding", `{trusted_proxies: [10.0.0.0/8]}`, applied},
		{"headers.hsts", "headers", `{hsts: "max-age=60"}`, applied},
		{"headers.upgrade_insecure_requests", "headers", `{upgrade_insecure_requests: true}`, applied},
		{"headers.mixed_content_report", "headers", `{mixed_content_report: true}`, applied},
		{"headers.mixed_content_sample", "headers", `{mixed_content_sample: 2}`, applied},
		{"log.format", "log", `{format: json}`, applied}, // by cmd/edgeproxy, which owns the handler
		{"log.access", "log", `{access: true}`, applied},
		{"proxy.fast_path", "proxy", `{fast_path: false}`, restart},
		// Applied when the edge started with passthrough entries; an edge started without
		// any logs that adding them needs a restart (reloadPassthrough).
		{"passthrough", "passthrough", `[{server_names: [db.example.com], targets: ["127.0.0.1:5432"]}]`, applied},
	} {
		t.Run(tt.key, func(t *testing.T) {
			checkReloadKey(t, tt.key, reloadYAML(t), reloadYAML(t, tt.section, tt.value), tt.restart)
		})
	}
	// Named pools and routes replace the pool block: their rows start from two pools.
	named := []string{"pool", "", "pools", `{web: {targets: ["127.0.0.1:8000"]}, api: {targets: ["127.0.0.1:8001"]}}`,
		"routes", `[{path_prefix: /api/, pool: api}, {pool: web}]`}
	for _, tt := range []struct{ key, value string }{
		{"pools", `{web: {targets: ["127.0.0.1:8000"]}, api: {targets: ["127.0.0.1:8002"], balance: least_outstanding_requests}}`},
		{"routes", `[{hosts: [api.example.com], pool: api}, {pool: web}]`},
	} {
		t.Run(tt.key, func(t *testing.T) {
			checkReloadKey(t, tt.key, reloadYAML(t, named...), reloadYAML(t, append(slices.Clone(named), tt.key, tt.value)...), applied)
		})
	}
}

// checkReloadKey checks that the reload from old to cfg changes key, and that needsRestart
// names it if and only if restart.
func checkReloadKey(t *testing.T, key string, old, cfg *config.Config, restart bool) {
	t.Helper()
	if changed := config.Changed(old, cfg); !slices.ContainsFunc(changed, func(k string) bool { return k == key || strings.HasPrefix(k, key+".") }) {
		t.Fatalf("the row changes %v, not %s", changed, key)
	}
	got := needsRestart(old, cfg)
	if restart && !slices.Contains(got, key) {
		t.Errorf("needs restart: %v; want %s among them", got, key)
	}
	if !restart && len(got) > 0 {
		t.Errorf("needs restart: %v; want none (%s is applied on reload)", got, key)
	}
}
