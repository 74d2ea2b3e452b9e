package config

import (
	"fmt"
	"slices"
	"strings"
)

// routeHostsEnvironment warns about each route host that no certificate covers: no
// static certificate (exactly or by a wildcard) and no tls.acme domain. A client reaching
// such a host over https gets the default certificate, which its browser refuses, and a
// request for it on a connection whose certificate does not cover it gets 421. Route
// hosts are not added to tls.acme.domains: the CA's rate limits count every failed
// order, so what is ordered is what the operator listed. A wildcard host can only be
// covered by a static wildcard certificate: HTTP-01 and TLS-ALPN-01 cannot prove one.
// It looks at the certificates CheckEnvironment loaded, and says nothing with
// tls.self_signed (for local use: it serves every name) or when a certificate file did
// not load (that is the error to fix first).
func (k *checker) routeHostsEnvironment() {
	c := k.c
	if c.Listen.HTTPS == "" || c.TLS.SelfSigned || len(c.Resolved.Certificates) != len(c.TLS.Certificates) {
		return
	}
	acme := c.TLS.ACME
	domains := map[string]bool{}
	for _, d := range append(slices.Clone(acme.Domains), acme.IPAddresses...) {
		domains[normalName(d)] = true
	}
	for i, r := range c.Routes {
		for j, h := range r.Hosts {
			name := normalName(h)
			if domains[name] || k.staticCovers(name) {
				continue
			}
			path := fmt.Sprintf("routes[%d].hosts[%d]", i, j)
			switch {
			case strings.HasPrefix(name, "*.") && acme.Enabled():
				k.warnf(path, "%s: no certificate covers %s, and tls.acme cannot obtain one: a wildcard certificate needs the DNS-01 challenge, which edgeproxy does not answer; add a wildcard certificate to tls.certificates, or route each name", path, h)
			case strings.HasPrefix(name, "*."):
				k.warnf(path, "%s: no certificate in tls.certificates covers %s: add a wildcard certificate for it (its clients would get the default certificate)", path, h)
			case acme.Enabled():
				k.warnf(path, "%s: no certificate covers %s: add it to tls.acme.domains (edgeproxy orders only the names listed there), or a certificate for it to tls.certificates", path, h)
			default:
				k.warnf(path, "%s: no certificate in tls.certificates covers %s: add one for it (its clients would get the default certificate)", path, h)
			}
		}
	}
}

// staticCovers reports whether a loaded static certificate covers name, a route host in
// normal form: as a client verifying it would see it, or, for a wildcard host, by that
// same wildcard name.
func (k *checker) staticCovers(name string) bool {
	for _, lc := range k.c.Resolved.Certificates {
		leaf := lc.Certificate.Leaf
		if strings.HasPrefix(name, "*.") {
			if slices.ContainsFunc(leaf.DNSNames, func(n string) bool { return strings.EqualFold(n, name) }) {
				return true
			}
		} else if leaf.VerifyHostname(name) == nil {
			return true
		}
	}
	return false
}
