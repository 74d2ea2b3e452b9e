package routing

import (
	"crypto/x509"
	"net"
	"strings"
	"testing"
)

var (
	certNames = []string{"example.com", "*.example.com", "API.Other.Test"}
	certIPs   = []net.IP{net.IPv4(203, 0, 113, 7), net.ParseIP("2001:db8::7")}
)

// A request's host is covered by a certificate's names as a client verifying that
// certificate would see it: exact or one label under a wildcard, case-insensitive, port
// and one trailing dot ignored, IP addresses (IPv6 bracketed or not) against the IP names.
func TestCovered_AsAClientVerifyingTheCertificate(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"example.com", true},
		{"EXAMPLE.com:443", true},
		{"example.com.", true},
		{"example.com.:8443", true},
		{"www.example.com", true},
		{"WWW.Example.Com.", true},
		{"a.b.example.com", false}, // a wildcard covers one label
		{".example.com", false},
		{"xexample.com", false},
		{"example.org", false},
		{"api.other.test", true}, // the certificate's name in upper case
		{"other.test", false},
		{"203.0.113.7", true},
		{"203.0.113.7:443", true},
		{"203.0.113.8", false},
		{"[2001:db8::7]", true},
		{"[2001:db8:0::7]:8443", true},
		{"2001:db8::7", true},
		{"[2001:db8::8]", false},
		{"[2001:db8::7", false},
		{"[fe80::1%25eth0]", false},
		{"1.2.3", false},
		{"", true}, // no host: nothing else named
		{"*.example.com", false},
		{"exämple.com", false},
	}
	for _, tt := range tests {
		if got := Covered(tt.host, certNames, certIPs); got != tt.want {
			t.Errorf("Covered(%q) = %v; want %v", tt.host, got, tt.want)
		}
		if got := Covered([]byte(tt.host), certNames, certIPs); got != tt.want {
			t.Errorf("Covered([]byte %q) = %v; want %v", tt.host, got, tt.want)
		}
	}
}

// Checking a host name allocates nothing: the fast path checks each connection's first
// request.
func TestCovered_DoesNotAllocateForAName(t *testing.T) {
	host := []byte("www.example.com:443")
	if n := testing.AllocsPerRun(100, func() { Covered(host, certNames, certIPs) }); n != 0 {
		t.Errorf("%v allocations per check; want 0", n)
	}
}

// FuzzCovered: string and []byte agree, and for a host made of letters, digits, '-' and
// '.', or an IP address, the answer is crypto/x509's VerifyHostname's: no host a
// verifying client accepts gets 421, and none it refuses is served.
func FuzzCovered(f *testing.F) {
	for _, h := range []string{"example.com", "WWW.example.com.:443", "a.b.example.com", "[2001:db8::7]:1", "203.0.113.7", "1.2.3", "", "[", ".", "*.example.com"} {
		f.Add(h)
	}
	leaf := &x509.Certificate{DNSNames: certNames, IPAddresses: certIPs}
	f.Fuzz(func(t *testing.T, host string) {
		got := Covered(host, certNames, certIPs)
		if b := Covered([]byte(host), certNames, certIPs); b != got {
			t.Fatalf("string %v, bytes %v", got, b)
		}
		h := normalHost(host)
		if h == "" || strings.Trim(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") != "" && net.ParseIP(strings.Trim(h, "[]")) == nil {
			return
		}
		if isIPv4Like(h) && net.ParseIP(h) == nil {
			return // digits and dots, not an address: neither a name nor an IP
		}
		if want := leaf.VerifyHostname(h) == nil; got != want {
			t.Fatalf("Covered(%q) = %v; VerifyHostname(%q) says %v", host, got, h, want)
		}
	})
}
