package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"edgeproxy/internal/testutil"
)

// validate warns, at the host, about each route host no certificate covers: a static one
// exactly or by wildcard, or an ACME domain. A wildcard route host needs a static
// wildcard certificate, and the warning says why ACME cannot obtain one.
func TestLoad_RouteHostsWithoutCertificateWarn(t *testing.T) {
	dir := t.TempDir()
	aCert, aKey, _ := testutil.CertFiles(t, dir, "a.example.com")
	bCert, bKey, _ := testutil.CertFiles(t, dir, "*.b.example.com")
	base := "listen: {https: \"127.0.0.1:8443\"}\n" +
		"tls:\n  certificates: [{cert: " + aCert + ", key: " + aKey + "}, {cert: " + bCert + ", key: " + bKey + "}]\n"
	routes := "pool: {targets: [\"127.0.0.1:8000\"]}\n" +
		"routes:\n" +
		"  - {hosts: [A.example.com., x.b.example.com, \"*.b.example.com\", c.example.com], pool: pool}\n" +
		"  - {hosts: [\"*.d.example.com\", acme.example.com], pool: pool}\n" +
		"  - {pool: pool}\n"
	for _, tt := range []struct {
		name, tls string
		want      []string
	}{
		{"static", "", []string{
			`:6:66: warning: routes[0].hosts[3]: no certificate in tls.certificates covers c.example.com: add one for it`,
			`:7:14: warning: routes[1].hosts[0]: no certificate in tls.certificates covers *.d.example.com: add a wildcard certificate for it`,
			`:7:33: warning: routes[1].hosts[1]: no certificate in tls.certificates covers acme.example.com`,
		}},
		{"acme", "  acme: {domains: [acme.example.com], cache_dir: " + filepath.Join(dir, "acme") + "}\n", []string{
			`:7:66: warning: routes[0].hosts[3]: no certificate covers c.example.com: add it to tls.acme.domains (edgeproxy orders only the names listed there)`,
			`:8:14: warning: routes[1].hosts[0]: no certificate covers *.d.example.com, and tls.acme cannot obtain one: a wildcard certificate needs the DNS-01 challenge`,
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, tt.name+".yaml")
			if err := os.WriteFile(file, []byte(base+tt.tls+routes), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := Load(file)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range cfg.Warnings {
				if strings.Contains(w.Message, "routes[") {
					got = append(got, w.String())
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("route warnings:\n%s\nwant %d", strings.Join(got, "\n"), len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i], file+w) {
					t.Errorf("warning %d:\n%s\nwant it to begin\n%s", i, got[i], file+w)
				}
			}
		})
	}
}
