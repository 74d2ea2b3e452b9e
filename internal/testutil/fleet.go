package testutil

import (
	"fmt"
	"strings"
)

// FleetReplicaConfig is the config of one edgeproxy replica of a fleet (issue 15): its own
// listeners and cache directory, and what every replica shares — the domain list, Pebble,
// Redis, the encryption key file and the backend. The e2e fleet tests and bench/fleet use
// it.
type FleetReplicaConfig struct {
	HTTPS, HTTP, Metrics string // listen.https, listen.http (http_mode: redirect), listen.metrics
	CacheDir             string // tls.acme.cache_dir: the replica's local copy
	Domains              []string
	Pebble               *Pebble
	RedisAddr            string
	KeyFile              string // tls.acme.storage.redis.encryption_key_file
	Target               string // the pool's one target, "host:port"
}

// YAML returns the config file's text.
func (c FleetReplicaConfig) YAML() string {
	return fmt.Sprintf(`listen:
  https: %q
  http: %q
  http_mode: redirect
  metrics: %q
tls:
  acme:
    domains: [%s]
    directory: %q
    ca_roots: %q
    cache_dir: %q
    storage:
      redis:
        addr: %q
        encryption_key_file: %q
pool:
  targets: [%q]
`, c.HTTPS, c.HTTP, c.Metrics, strings.Join(c.Domains, ", "), c.Pebble.DirectoryURL, c.Pebble.CARootsFile,
		c.CacheDir, c.RedisAddr, c.KeyFile, c.Target)
}
