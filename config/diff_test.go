package config

import (
	"slices"
	"testing"
)

// Changed names each key a new configuration changes, lists and optional blocks as one
// key, and nothing for an identical configuration.
func TestChanged_NamesEachKey(t *testing.T) {
	parse := func(yaml string) *Config {
		t.Helper()
		cfg, err := Parse("c.yaml", []byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	old := parse(minimal)
	if got := Changed(old, parse(minimal)); got != nil {
		t.Errorf("identical configurations: changed %v; want none", got)
	}
	next := parse(`
tls: {self_signed: true, min_version: "1.3"}
pool:
  targets: ["127.0.0.1:8000", "127.0.0.1:8001"]
  health_check: {matcher: "200"}
  tls: {server_name: app.test}
limits: {idle_timeout: 1m}
log: {format: json}
`)
	want := []string{"tls.min_version", "pool.targets", "pool.health_check.matcher", "pool.tls", "limits.idle_timeout", "log.format"}
	if got := Changed(old, next); !slices.Equal(got, want) {
		t.Errorf("changed %v; want %v", got, want)
	}
}
