package config

import (
	"crypto/tls"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Parse hands over the values the file alone determines already parsed: the TLS version
// as crypto/tls's constant, the trusted proxies as prefixes, the enums as types.
func TestParse_ResolvesTypedValues(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`
pool: {targets: ["127.0.0.1:8000"]}
listen: {http: ":80", http_mode: proxy}
tls: {self_signed: true, min_version: "1.3"}
forwarding: {trusted_proxies: ["10.0.0.0/8", "192.0.2.7", "::ffff:10.1.2.3"]}
log: {format: json}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resolved
	if r.MinVersion != tls.VersionTLS13 || r.HTTPMode != HTTPProxy || r.LogFormat != LogJSON {
		t.Errorf("min version %x, http mode %v, log format %v; want TLS 1.3, proxy, json", r.MinVersion, r.HTTPMode, r.LogFormat)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("10.1.2.3/32")}
	if !slices.Equal(r.TrustedProxies, want) {
		t.Errorf("trusted proxies %v; want %v", r.TrustedProxies, want)
	}

	def, err := Parse("c.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if r := def.Resolved; r.MinVersion != tls.VersionTLS12 || r.HTTPMode != HTTPRedirect || r.LogFormat != LogText || r.TrustedProxies != nil {
		t.Errorf("defaults resolved to %+v; want TLS 1.2, redirect, text, no trusted proxies", r)
	}
}

// Load hands over the files the configuration names already loaded: certificates with their
// leaves, the CA files as pools. A syntax-only load opens none of them.
func TestLoad_ResolvesFiles(t *testing.T) {
	dir := t.TempDir()
	aCert, aKey := writeCert(t, dir, "a.test")
	caCert, _ := writeCert(t, dir, "ca.test")
	yaml := "tls:\n  certificates:\n    - {cert: " + aCert + ", key: " + aKey + "}\n" +
		"  acme: {domains: [www.example.com], ca_roots: " + caCert + ", cache_dir: " + filepath.Join(dir, "acme") + "}\n" +
		"pool:\n  targets: [\"127.0.0.1:80\"]\n  tls: {ca: " + caCert + "}\n"
	file := filepath.Join(dir, "edge.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Resolved
	if !r.FilesLoaded || len(r.Certificates) != 1 || r.ACMERoots == nil || r.UpstreamRoots == nil {
		t.Fatalf("resolved %+v; want files loaded, one certificate and both CA pools", r)
	}
	lc := r.Certificates[0]
	if lc.Files.Cert != aCert || lc.Certificate.Leaf == nil || lc.Certificate.Leaf.DNSNames[0] != "a.test" {
		t.Errorf("certificate %+v; want a.test from %s with its leaf", lc.Files, aCert)
	}
	if got := r.TLSCertificates(); len(got) != 1 || got[0].Leaf != lc.Certificate.Leaf {
		t.Errorf("TLSCertificates = %v", got)
	}

	// The same configuration with every file gone still passes a syntax-only load, which
	// resolves no file.
	for _, f := range []string{aCert, aKey, caCert} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	syn, err := LoadSyntax(file)
	if err != nil {
		t.Fatal(err)
	}
	if r := syn.Resolved; r.FilesLoaded || r.Certificates != nil || r.ACMERoots != nil || r.UpstreamRoots != nil {
		t.Errorf("syntax-only load resolved files: %+v", r)
	}
	if !syn.NeedsFiles() {
		t.Error("NeedsFiles = false for a configuration naming certificate and CA files")
	}
}
