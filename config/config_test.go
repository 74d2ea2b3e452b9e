package config

import (
	"edgeproxy/internal/testutil"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("got error %v (%T); want *config.Error", err, err)
	}
	var out []string
	for _, p := range cerr.Problems {
		out = append(out, p.String())
	}
	return out
}

const minimal = `
tls:
  self_signed: true
pool:
  targets: ["127.0.0.1:8000"]
`

func TestParse_Defaults(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	hc := cfg.Pool.HealthCheck
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen.https", cfg.Listen.HTTPS, ":443"},
		{"listen.http_mode", cfg.Listen.HTTPMode, "redirect"},
		{"listen.h2c", cfg.Listen.H2C, false},
		{"tls.min_version", cfg.TLS.MinVersion, "1.2"},
		{"path", hc.Path, "/"},
		{"interval", hc.Interval, 30 * time.Second},
		{"timeout", hc.Timeout, 5 * time.Second},
		{"healthy_threshold", hc.HealthyThreshold, 5},
		{"unhealthy_threshold", hc.UnhealthyThreshold, 2},
		{"matcher", hc.Matcher.String(), "200-399"},
		{"connect_timeout", cfg.Pool.ConnectTimeout, 5 * time.Second},
		{"response_header_timeout", cfg.Pool.ResponseHeaderTimeout, 60 * time.Second},
		{"read_header_timeout", cfg.Limits.ReadHeaderTimeout, 10 * time.Second},
		{"idle_timeout", cfg.Limits.IdleTimeout, 120 * time.Second},
		{"max_header_bytes", cfg.Limits.MaxHeaderBytes, 65536},
		{"max_connections", cfg.Limits.MaxConnections, 10000},
		{"shutdown_timeout", cfg.Limits.ShutdownTimeout, 30 * time.Second},
		{"log.format", cfg.Log.Format, "text"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v; want %v", c.name, c.got, c.want)
		}
	}
}

// The timeout defaults to min(5s, interval), as an ALB's does, so a fast interval alone is
// a valid configuration.
func TestParse_TimeoutDefaultsToIntervalWhenShorter(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(minimal+"  health_check: {interval: 2s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Pool.HealthCheck.Timeout; got != 2*time.Second {
		t.Errorf("timeout: got %v; want 2s", got)
	}
}

