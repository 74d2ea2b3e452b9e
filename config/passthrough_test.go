package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse_Passthrough(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(minimal+`passthrough:
  - server_names: [api.example.com, "Legacy.Example.com."]
    targets: ["127.0.0.1:9443", "backend.internal:8443"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Passthrough) != 1 {
		t.Fatalf("got %d passthrough entries; want 1", len(cfg.Passthrough))
	}
	p := cfg.Passthrough[0]
	if got := strings.Join(p.ServerNames, ","); got != "api.example.com,Legacy.Example.com." {
		t.Errorf("server_names: got %q", got)
	}
	if got := strings.Join(p.Targets, ","); got != "127.0.0.1:9443,backend.internal:8443" {
		t.Errorf("targets: got %q", got)
	}
}

func TestParse_PassthroughProblems(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{
			name: "bad names and targets",
			yaml: `passthrough:
  - server_names: ["*.example.com", "10.0.0.1", "https://a.example.com", "a b"]
    targets: ["127.0.0.1", "127.0.0.1:0"]
`,
			want: []string{
				`c.yaml:7:20: passthrough[0].server_names[0]: "*.example.com" is a wildcard: list each name to pass through`,
				`c.yaml:7:37: passthrough[0].server_names[1]: "10.0.0.1" is an IP address: clients send no SNI for an IP, so it cannot be routed by name`,
				`c.yaml:7:49: passthrough[0].server_names[2]: "https://a.example.com" is not a DNS name (write the name alone, without scheme, port or path)`,
				`c.yaml:7:74: passthrough[0].server_names[3]: "a b" is not a DNS name`,
				`c.yaml:8:15: passthrough[0].targets[0]: "127.0.0.1" is not host:port (missing port in address)`,
				`c.yaml:8:28: passthrough[0].targets[1]: "127.0.0.1:0": port "0" is not a number 1-65535`,
			},
		},
		{
			name: "empty lists",
			yaml: "passthrough:\n  - {server_names: [], targets: []}\n",
			want: []string{
				`c.yaml:7:5: passthrough[0]: server_names is empty: list the TLS server names (SNI) to pass through`,
				`c.yaml:7:5: passthrough[0]: targets is empty: list at least one host:port that speaks TLS`,
			},
		},
		{
			name: "a name twice",
			yaml: `passthrough:
  - {server_names: [a.example.com], targets: ["127.0.0.1:1"]}
  - {server_names: [A.example.com.], targets: ["127.0.0.1:2", "127.0.0.1:2"]}
`,
			want: []string{
				`c.yaml:8:21: passthrough[1].server_names[0]: "A.example.com." is listed twice (also at passthrough[0].server_names[0])`,
				`c.yaml:8:63: passthrough[1].targets[1]: "127.0.0.1:2" is listed twice (also at index 0)`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte(minimal+tt.yaml))
			got := problemsOf(t, err)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// A name is terminated or passed through, never both: the ACME certificate for it would
// never be served (and its HTTP-01 order would still be placed).
func TestParse_PassthroughOverlapsACME(t *testing.T) {
	yaml := `tls:
  acme: {domains: [www.example.com, api.example.com]}
pool: {targets: ["127.0.0.1:8000"]}
passthrough:
  - {server_names: [API.example.com], targets: ["127.0.0.1:9443"]}
`
	got := problemsOf(t, func() error { _, err := Parse("c.yaml", []byte(yaml)); return err }())
	want := `c.yaml:5:21: passthrough[0].server_names[0]: "API.example.com" is also in tls.acme.domains: a name is either terminated at the edge or passed through, not both`
	if len(got) != 1 || got[0] != want {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
}

func TestLoad_PassthroughOverlapsStaticCertificate(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir, "api.example.com")
	yaml := "tls:\n  certificates: [{cert: " + cert + ", key: " + key + "}]\n" +
		"pool: {targets: [\"127.0.0.1:80\"]}\n" +
		"passthrough:\n  - {server_names: [other.example.com, api.example.com], targets: [\"127.0.0.1:9443\"]}\n"
	file := filepath.Join(dir, "edge.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	got := problemsOf(t, func() error { _, err := Load(file); return err }())
	want := file + `:5:40: passthrough[0].server_names[1]: "api.example.com" is also a name of tls.certificates[0] (` + cert + `): a name is either terminated at the edge or passed through, not both`
	if len(got) != 1 || got[0] != want {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
	if _, err := LoadSyntax(file); err != nil {
		t.Errorf("LoadSyntax: %v; want no problem (the overlap needs the certificate file)", err)
	}
}
