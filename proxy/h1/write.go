package h1

import (
	"net/netip"
	"strconv"
)

// RequestHeadOptions say how AppendRequestHead rewrites a request for the upstream.
// The zero value forwards no forwarding fields and keeps the connection alive. Proto and
// DefaultHost are written as given: they come from the proxy, not the client, and must
// be valid field values.
type RequestHeadOptions struct {
	// ClientIP is the address of the client, written as X-Forwarded-For. The zero Addr
	// writes no X-Forwarded-For at all.
	ClientIP netip.Addr
	// TrustForwarded keeps the X-Forwarded-For values the client sent, before ClientIP
	// and joined by ", ", for a client that is a trusted proxy. False replaces them.
	TrustForwarded bool
	// Proto is written as X-Forwarded-Proto, e.g. "https"; "" writes none. A caller
	// that trusts the client may pass on the client's own value (Header.Get).
	Proto string
	// ForwardedHost writes X-Forwarded-Host with the request's Host, if it has one.
	ForwardedHost bool
	// DefaultHost is the Host written for a request without one (HTTP/1.0), as
	// net/http's Transport writes the target address. "" writes an empty Host, which
	// RFC 9110 §7.2 allows when there is no authority.
	DefaultHost string
	// Close writes Connection: close, for an upstream connection not to be reused.
	Close bool
}