func TestParse_Errors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // every problem, in order
	}{
		{
			name: "unknown key",
			yaml: "tls:\n  self_signed: true\n  selfsigned: true\npool:\n  targets: [\"127.0.0.1:80\"]\n",
			want: []string{`c.yaml:3:3: unknown key "selfsigned" in tls (known keys: acme, certificates, min_version, self_signed, tls_cost)`},
		},
		{
			name: "wrong types and bad duration, all at once",
			yaml: "tls: {self_signed: yes please}\npool:\n  targets: 127.0.0.1:80\n  health_check:\n    interval: 10\n    healthy_threshold: five\n",
			want: []string{
				`c.yaml:1:20: tls.self_signed: want true or false, got "yes please"`,
				`c.yaml:3:12: pool.targets: want a list, got "127.0.0.1:80"`,
				`c.yaml:5:15: pool.health_check.interval: "10" is not a duration (use a unit, e.g. 500ms, 30s, 5m)`,
				`c.yaml:6:24: pool.health_check.healthy_threshold: want an integer, got "five"`,
			},
		},
		{
			name: "empty pool",
			yaml: "tls: {self_signed: true}\npool:\n  targets: []\n",
			want: []string{`c.yaml:3:12: pool.targets is empty: list at least one backend as host:port`},
		},
		{
			name: "empty pool, key missing",
			yaml: "tls: {self_signed: true}\n",
			want: []string{`c.yaml:1:1: pool.targets is empty: list at least one backend as host:port`},
		},
		{
			name: "bad addresses",
			yaml: "listen:\n  https: \"443\"\n  metrics: \"127.0.0.1:99999\"\ntls: {self_signed: true}\npool:\n  targets:\n    - 127.0.0.1\n    - \"10.0.0.1:0\"\n    - \"bad host:80\"\n    - 127.0.0.1:8000\n    - 127.0.0.1:8000\n",
			want: []string{
				`c.yaml:2:10: listen.https: "443" is not host:port (missing port in address)`,
				`c.yaml:3:12: listen.metrics: "127.0.0.1:99999": port "99999" is not a number 0-65535`,
				`c.yaml:7:7: pool.targets: "127.0.0.1" is not host:port (missing port in address)`,
				`c.yaml:8:7: pool.targets: "10.0.0.1:0": port "0" is not a number 1-65535`,
				`c.yaml:9:7: pool.targets: "bad host:80": "bad host" is neither an IP address nor a DNS name`,
				`c.yaml:11:7: pool.targets: "127.0.0.1:8000" is listed twice (also at index 3)`,
			},
		},
		{
			name: "health check ranges",
			yaml: "tls: {self_signed: true}\npool:\n  targets: [\"127.0.0.1:80\"]\n  health_check:\n    path: admin\n    interval: 50ms\n    timeout: 1s\n    healthy_threshold: 0\n    unhealthy_threshold: 11\n    matcher: \"200-99x\"\n",
			want: []string{
				`c.yaml:5:11: pool.health_check.path must start with /, got "admin"`,
				`c.yaml:6:15: pool.health_check.interval must be at least 100ms, got 50ms`,
				`c.yaml:7:14: pool.health_check.timeout 1s exceeds interval 50ms`,
				`c.yaml:8:24: pool.health_check.healthy_threshold must be 1..10, got 0`,
				`c.yaml:9:26: pool.health_check.unhealthy_threshold must be 1..10, got 11`,
				`c.yaml:10:14: pool.health_check.matcher: "99x" is not a status code (want three digits such as 200)`,
			},
		},
		{
			name: "no certificate source",
			yaml: "pool:\n  targets: [\"127.0.0.1:80\"]\n",
			want: []string{`c.yaml:1:1: no certificate source: set tls.certificates, tls.self_signed or tls.acme`},
		},
		{
			name: "enums and limits",
			yaml: "listen: {http_mode: tunnel}\ntls: {self_signed: true, min_version: \"1.1\"}\npool: {targets: [\"127.0.0.1:80\"]}\nlimits: {max_header_bytes: 10, max_connections: 0}\nlog: {format: xml}\n",
			want: []string{
				`c.yaml:1:21: listen.http_mode must be redirect or proxy, got "tunnel"`,
				`c.yaml:2:39: tls.min_version must be "1.2" or "1.3", got "1.1"`,
				`c.yaml:4:28: limits.max_header_bytes must be 4096..1048576, got 10`,
				`c.yaml:4:49: limits.max_connections must be at least 1, got 0`,
				`c.yaml:5:15: log.format must be text or json, got "xml"`,
			},
		},
		{
			name: "h2c without a proxying plain listener",
			yaml: "listen: {http: \":80\", h2c: true}\n" + minimal,
			want: []string{`c.yaml:1:28: listen.h2c needs listen.http with http_mode: proxy: HTTP/2 in clear is served only where plain HTTP is proxied`},
		},
		{
			name: "h2c without a plain listener",
			yaml: "listen: {http_mode: proxy, h2c: true}\n" + minimal,
			want: []string{`c.yaml:1:33: listen.h2c needs listen.http with http_mode: proxy: HTTP/2 in clear is served only where plain HTTP is proxied`},
		},
		{
			name: "yaml syntax",
			yaml: "pool:\n  targets: [\n",
			want: []string{`c.yaml:2:1: invalid YAML: did not find expected node content`},
		},
		{
			name: "repeated key",
			yaml: "tls: {self_signed: true}\npool:\n  targets: [\"127.0.0.1:80\"]\n  targets: [\"127.0.0.1:81\"]\n",
			want: []string{`c.yaml:4:3: key "targets" repeated in pool`},
		},
		{
			name: "trusted proxies",
			yaml: "tls: {self_signed: true}\npool: {targets: [\"127.0.0.1:80\"]}\nforwarding:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, nonsense]\n",
			want: []string{
				`c.yaml:4:33: forwarding.trusted_proxies: "10.0.0.0/33" is not a CIDR such as 10.0.0.0/8`,
				`c.yaml:4:46: forwarding.trusted_proxies: "nonsense" is not an IP address or CIDR`,
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

func TestParse_MetricsOnPublicAddressWarns(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("listen: {metrics: \"0.0.0.0:9180\"}\n"+minimal))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || !strings.HasPrefix(cfg.Warnings[0].String(), "c.yaml:1:19: warning: listen.metrics") {
		t.Errorf("got warnings %v; want one about listen.metrics at 1:19", cfg.Warnings)
	}
}

func writeCert(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, _ = testutil.CertFiles(t, dir, name)
	return certFile, keyFile
}

func TestLoad_CertificateFiles(t *testing.T) {
	dir := t.TempDir()
	aCert, aKey := writeCert(t, dir, "a.test")
	_, bKey := writeCert(t, dir, "b.test")
	yaml := "tls:\n  certificates:\n" +
		"    - {cert: " + aCert + ", key: " + aKey + "}\n" +
		"    - {cert: " + aCert + ", key: " + bKey + "}\n" +
		"    - {cert: " + filepath.Join(dir, "missing.crt") + ", key: " + aKey + "}\n" +
		"pool: {targets: [\"127.0.0.1:80\"]}\n"
	file := filepath.Join(dir, "edge.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	got := problemsOf(t, func() error { _, err := Load(file); return err }())
	want := []string{
		file + ":4:14: tls.certificates[1]: key " + bKey + " does not match cert " + aCert,
		file + ":5:14: tls.certificates[2]: cannot read cert: " + filepath.Join(dir, "missing.crt") + ": no such file or directory",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The same file passes a syntax-only check, which does not look at the machine.
	if _, err := LoadSyntax(file); err != nil {
		t.Errorf("LoadSyntax: %v", err)
	}
}

func TestParseMatcher(t *testing.T) {
	tests := []struct {
		in      string
		match   []int
		nomatch []int
		err     bool
	}{
		{in: "200", match: []int{200}, nomatch: []int{201, 302}},
		{in: "200,302", match: []int{200, 302}, nomatch: []int{301, 400}},
		{in: "200-399", match: []int{200, 302, 399}, nomatch: []int{199, 400}},
		{in: " 200 , 300-301 ", match: []int{200, 300, 301}, nomatch: []int{302}},
		{in: "", err: true},
		{in: "399-200", err: true},
		{in: "600", err: true},
		{in: "2000", err: true},
		{in: "200,", err: true},
		{in: "abc", err: true},
		{in: "-200", err: true},
	}
	for _, tt := range tests {
		m, err := ParseMatcher(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("ParseMatcher(%q): err %v; want error %v", tt.in, err, tt.err)
			continue
		}
		for _, c := range tt.match {
			if !m.Match(c) {
				t.Errorf("%q.Match(%d) = false; want true", tt.in, c)
			}
		}
		for _, c := range tt.nomatch {
			if m.Match(c) {
				t.Errorf("%q.Match(%d) = true; want false", tt.in, c)
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("listen: {https: ':0', http: ':80', metrics: '127.0.0.1:9180'}\npool: {targets: [a:1], health_check: {interval: 1s, matcher: '200,302'}}\n"))
	f.Add([]byte("a: &x [1, *x]\n"))
	f.Add([]byte("pool: [1, {a: b}]\ntls: {certificates: [{cert: 1}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.yaml", data)
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
		var cerr *Error
		if err != nil && !errors.As(err, &cerr) {
			t.Fatalf("error of type %T: %v", err, err)
		}
		if cerr != nil && len(cerr.Problems) == 0 {
			t.Fatal("config.Error without problems")
		}
	})
}

func FuzzParseMatcher(f *testing.F) {
	for _, s := range []string{"200", "200-399", "200,302", "1-2", ",", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMatcher(s)
		if err != nil {
			return
		}
		for code := 0; code < 700; code++ {
			if m.Match(code) && (code < 100 || code > 599) {
				t.Fatalf("%q matches out-of-range code %d", s, code)
			}
		}
	})
}
