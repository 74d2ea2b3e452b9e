package doctor

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// fakeCA serves an ACME directory over HTTPS: with renewal information and Let's
// Encrypt's three profiles, or (bare) with neither. It returns the directory URL and a
// ca_roots file trusting it.
func fakeCA(t *testing.T, bare bool) (dirURL, rootsFile string) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if bare {
			fmt.Fprintf(w, `{"newOrder": "https://%s/new-order"}`, r.Host)
			return
		}
		fmt.Fprintf(w, `{"newOrder": "https://%s/new-order", "renewalInfo": "https://%s/ari",
			"meta": {"profiles": {"classic": "90 days", "tlsserver": "45 days", "shortlived": "6 days"}}}`, r.Host, r.Host)
	}))
	t.Cleanup(srv.Close)
	rootsFile = filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(rootsFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL + "/dir", rootsFile
}

func acmeConfigYAML(dirURL, roots, profile string) string {
	return fmt.Sprintf(`
tls:
  acme:
    domains: [app.test]
    directory: %q
    ca_roots: %q
    profile: %q
pool:
  targets: ["127.0.0.1:8000"]
`, dirURL, roots, profile)
}

// The directory line says what the CA offers, and fails a profile it does not offer,
// listing those it does; validate's check says the same, at the profile's line.
func TestCheckDirectory_ProfilesAndARI(t *testing.T) {
	full, fullRoots := fakeCA(t, false)
	bare, bareRoots := fakeCA(t, true)
	tests := []struct {
		name, dir, roots, profile string
		want                      Status
		detail                    string
	}{
		{"default profile", full, fullRoots, "", OK, "answers; renewal information (ARI): renewals follow the CA's windows; profiles: classic, shortlived, tlsserver"},
		{"offered profile", full, fullRoots, "shortlived", OK, "profiles: classic"},
		{"unknown profile", full, fullRoots, "short", Fail, `tls.acme.profile: the CA at ` + full + ` offers no profile "short"; it offers: classic, shortlived, tlsserver`},
		{"no ARI, no profiles", bare, bareRoots, "", OK, "no renewal information (ARI): renewals when a third of the lifetime remains"},
		{"profile without profiles", bare, bareRoots, "classic", Fail, "offers no profiles: leave tls.acme.profile empty"},
	}
	d, _ := New(Options{ConfigFile: "c.yaml"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := parseConfig(t, acmeConfigYAML(tt.dir, tt.roots, tt.profile))
			if r := d.checkDirectory(context.Background(), d.newSite(cfg)); r.Status != tt.want || !strings.Contains(r.Detail, tt.detail) {
				t.Errorf("got %v %q; want %v with %q", r.Status, r.Detail, tt.want, tt.detail)
			}
			p := CheckACMEProfile(context.Background(), cfg)
			if (p != nil) != (tt.want == Fail) || p != nil && (p.Warning || p.Pos.Line != 7 || !strings.Contains(p.Message, tt.detail)) {
				t.Errorf("CheckACMEProfile = %+v; want an error at line 7 with %q: %v", p, tt.detail, tt.want == Fail)
			}
		})
	}
	// A CA that cannot be asked: a warning, not an error.
	cfg := parseConfig(t, acmeConfigYAML("https://127.0.0.1:1/dir", fullRoots, "shortlived"))
	if p := CheckACMEProfile(context.Background(), cfg); p == nil || !p.Warning || !strings.Contains(p.Message, `tls.acme.profile "shortlived" not checked`) {
		t.Errorf("unreachable CA: %+v; want a warning", p)
	}
}

// An address of tls.acme.ip_addresses must be this host's: an interface's, or the public
// IP given.
func TestCheckIP(t *testing.T) {
	ip := netip.MustParseAddr
	tests := []struct {
		addr, public string
		want         Status
		detail       string
	}{
		{"10.0.0.5", "", OK, "is this host's"},
		{"127.0.0.1", "", OK, "is this host's"},
		{"203.0.113.7", "203.0.113.7", OK, "is this host's"},
		{"203.0.113.7", "", Warn, "On EC2 the public (Elastic) IP is NATed"},
		{"203.0.113.8", "203.0.113.7", Fail, "is not this host's public IP 203.0.113.7"},
	}
	for _, tt := range tests {
		opts := Options{ConfigFile: "c.yaml", interfaceAddrs: func() ([]netip.Addr, error) { return []netip.Addr{ip("10.0.0.5")}, nil }}
		if tt.public != "" {
			opts.PublicIP = ip(tt.public)
		}
		d, _ := New(opts)
		if r := d.checkIP(ip(tt.addr)); r.Status != tt.want || !strings.Contains(r.Detail, tt.detail) || r.Check != "ip:"+tt.addr {
			t.Errorf("%s (public %q): got %v %s %q; want %v with %q", tt.addr, tt.public, r.Status, r.Check, r.Detail, tt.want, tt.detail)
		}
	}
}

// A site served to the network with only the self-signed certificate is told about
// IP-address certificates, with the public IP filled in; a site with certificates, or on
// loopback, is not.
func TestNoDomainHint(t *testing.T) {
	d, _ := New(Options{ConfigFile: "c.yaml", PublicIP: netip.MustParseAddr("203.0.113.7")})
	self := parseConfig(t, "tls: {self_signed: true}\npool:\n  targets: [\"127.0.0.1:8000\"]\n")
	r := d.noDomainHint(d.newSite(self))
	if r == nil || r.Status != Warn || !strings.Contains(r.Detail, "tls.acme: {ip_addresses: [203.0.113.7], profile: shortlived}") {
		t.Errorf("self-signed: %+v; want the IP-address certificate hint", r)
	}
	for name, yaml := range map[string]string{
		"with ACME":   "tls:\n  acme: {ip_addresses: [203.0.113.7], profile: shortlived}\npool:\n  targets: [\"127.0.0.1:8000\"]\n",
		"on loopback": "listen: {https: \"127.0.0.1:8443\"}\ntls: {self_signed: true}\npool:\n  targets: [\"127.0.0.1:8000\"]\n",
	} {
		if r := d.noDomainHint(d.newSite(parseConfig(t, yaml))); r != nil {
			t.Errorf("%s: %+v; want no hint", name, r)
		}
	}
}

// A domain that does not resolve fails its dns: check, which tells a user without a
// domain yet that an IP-address certificate needs none.
func TestCheckDNS_UnresolvedNameHintsIPCertificates(t *testing.T) {
	d, err := New(Options{ConfigFile: "c.yaml", Resolver: testutil.DeadAddr(t), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r := d.checkDNS(context.Background(), "www.example.invalid")
	if r.Status != Fail || !strings.Contains(r.Detail, "does not resolve") || !strings.Contains(r.Detail, "No domain yet? tls.acme.ip_addresses") {
		t.Errorf("unresolved name: %+v; want a failure with the IP-address certificate hint", r)
	}
}
