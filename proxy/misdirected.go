package proxy

import (
	"context"
	"crypto/x509"
	"net/http"

	"edgeproxy/routing"
)

// RouteMisdirected is the route to pass Begin for a request on a TLS connection whose
// certificate does not cover the request's host (see Covers): Begin counts it (reason
// misdirected) and Answer gives 421 Misdirected Request (RFC 9110 §7.4, §15.5.20). A
// browser that reused a connection for another host sharing the address (HTTP/2
// connection coalescing) then opens a new connection for that host, whose handshake
// gets that host's certificate; no request is served on a connection whose certificate
// does not vouch for its host.
const RouteMisdirected = -2

// misdirected is the route of such a request: 421, counted as route "none".
var misdirected = &route{name: "none", fixed: &routing.FixedResponse{Status: http.StatusMisdirectedRequest}}

// Covers reports whether leaf, the certificate a TLS connection's handshake served,
// covers host, a request's Host or :authority on that connection (routing.Covered: its
// DNS names, exact or one-label wildcard, and its IP addresses; a certificate without
// either by its subject's common name). A nil leaf covers every host: the connection's
// certificate vouches for no name the edge checks (plain HTTP, the self-signed
// certificate).
func Covers[S ~string | ~[]byte](leaf *x509.Certificate, host S) bool {
	if leaf == nil {
		return true
	}
	if len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 && leaf.Subject.CommonName != "" {
		return routing.Covered(host, []string{leaf.Subject.CommonName}, nil)
	}
	return routing.Covered(host, leaf.DNSNames, leaf.IPAddresses)
}

type servedKey struct{}

// WithServedCertificate returns ctx carrying leaf, the certificate the handshake of the
// connection served (see ServerOptions.Certificate in package fastpath): ServeHTTP
// answers 421 to a request on it whose host leaf does not cover.
func WithServedCertificate(ctx context.Context, leaf *x509.Certificate) context.Context {
	if leaf == nil {
		return ctx
	}
	return context.WithValue(ctx, servedKey{}, leaf)
}

// routeChecked is routeHTTP, or RouteMisdirected when r came on a connection whose
// certificate does not cover its host.
func (h *Handler) routeChecked(r *http.Request) int {
	if leaf, _ := r.Context().Value(servedKey{}).(*x509.Certificate); !Covers(leaf, r.Host) {
		return RouteMisdirected
	}
	return h.routeHTTP(r)
}
