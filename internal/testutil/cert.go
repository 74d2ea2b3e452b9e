package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"

	"edgeproxy/internal/testutil/fixture"
)

// SelfSignedCert returns a certificate with an ECDSA P-256 key for hosts (DNS
// names or IP addresses; the first is the common name), signed by itself and
// valid from an hour ago for two days. A pool holding its Leaf (which is set)
// trusts it as a root. A failure fails the test.
func SelfSignedCert(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	c, err := fixture.SelfSigned(fixture.CertOptions{Hosts: hosts})
	if err != nil {
		t.Fatalf("testutil: self-signed certificate for %q: %v", hosts, err)
	}
	return c
}

// CertFiles writes a SelfSignedCert for hosts into dir as HOSTS[0].crt and
// HOSTS[0].key, and returns their paths and a pool that trusts it: what an
// edge configured with tls.certificates and a client of it need. Calling it
// again with the same dir and first host replaces the files with a new
// certificate.
func CertFiles(t testing.TB, dir string, hosts ...string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	c := SelfSignedCert(t, hosts...)
	certFile, keyFile = WriteCertFiles(t, dir, hosts[0], c)
	roots = x509.NewCertPool()
	roots.AddCert(c.Leaf)
	return certFile, keyFile, roots
}

// CASignedFiles makes a CA and a certificate for hosts that it signs, writes
// them into dir as HOSTS[0]-ca.crt, HOSTS[0].crt and HOSTS[0].key, and
// returns the paths and a pool that trusts the CA: for clients that check a
// chain to a root other than the server's own certificate.
func CASignedFiles(t testing.TB, dir string, hosts ...string) (caFile, certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	ca, err := fixture.NewCA("edgeproxy test CA for " + hosts[0])
	if err != nil {
		t.Fatalf("testutil: test CA: %v", err)
	}
	c, err := ca.Issue(fixture.CertOptions{Hosts: hosts})
	if err != nil {
		t.Fatalf("testutil: certificate for %q: %v", hosts, err)
	}
	caFile = filepath.Join(dir, hosts[0]+"-ca.crt")
	if err := ca.WriteFile(caFile); err != nil {
		t.Fatalf("testutil: %v", err)
	}
	certFile, keyFile = WriteCertFiles(t, dir, hosts[0], c)
	return caFile, certFile, keyFile, ca.Pool()
}

// WriteCertFiles writes c into dir as NAME.crt (the chain) and NAME.key (the
// key, PKCS #8), both PEM and mode 0600, and returns their paths.
func WriteCertFiles(t testing.TB, dir, name string, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := fixture.WriteFiles(dir, name, c)
	if err != nil {
		t.Fatalf("testutil: writing the certificate %s: %v", name, err)
	}
	return certFile, keyFile
}
