package routing

import (
	"net"
	"net/netip"
)

// Covered reports whether a request's host (its Host field or :authority) is one of a
// certificate's names: equal to one of dnsNames, or one label under a wildcard name
// ("*.example.com" covers "api.example.com", not "example.com" nor "a.b.example.com"),
// or, for an IP address, one of ips. As for routing, the port and one trailing dot are
// ignored and names compare ASCII case-insensitively; an IPv6 literal may be bracketed.
// An empty host is covered: it names no other authority.
//
// It does not allocate for a DNS name; an IP address is parsed (for []byte, that copies
// it).
func Covered[S ~string | ~[]byte](host S, dnsNames []string, ips []net.IP) bool {
	host = normalHost(host)
	if len(host) == 0 {
		return true
	}
	if host[0] == '[' || isIPv4Like(host) || containsColon(host) {
		return coveredIP(host, ips)
	}
	for _, name := range dnsNames {
		if nameCovers(name, host) {
			return true
		}
	}
	return false
}

// coveredIP reports whether host, an IP literal (bracketed for IPv6), is one of ips.
func coveredIP[S ~string | ~[]byte](host S, ips []net.IP) bool {
	if host[0] == '[' {
		if host[len(host)-1] != ']' {
			return false
		}
		host = host[1 : len(host)-1]
	}
	ip, err := netip.ParseAddr(string(host))
	if err != nil || ip.Zone() != "" {
		return false
	}
	for _, b := range ips {
		if a, ok := netip.AddrFromSlice(b); ok && a.Unmap() == ip.Unmap() {
			return true
		}
	}
	return false
}

// nameCovers reports whether the certificate name covers host (no port, no trailing dot).
func nameCovers[S ~string | ~[]byte](name string, host S) bool {
	if len(name) > 2 && name[0] == '*' && name[1] == '.' {
		suffix := name[1:] // ".example.com"
		n := len(host) - len(suffix)
		if n <= 0 || !equalFoldASCII(host[n:], suffix) {
			return false
		}
		// The label the wildcard stands for must be one valid label, as
		// x509.VerifyHostname has it: letters, digits, '_' and '-', not first.
		for i := 0; i < n; i++ {
			c := host[i]
			valid := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' && i > 0
			if !valid {
				return false
			}
		}
		return true
	}
	return equalFoldASCII(host, name)
}

// isIPv4Like reports whether host is made of digits and dots only: not a DNS name (no
// top-level domain is numeric), so compared as an address.
func isIPv4Like[S ~string | ~[]byte](host S) bool {
	for i := 0; i < len(host); i++ {
		if c := host[i]; c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func containsColon[S ~string | ~[]byte](host S) bool {
	for i := 0; i < len(host); i++ {
		if host[i] == ':' {
			return true
		}
	}
	return false
}
