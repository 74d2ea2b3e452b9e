package h1

// Response is a parsed response head from an upstream. Like Request, its slices point
// into the parsed buffer and its Header and Connection keep their capacity.
type Response struct {
	// Minor is the minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
	Minor int
	// Status is the status code, 100 to 599.
	Status int
	// Reason is the reason phrase, possibly empty.
	Reason []byte
	// Header holds every field line, hop-by-hop ones included, in order.
	Header Header
	// Connection holds the tokens of the Connection fields, in order.
	Connection [][]byte
	// Framing gives the body's length (RFC 9112 §6.3). ContentLength is the
	// Content-Length field's value, or -1 without one; it is kept when Framing is
	// FramingNone, because a response to HEAD and a 304 state the length a GET would get.
	Framing       Framing
	ContentLength int64
	// KeepAlive says whether the upstream connection may carry another request after
	// this response: HTTP/1.1 unless Connection: close, HTTP/1.0 only with
	// Connection: keep-alive, never when the body runs to the close.
	KeepAlive bool
}

func (r *Response) reset() {
	*r = Response{Header: r.Header[:0], Connection: r.Connection[:0], ContentLength: -1}
}

// ParseResponse parses the response head at the start of buf into resp and returns its
// length. method is the method of the request it answers, which matters for HEAD (no
// body) and CONNECT (a 2xx starts a tunnel: FramingNone and no keep-alive; the fast path
// never sends CONNECT). Incomplete heads return ErrIncomplete and refused ones an
// *Error with Status 502. An interim (1xx) response parses like any other, with
// FramingNone; the caller reads the final response after it. Like ParseRequest it never
// panics and does not allocate once resp has capacity.
//
// It refuses a response with both Content-Length and Transfer-Encoding, and with any
// transfer coding but a single chunked, where RFC 9112 §6.3 would fall back on reading
// until the close: both are signs of a confused or hostile upstream, and the client
// should get a 502 rather than a body of guessed length.
func ParseResponse(buf []byte, resp *Response, method []byte, lim Limits) (n int, err error) {
	resp.reset()
	maxHead, maxFields := lim.values()
	line, pos, bad := firstLine(buf, maxHead)
	if bad == faultNone {
		bad = resp.parseStatusLine(line)
	}
	if bad == faultNone {
		pos, bad = parseFields(buf, pos, maxHead, maxFields, &resp.Header)
	}
	if bad == faultNone {
		bad = resp.interpret(method)
	}
	if bad != faultNone {
		return 0, bad.response()
	}
	return pos, nil
}

// parseStatusLine parses HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112
// §4). Like net/http it also takes a status line without the second SP, as from
// servers that send no reason at all.
func (r *Response) parseStatusLine(line []byte) fault {
	if len(line) < 12 {
		return faultStartLine
	}
	switch string(line[:9]) {
	case "HTTP/1.1 ":
		r.Minor = 1
	case "HTTP/1.0 ":
		r.Minor = 0
	default:
		return faultVersion
	}
	code := line[9:12]
	if !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) {
		return faultStatus
	}
	r.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if r.Status < 100 || r.Status > 599 {
		return faultStatus
	}
	rest := line[12:]
	if len(rest) == 0 {
		return faultNone
	}
	if rest[0] != ' ' {
		return faultStatus
	}
	for _, c := range rest[1:] {
		if classes[c]&classValue == 0 {
			return faultReason
		}
	}
	r.Reason = rest[1:]
	return faultNone
}

func (r *Response) interpret(method []byte) fault {
	var b bodyFields
	for i := range r.Header {
		f := &r.Header[i]
		if bad := b.field(f, &r.Connection); bad != faultNone {
			return bad
		}
	}
	if b.te && r.Minor == 0 {
		return faultTE10
	}
	if bad := b.teFault(); bad != faultNone {
		if bad == faultCodingUnknown || bad == faultChunkedNotLast {
			return faultCodingUnknown
		}
		return bad
	}
	if b.cl != nil {
		r.ContentLength = b.length
	}
	r.KeepAlive = b.keepAliveFor(r.Minor)
	switch {
	case string(method) == "HEAD" || r.Status < 200 || r.Status == 204 || r.Status == 304:
		r.Framing = FramingNone
	case string(method) == "CONNECT" && r.Status < 300:
		r.Framing, r.KeepAlive = FramingNone, false
	case b.te:
		r.Framing = FramingChunked
	case b.cl != nil:
		r.Framing = FramingLength
	default:
		r.Framing, r.KeepAlive = FramingClose, false
	}
	return faultNone
}
