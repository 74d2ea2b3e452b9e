package certs

import (
	"crypto/tls"
	"sync/atomic"
	"testing"
	"time"
)

type countObserver struct{ n atomic.Int64 }

func (c *countObserver) UnknownServerName() { c.n.Add(1) }

func mustSelfSigned(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	c, err := SelfSigned(names, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// twoSites is a Source with a static certificate for a.test (the default) and one for
// b.test and *.b.test, counting unknown names in obs.
func twoSites(t *testing.T) (a, b tls.Certificate, src *Source, obs *countObserver) {
	t.Helper()
	a = mustSelfSigned(t, "a.test")
	b = mustSelfSigned(t, "b.test", "*.b.test")
	obs = &countObserver{}
	src, err := New(Options{Static: []tls.Certificate{a, b}, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	return a, b, src, obs
}

// Several static certificates: SNI picks the one covering the name (exactly or by
// wildcard); any other name gets the first, and is counted.
func TestGetCertificate_ChoosesBySNI(t *testing.T) {
	a, b, src, obs := twoSites(t)
	tests := []struct {
		sni  string
		want *tls.Certificate
	}{
		{"a.test", &a}, {"A.TEST", &a}, {"b.test", &b}, {"www.b.test", &b}, {"x.y.b.test", &a}, {"other.test", &a},
	}
	for _, tt := range tests {
		got, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: tt.sni})
		if err != nil {
			t.Fatalf("%s: %v", tt.sni, err)
		}
		if got.Leaf.SerialNumber.Cmp(tt.want.Leaf.SerialNumber) != 0 {
			t.Errorf("%s: got certificate for %v; want %v", tt.sni, got.Leaf.DNSNames, tt.want.Leaf.DNSNames)
		}
	}
	if n := obs.n.Load(); n != 2 {
		t.Errorf("unknown names counted %d; want 2 (x.y.b.test, other.test)", n)
	}
}

// Served is the certificate GetCertificate chooses for an SNI name, without counting
// it; nothing (no 421 check) without SNI and for the self-signed certificate.
func TestServed_IsTheChoiceForTheSNI(t *testing.T) {
	a, b, src, obs := twoSites(t)
	for sni, want := range map[string]*tls.Certificate{"a.test": &a, "www.b.test": &b, "other.test": &a, "": nil} {
		got := src.Served(sni)
		if want == nil && got != nil || want != nil && got != want.Leaf {
			t.Errorf("Served(%q) = %v; want the certificate of %v", sni, got, want)
		}
	}
	if n := obs.n.Load(); n != 0 {
		t.Errorf("Served counted %d unknown names; want 0 (GetCertificate counts them)", n)
	}
	self, err := New(Options{SelfSigned: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := self.Served("localhost"); got != nil {
		t.Errorf("self-signed: Served = %v; want nil", got.DNSNames)
	}
}

func TestGetCertificate_NoSourceRefuses(t *testing.T) {
	src, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: "x.test"}); err == nil {
		t.Error("got a certificate; want the handshake refused")
	}
}

func TestSelfSigned_IsECDSAP256ForLoopback(t *testing.T) {
	c := mustSelfSigned(t, "app.test")
	if c.Leaf.PublicKeyAlgorithm.String() != "ECDSA" {
		t.Errorf("key %v; want ECDSA", c.Leaf.PublicKeyAlgorithm)
	}
	if err := c.Leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if err := c.Leaf.VerifyHostname("app.test"); err != nil {
		t.Error(err)
	}
}

// TLS 1.2 is the floor, 1.0/1.1 are refused, and HTTP/2 is offered.
func TestTLSConfig_Posture(t *testing.T) {
	src, _ := New(Options{SelfSigned: true})
	cfg := src.TLSConfig()
	if cfg.MinVersion != tls.VersionTLS12 || cfg.NextProtos[0] != "h2" {
		t.Errorf("min %x protos %v; want TLS 1.2 and h2 first", cfg.MinVersion, cfg.NextProtos)
	}
	for _, id := range cfg.CipherSuites {
		for _, insecure := range tls.InsecureCipherSuites() {
			if id == insecure.ID {
				t.Errorf("insecure suite %s enabled", insecure.Name)
			}
		}
	}
}
