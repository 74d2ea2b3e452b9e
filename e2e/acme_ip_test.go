package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"edgeproxy/certs"
	"edgeproxy/internal/testutil"
)

// An edge with no domain name: tls.acme.ip_addresses [127.0.0.1] in the shortlived
// profile. validate checks the profile against Pebble's directory; the edge obtains a
// six-day certificate for the address and serves it to a client that dials the address
// (no SNI); /certificates lists it with the CA's renewal window and the chosen renewal
// time, which the renewal metric shows too; doctor checks the address and the
// certificate.
func TestAcme_IPAddressCertificate(t *testing.T) {
	t.Parallel()
	s := newACMESite(t, acmeSiteOptions{ip: true})

	if out, code := runValidate(t, s.configFile); code != 0 {
		t.Fatalf("validate: exit %d\n%s", code, out)
	}
	data, err := os.ReadFile(s.configFile)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(data), "profile: shortlived", "profile: classic", 1)
	badFile := s.configFile + ".classic.yaml"
	if err := os.WriteFile(badFile, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := runValidate(t, badFile); code != 1 || !strings.Contains(out, `offers no profile "classic"; it offers: default, shortlived`) {
		t.Errorf("validate with profile classic: exit %d\n%s\nwant 1 and the CA's profiles", code, out)
	}

	p, started := s.start(t)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.roots}}}
	url := "https://" + s.httpsAddr + "/"
	testutil.WaitHTTP(t, url, client, http.StatusOK, 60*time.Second)
	t.Logf("IP-address certificate served %v after edgeproxy started", time.Since(started).Round(time.Millisecond))
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok acme" {
		t.Fatalf("GET %s: %s %q; want Django's page", url, resp.Status, body)
	}
	leaf := resp.TLS.PeerCertificates[0]
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || len(leaf.DNSNames) != 0 {
		t.Errorf("certificate for %v %v; want 127.0.0.1 alone", leaf.IPAddresses, leaf.DNSNames)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore) + time.Second; life != 6*24*time.Hour {
		t.Errorf("lifetime %v; want six days (shortlived)", life)
	}

	// /certificates, once the CA's window is known.
	var st certs.CertificateStatus
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st = s.certificateStatus(t, "127.0.0.1")
		if st.RenewalBasis == "ari" || time.Now().After(deadline) {
			break
		}
	}
	if st.Source != "acme" || st.Profile != "shortlived" || !st.NotAfter.Equal(leaf.NotAfter) || st.RenewalBasis != "ari" || st.ARI == nil ||
		st.NextRenewal.Before(st.ARI.WindowStart) || st.NextRenewal.After(st.ARI.WindowEnd) || !st.NextRenewal.Before(leaf.NotAfter) {
		t.Errorf("/certificates entry %+v %+v; want the shortlived certificate, renewed in the CA's window", st, st.ARI)
	}
	if got := s.metricValue(t, `edgeproxy_certificate_renewal_timestamp_seconds{domain="127.0.0.1"}`); got != float64(st.NextRenewal.Unix()) {
		t.Errorf("renewal metric = %v; want %d", got, st.NextRenewal.Unix())
	}

	out, code := runDoctor(t, "-config", s.configFile)
	checkDoctor(t, out, code, 0, []doctorLine{
		{"ok", "ip:127.0.0.1", "is this host's"},
		{"ok", "acme.directory", `answers; renewal information \(ARI\).*profiles: default, shortlived`},
		{"ok", "cert:127.0.0.1", "covered by the ACME cache"},
	})
	acmeStop(t, p)
}

// certificateStatus returns the entry of name in the edge's /certificates.
func (s *acmeSite) certificateStatus(t *testing.T, name string) certs.CertificateStatus {
	t.Helper()
	resp, err := http.Get("http://" + s.metric + "/certificates")
	if err != nil {
		t.Fatalf("GET /certificates: %v", err)
	}
	defer resp.Body.Close()
	var list []certs.CertificateStatus
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /certificates: %s %v", resp.Status, err)
	}
	for _, st := range list {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("/certificates has no %s: %+v", name, list)
	return certs.CertificateStatus{}
}

// runValidate runs `edgeproxy validate -config file` and returns its output and exit status.
func runValidate(t *testing.T, file string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(testutil.BuildEdgeproxy(t), "validate", "-config", file)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("edgeproxy validate: %v", err)
	}
	return out.String(), cmd.ProcessState.ExitCode()
}