// AppendRequestHead appends to dst the head of req as the proxy sends it upstream, and
// returns the extended slice; it allocates only if dst lacks capacity. The request line
// keeps the method and target and says HTTP/1.1. Host comes first, as received. Then
// come the fields of req in order, without the hop-by-hop ones (see isHopByHop), without
// Host, Content-Length and Transfer-Encoding (rewritten from Framing, so that what the
// upstream reads as the body's length is what the proxy read), and without Forwarded
// and X-Forwarded-For/-Proto/-Host, which the client does not get to set. Last come the
// framing field, Connection: close if asked, and the forwarding fields of opts (nil
// means the zero options). A field whose name differs from a removed one only by "_"
// for "-" is removed too: WSGI servers such as gunicorn map both spellings to the same
// environ key, which would let a client spoof X-Forwarded-For through X_Forwarded_For.
//
// req should be one ParseRequest accepted without a Decline; Expect, Upgrade and
// trailers are not handled here.
func AppendRequestHead(dst []byte, req *Request, opts *RequestHeadOptions) []byte {
	if opts == nil {
		opts = &RequestHeadOptions{}
	}
	dst = append(dst, req.Method...)
	dst = append(dst, ' ')
	dst = append(dst, req.Target...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	if req.HasHost {
		dst = append(dst, req.Host...)
	} else {
		dst = append(dst, opts.DefaultHost...)
	}
	dst = append(dst, "\r\n"...)
	for _, f := range req.Header {
		if isHopByHop(f.Name, req.Connection) || requestReplaced(f.Name) {
			continue
		}
		dst = appendField(dst, f.Name, f.Value)
	}
	dst = appendFraming(dst, req.Framing, req.ContentLength)
	if opts.Close {
		dst = append(dst, "Connection: close\r\n"...)
	}
	if opts.ClientIP.IsValid() {
		dst = append(dst, "X-Forwarded-For: "...)
		if opts.TrustForwarded {
			for _, f := range req.Header {
				if len(f.Value) > 0 && equalFold(f.Name, "x-forwarded-for") {
					dst = append(dst, f.Value...)
					dst = append(dst, ", "...)
				}
			}
		}
		dst = opts.ClientIP.Unmap().AppendTo(dst)
		dst = append(dst, "\r\n"...)
	}
	if opts.Proto != "" {
		dst = append(dst, "X-Forwarded-Proto: "...)
		dst = append(dst, opts.Proto...)
		dst = append(dst, "\r\n"...)
	}
	if opts.ForwardedHost && req.HasHost {
		dst = append(dst, "X-Forwarded-Host: "...)
		dst = append(dst, req.Host...)
		dst = append(dst, "\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// ResponseHeadOptions say how AppendResponseHead rewrites a response for the client.
// The zero value adds nothing.
type ResponseHeadOptions struct {
	// Close writes Connection: close: the proxy closes the client connection after
	// this response. A response whose body runs to the close gets it anyway.
	Close bool
	// KeepAlive writes Connection: keep-alive, which an HTTP/1.0 client needs to keep
	// the connection open. Ignored when Connection: close is written.
	KeepAlive bool
	// Extra fields are written last, replacing any upstream field of the same name,
	// e.g. Strict-Transport-Security. They are written as given and must be valid.
	Extra Header
}

// AppendResponseHead appends to dst the head of resp as the proxy sends it to the
// client, and returns the extended slice; it allocates only if dst lacks capacity. The
// status line says HTTP/1.1 with resp's code and reason. The fields follow in order
// without the hop-by-hop ones (see isHopByHop) and without Content-Length and
// Transfer-Encoding, which are rewritten from Framing: chunked stays chunked (the
// caller forwards the chunks unchanged, see Chunked.Scan), a body that runs to the
// close is sent the same way with Connection: close, and a bodiless response keeps its
// Content-Length unless it is 1xx or 204. A caller that decodes a chunked body for an
// HTTP/1.0 client sets resp.Framing to FramingClose first. opts nil means the zero
// options.
func AppendResponseHead(dst []byte, resp *Response, opts *ResponseHeadOptions) []byte {
	if opts == nil {
		opts = &ResponseHeadOptions{}
	}
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(resp.Status), 10)
	dst = append(dst, ' ')
	dst = append(dst, resp.Reason...)
	dst = append(dst, "\r\n"...)
	for _, f := range resp.Header {
		if isHopByHop(f.Name, resp.Connection) || isFraming(f.Name) || opts.Extra.has(f.Name) {
			continue
		}
		dst = appendField(dst, f.Name, f.Value)
	}
	switch {
	case resp.Framing != FramingNone:
		dst = appendFraming(dst, resp.Framing, resp.ContentLength)
	case resp.ContentLength >= 0 && resp.Status >= 200 && resp.Status != 204:
		dst = appendFraming(dst, FramingLength, resp.ContentLength)
	}
	switch {
	case opts.Close || resp.Framing == FramingClose:
		dst = append(dst, "Connection: close\r\n"...)
	case opts.KeepAlive:
		dst = append(dst, "Connection: keep-alive\r\n"...)
	}
	for _, f := range opts.Extra {
		dst = appendField(dst, f.Name, f.Value)
	}
	return append(dst, "\r\n"...)
}

func appendField(dst, name, value []byte) []byte {
	dst = append(dst, name...)
	dst = append(dst, ": "...)
	dst = append(dst, value...)
	return append(dst, "\r\n"...)
}

func appendFraming(dst []byte, f Framing, length int64) []byte {
	switch f {
	case FramingLength:
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, length, 10)
		dst = append(dst, "\r\n"...)
	case FramingChunked:
		dst = append(dst, "Transfer-Encoding: chunked\r\n"...)
	}
	return dst
}

func (h Header) has(name []byte) bool {
	for i := range h {
		if equalFoldBytes(h[i].Name, name) {
			return true
		}
	}
	return false
}

// isHopByHop reports whether a field is meant for one connection only and so is never
// forwarded, in either direction: the fields RFC 9110 §7.6.1 and RFC 9112 name
// (Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade),
// Proxy-Authenticate and Proxy-Authorization (which net/http/httputil drops too), and
// every field named in Connection. Names are compared case-insensitively and with "_"
// taken for "-".
func isHopByHop[S fieldName, C fieldName](name S, connection []C) bool {
	switch len(name) {
	case 2:
		if equalKey(name, "te") {
			return true
		}
	case 7:
		if equalKey(name, "upgrade") || equalKey(name, "trailer") {
			return true
		}
	case 10:
		if equalKey(name, "connection") || equalKey(name, "keep-alive") {
			return true
		}
	case 16:
		if equalKey(name, "proxy-connection") {
			return true
		}
	case 17:
		if equalKey(name, "transfer-encoding") {
			return true
		}
	case 18:
		if equalKey(name, "proxy-authenticate") {
			return true
		}
	case 19:
		if equalKey(name, "proxy-authorization") {
			return true
		}
	}
	for _, c := range connection {
		if len(c) == len(name) && equalKeys(name, c) {
			return true
		}
	}
	return false
}

// fieldName is a field name as the fast path holds it ([]byte) or as net/http does
// (string): the rules below are written once for both.
type fieldName interface{ ~string | ~[]byte }

// DropsRequestField reports whether a proxy must not forward a request field of this
// name to a target: a hop-by-hop field (or one named in connection, the Connection
// tokens), a framing field, Host, or a forwarding field the client does not get to set;
// names compared case-insensitively and with "_" taken for "-", as AppendRequestHead
// does. The net/http path applies it so that both paths forward the same fields.
func DropsRequestField(name string, connection []string) bool {
	return isHopByHop(name, connection) || requestReplaced(name)
}

// DropsResponseField reports whether a proxy must not forward a response field of this
// name to a client: a hop-by-hop field or one named in connection, compared as
// AppendResponseHead compares them. Framing fields are not included: net/http writes its
// own.
func DropsResponseField(name string, connection []string) bool {
	return isHopByHop(name, connection)
}

// isFraming reports whether name is Content-Length or Transfer-Encoding ("_" for "-").
func isFraming[S fieldName](name S) bool {
	return len(name) == 14 && equalKey(name, "content-length") ||
		len(name) == 17 && equalKey(name, "transfer-encoding")
}

// requestReplaced reports whether AppendRequestHead writes a field of this name itself
// (Host, framing) or drops it as the client's say about forwarding.
func requestReplaced[S fieldName](name S) bool {
	switch len(name) {
	case 4:
		return equalKey(name, "host")
	case 9:
		return equalKey(name, "forwarded")
	case 15:
		return equalKey(name, "x-forwarded-for")
	case 16:
		return equalKey(name, "x-forwarded-host")
	case 17:
		return equalKey(name, "x-forwarded-proto")
	}
	return isFraming(name)
}

// keyFold maps upper case to lower case and "_" to "-", for comparing field names the
// way a CGI/WSGI environ sees them.
var keyFold = func() (t [256]byte) {
	t = lower
	t['_'] = '-'
	return t
}()

// equalKey reports whether name equals s, a lower-case name, under keyFold.
func equalKey[S fieldName](name S, s string) bool {
	if len(name) != len(s) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if keyFold[name[i]] != s[i] {
			return false
		}
	}
	return true
}

func equalKeys[A fieldName, B fieldName](a A, b B) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if keyFold[a[i]] != keyFold[b[i]] {
			return false
		}
	}
	return true
}
