package certs

import (
	"crypto/tls"
	"strings"
	"testing"

	"edgeproxy/internal/testutil"
)

// With ACME alone (no static or self-signed certificate), a name that is not among the
// ACME domains is refused, counted at every handshake, and logged once with the covered
// names and the hint that DNS may point another name at the box.
func TestGetCertificate_UnknownNameHintACMEOnly(t *testing.T) {
	log, logs := testutil.NewLogger(t)
	obs := &countObserver{}
	src, err := New(Options{Logger: log, Observer: obs, ACME: &ACMEOptions{
		Domains: []string{"django-devops.app.test", "www.app.test"}, DirectoryURL: "https://" + testutil.DeadAddr(t) + "/dir", CacheDir: t.TempDir(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if c, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: "django-zero.app.test"}); err == nil {
			t.Fatalf("got certificate %v for an unlisted name; want an error", c.Leaf.DNSNames)
		}
	}
	if n := obs.n.Load(); n != 3 {
		t.Errorf("counted %d; want 3", n)
	}
	want := "TLS handshake for server name django-zero.app.test, which no certificate covers (covered: django-devops.app.test, www.app.test); did DNS point another name at this box?"
	if n := strings.Count(logs.String(), want); n != 1 {
		t.Errorf("logged %d times; want once: %q\n%s", n, want, logs)
	}
}
