package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const acmePool = "pool: {targets: [\"127.0.0.1:8000\"]}\n"

func TestParse_Acme(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(acmePool+`
tls:
  acme:
    domains: [www.example.com, Example.org.]
    email: ops@example.com
    cache_dir: /var/lib/edgeproxy/acme
    renew_before: 720h
`))
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.TLS.ACME
	if !a.Enabled() {
		t.Fatal("ACME not enabled")
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"domains", strings.Join(a.Domains, ","), "www.example.com,Example.org."},
		{"email", a.Email, "ops@example.com"},
		{"directory", a.Directory, LetsEncryptURL},
		{"cache_dir", a.CacheDir, "/var/lib/edgeproxy/acme"},
		{"renew_before", a.RenewBefore, 720 * time.Hour},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v; want %v", c.name, c.got, c.want)
		}
	}
}

func TestParse_AcmeCacheDirDefault(t *testing.T) {
	yaml := acmePool + "tls: {acme: {domains: [www.example.com]}}\n"
	t.Setenv("STATE_DIRECTORY", "")
	cfg, err := Parse("c.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.TLS.ACME.CacheDir; got != "acme-cache" {
		t.Errorf("without systemd: got cache_dir %q; want %q", got, "acme-cache")
	}
	t.Setenv("STATE_DIRECTORY", "/var/lib/edgeproxy:/var/lib/other")
	if cfg, err = Parse("c.yaml", []byte(yaml)); err != nil {
		t.Fatal(err)
	}
	if got := cfg.TLS.ACME.CacheDir; got != "/var/lib/edgeproxy/acme" {
		t.Errorf("under systemd: got cache_dir %q; want %q", got, "/var/lib/edgeproxy/acme")
	}
}

