package proxy

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"edgeproxy/proxy/h1"
)

// The header policy of the edge, one value for both wire formats: which forwarding
// fields a target gets and what they say, the HSTS field added to responses, and the
// error page.

// forwarding decides the forwarding fields of a request from a client: X-Forwarded-For
// (the client's address, after a trusted proxy's own list), X-Forwarded-Host (the
// request's Host) and X-Forwarded-Proto. What a client says in these fields is kept only
// when the client is a trusted proxy; anyone else's is replaced.
type forwarding struct {
	trusted []netip.Prefix
}

func (f forwarding) trusts(ip netip.Addr) bool {
	for _, p := range f.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// proto is the X-Forwarded-Proto a target gets: https on a TLS connection; for a plain
// connection from a trusted proxy (a TLS-terminating load balancer in front), what it says
// the client used, if that is https; else http.
func proto(isTLS, trusted, claimsHTTPS bool) string {
	if isTLS || trusted && claimsHTTPS {
		return "https"
	}
	return "http"
}

// RequestHeadOptions returns how the fast path writes the head of a request from client
// (on TLS or not) for a target: the same forwarding policy as the net/http path's rewrite.
// claimedProto is the request's X-Forwarded-Proto, if any.
func (h *Handler) RequestHeadOptions(client netip.Addr, isTLS bool, claimedProto []byte, defaultHost string) h1.RequestHeadOptions {
	trusted := h.fwd.trusts(client)
	return h1.RequestHeadOptions{
		ClientIP: client, TrustForwarded: trusted, ForwardedHost: true, DefaultHost: defaultHost,
		Proto: proto(isTLS, trusted, string(claimedProto) == "https"),
	}
}

// setForwarding writes the forwarding fields of the net/http path's outgoing request out,
// for the incoming in. ReverseProxy has removed the client's from out already.
func (h *Handler) setForwarding(out, in *http.Request) {
	clientIP := remoteIP(in.RemoteAddr)
	trusted := h.fwd.trusts(clientIP)
	xff := clientIP.String()
	if prior := in.Header.Values("X-Forwarded-For"); trusted && len(prior) > 0 {
		xff = strings.Join(prior, ", ") + ", " + xff
	}
	// One allocation for both values, instead of one per Header.Set (the keys are
	// already canonical).
	vals := make([]string, 2)
	vals[0], vals[1] = xff, in.Host
	if clientIP.IsValid() {
		out.Header["X-Forwarded-For"] = vals[0:1:1]
	}
	if in.Host != "" {
		out.Header["X-Forwarded-Host"] = vals[1:2:2]
	}
	p := protoHTTP
	if proto(requestTLS(in) != nil, trusted, in.Header.Get("X-Forwarded-Proto") == "https") == "https" {
		p = protoHTTPS
	}
	out.Header["X-Forwarded-Proto"] = p
}

// protoHTTP and protoHTTPS are shared X-Forwarded-Proto values, so that setting the field
// allocates nothing. Nothing modifies a request's header values in place (an append to
// these makes a copy: their capacity is 1).
var (
	protoHTTP  = []string{"http"}
	protoHTTPS = []string{"https"}
)

// dropFolded removes the fields ReverseProxy keeps but the fast path drops: names that
// differ from a hop-by-hop or forwarding field only by "_" for "-" (WSGI servers such as
// gunicorn map both spellings to one environ key, so X_Forwarded_For could stand in for
// the field the edge sets) and fields a Connection token names in that spelling. drops
// is h1.DropsRequestField or h1.DropsResponseField, the fast path's own rules.
func dropFolded(h http.Header, connection []string, drops func(string, []string) bool) {
	for name := range h {
		if strings.IndexByte(name, '_') >= 0 && drops(name, connection) {
			delete(h, name)
		}
	}
}

func remoteIP(remoteAddr string) netip.Addr {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// HSTS returns the Strict-Transport-Security field the fast path adds to a response on a
// connection (TLS or not), or nil.
func (h *Handler) HSTS(isTLS bool) h1.Header {
	if h.hsts == nil || !isTLS {
		return nil
	}
	return h.hsts
}

// errorFields are the fields of every error page the edge writes: plain text, not to be
// sniffed or cached.
var errorFields = [...][2]string{
	{"Content-Type", "text/plain; charset=utf-8"},
	{"X-Content-Type-Options", "nosniff"},
	{"Cache-Control", "no-store"},
}

// errorBody is the body of every error page the edge writes: status and text, no detail.
func errorBody(code int) string {
	return strconv.Itoa(code) + " " + http.StatusText(code) + "\n"
}

// writeErrorPage answers code through net/http.
func writeErrorPage(w http.ResponseWriter, code int) {
	writeResponse(w, code, errorFields[:], errorBody(code))
}

// AppendErrorResponse appends the whole error response for code as the fast path writes
// it: the same fields and body as the net/http path's, plus extra (HSTS) and, with
// closeAfter, Connection: close.
func AppendErrorResponse(dst []byte, code int, extra h1.Header, closeAfter bool) []byte {
	return appendResponse(dst, code, errorFields[:], errorBody(code), extra, closeAfter)
}

// writeResponse answers through net/http with a response the edge writes itself: its
// status, fields and body.
func writeResponse(w http.ResponseWriter, status int, fields [][2]string, body string) {
	for _, f := range fields {
		w.Header().Set(f[0], f[1])
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// appendResponse appends a whole response the edge writes itself, as the fast path sends
// it: the status line, fields, Content-Length, extra (HSTS), Connection: close with
// closeAfter, and the body.
func appendResponse(dst []byte, status int, fields [][2]string, body string, extra h1.Header, closeAfter bool) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(status)...)
	dst = append(dst, "\r\n"...)
	for _, f := range fields {
		dst = append(dst, f[0]...)
		dst = append(dst, ": "...)
		dst = append(dst, f[1]...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\n"...)
	for _, f := range extra {
		dst = append(dst, f.Name...)
		dst = append(dst, ": "...)
		dst = append(dst, f.Value...)
		dst = append(dst, "\r\n"...)
	}
	if closeAfter {
		dst = append(dst, "Connection: close\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	return append(dst, body...)
}