func TestParse_AcmeErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "domains",
			yaml: acmePool + "tls:\n  acme:\n    domains:\n      - 203.0.113.7\n      - \"*.example.com\"\n      - www.example.com\n      - WWW.example.com\n      - localhost\n      - \"https://a.example.com/\"\n      - \"2001:db8::1\"\n      - \"\"\n",
			want: []string{
				`c.yaml:5:9: tls.acme.domains: "203.0.113.7" is an IP address: list it in tls.acme.ip_addresses`,
				`c.yaml:6:9: tls.acme.domains: "*.example.com" is a wildcard: wildcard certificates need the DNS-01 challenge, which edgeproxy does not answer; list each name`,
				`c.yaml:8:9: tls.acme.domains: "WWW.example.com" is listed twice (also at index 2)`,
				`c.yaml:9:9: tls.acme.domains: "localhost" has a single label: a public CA issues certificates only for names such as www.example.com`,
				`c.yaml:10:9: tls.acme.domains: "https://a.example.com/" is not a DNS name (write the name alone, without scheme, port or path)`,
				`c.yaml:11:9: tls.acme.domains: "2001:db8::1" is an IP address: list it in tls.acme.ip_addresses`,
				`c.yaml:12:9: tls.acme.domains: empty name`,
			},
		},
		{
			name: "with self_signed",
			yaml: acmePool + "tls:\n  self_signed: true\n  acme: {domains: [www.example.com]}\n",
			want: []string{
				`c.yaml:3:16: tls.self_signed and tls.acme cannot both be set: the self-signed certificate would answer names the ACME certificates should (use tls.certificates for other names)`,
			},
		},
		{
			name: "fields",
			yaml: acmePool + "tls:\n  acme:\n    domains: [www.example.com]\n    email: mailto:ops@example.com\n    directory: http://127.0.0.1:14000/dir\n    renew_before: -1h\n",
			want: []string{
				`c.yaml:5:12: tls.acme.email "mailto:ops@example.com" is not an email address such as ops@example.com`,
				`c.yaml:6:16: tls.acme.directory "http://127.0.0.1:14000/dir" is not an https:// URL (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory)`,
				`c.yaml:7:19: tls.acme.renew_before must not be negative, got -1h0m0s (0 = when a third of the lifetime remains)`,
			},
		},
		{
			name: "ip_addresses",
			yaml: acmePool + "tls:\n  acme:\n    ip_addresses: [203.0.113.7, www.example.com, 203.0.113.7, \"fe80::1%eth0\"]\n    profile: shortlived\n",
			want: []string{
				`c.yaml:4:33: tls.acme.ip_addresses: "www.example.com" is not an IP address such as 203.0.113.7 (DNS names go in tls.acme.domains)`,
				`c.yaml:4:50: tls.acme.ip_addresses: 203.0.113.7 is listed twice (also at index 0)`,
				`c.yaml:4:63: tls.acme.ip_addresses: "fe80::1%eth0" is not an IP address such as 203.0.113.7 (DNS names go in tls.acme.domains)`,
			},
		},
		{
			name: "ip_addresses at Let's Encrypt without shortlived",
			yaml: acmePool + "tls:\n  acme:\n    ip_addresses: [203.0.113.7]\n    profile: classic\n",
			want: []string{
				`c.yaml:5:14: tls.acme.ip_addresses needs tls.acme.profile: shortlived: Let's Encrypt issues IP-address certificates only in its six-day profile`,
			},
		},
		{
			name: "profile",
			yaml: acmePool + "tls:\n  acme:\n    domains: [www.example.com]\n    profile: \"short lived\"\n",
			want: []string{
				`c.yaml:5:14: tls.acme.profile "short lived" is not a profile name such as classic, tlsserver or shortlived`,
			},
		},
		{
			name: "no domains",
			yaml: acmePool + "tls:\n  acme:\n    email: ops@example.com\n",
			want: []string{
				`c.yaml:4:5: tls.acme is set but tls.acme.domains and ip_addresses are empty: list the DNS names (or the box's public IP addresses) to obtain certificates for`,
			},
		},
		{
			name: "no https listener",
			yaml: acmePool + "listen: {https: \"\", http: \":80\", http_mode: proxy}\ntls:\n  acme: {domains: [www.example.com]}\n",
			want: []string{
				`c.yaml:4:9: tls.acme needs listen.https: the certificates are for the HTTPS listener`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte(tt.yaml))
			got := problemsOf(t, err)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// The staging CA is for a first try; a config left pointing at it serves certificates no
// browser trusts, so validate says so without failing.
func TestParse_AcmeStagingWarns(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(acmePool+"tls:\n  acme:\n    domains: [www.example.com]\n    directory: "+LetsEncryptStagingURL+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := "c.yaml:5:16: warning: tls.acme.directory is a staging CA: its certificates are not trusted by browsers"
	if len(cfg.Warnings) != 1 || cfg.Warnings[0].String() != want {
		t.Errorf("got warnings %v; want %q", cfg.Warnings, want)
	}
}

func TestCheckEnvironment_Acme(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "roots.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	aFile := filepath.Join(dir, "file")
	if err := os.WriteFile(aFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	openDir := filepath.Join(dir, "open")
	if err := os.Mkdir(openDir, 0o755); err != nil {
		t.Fatal(err)
	}
	privDir := filepath.Join(dir, "private")
	if err := os.Mkdir(privDir, 0o700); err != nil {
		t.Fatal(err)
	}
	goodCert, _ := writeCert(t, dir, "roots")
	tests := []struct {
		name          string
		cacheDir      string
		caRoots       string
		want, warning string
	}{
		{name: "ok, cache dir created later", cacheDir: filepath.Join(dir, "acme"), caRoots: goodCert},
		{
			name:     "missing parent",
			cacheDir: filepath.Join(dir, "missing", "acme"),
			want:     `c.yaml:5:16: tls.acme.cache_dir ` + filepath.Join(dir, "missing", "acme") + `: its parent directory ` + filepath.Join(dir, "missing") + ` does not exist (edgeproxy creates only the last element)`,
		},
		{
			name:     "cache dir is a file",
			cacheDir: aFile,
			want:     `c.yaml:5:16: tls.acme.cache_dir ` + aFile + ` is not a directory`,
		},
		{
			name:     "unreadable ca_roots",
			cacheDir: privDir,
			caRoots:  filepath.Join(dir, "nope.pem"),
			want:     `c.yaml:6:15: tls.acme.ca_roots: cannot read ` + filepath.Join(dir, "nope.pem") + `: no such file or directory`,
		},
		{
			name:     "ca_roots without a certificate",
			cacheDir: privDir,
			caRoots:  notPEM,
			want:     `c.yaml:6:15: tls.acme.ca_roots: ` + notPEM + ` holds no PEM certificate`,
		},
		{
			name:     "cache dir open to others",
			cacheDir: openDir,
			warning:  `c.yaml:5:16: warning: tls.acme.cache_dir ` + openDir + ` has mode 0755: it holds private keys, make it 0700`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			yaml := acmePool + "tls:\n  acme:\n    domains: [www.example.com]\n    cache_dir: " + tt.cacheDir + "\n"
			if tt.caRoots != "" {
				yaml += "    ca_roots: " + tt.caRoots + "\n"
			}
			cfg, err := Parse("c.yaml", []byte(yaml))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range cfg.CheckEnvironment() {
				got = append(got, p.String())
			}
			if strings.Join(got, "\n") != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), tt.want)
			}
			var warnings []string
			for _, w := range cfg.Warnings {
				warnings = append(warnings, w.String())
			}
			if strings.Join(warnings, "\n") != tt.warning {
				t.Errorf("got warnings:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), tt.warning)
			}
		})
	}
}

// ${STATE_DIRECTORY} in cache_dir is expanded like the certificate paths, and reported
// by the environment checks when systemd did not set it.
func TestParse_AcmeCacheDirStateDirectory(t *testing.T) {
	yaml := acmePool + "tls:\n  acme:\n    domains: [www.example.com]\n    cache_dir: ${STATE_DIRECTORY}/acme\n"
	t.Setenv("STATE_DIRECTORY", "/var/lib/edgeproxy")
	cfg, err := Parse("c.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.TLS.ACME.CacheDir; got != "/var/lib/edgeproxy/acme" {
		t.Errorf("got cache_dir %q; want /var/lib/edgeproxy/acme", got)
	}
	t.Setenv("STATE_DIRECTORY", "")
	if cfg, err = Parse("c.yaml", []byte(yaml)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range cfg.CheckEnvironment() {
		got = append(got, p.String())
	}
	want := "c.yaml:5:16: tls.acme.cache_dir: ${STATE_DIRECTORY} is not set (systemd sets it for a unit with StateDirectory=; outside systemd, write the directory's path)"
	if strings.Join(got, "\n") != want {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
}
