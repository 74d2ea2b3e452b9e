package h1

// TargetForm is the form of a request-target (RFC 9112 §3.2).
type TargetForm uint8

const (
	// OriginForm is an absolute path and optional query: "/where?q=now".
	OriginForm TargetForm = iota
	// AbsoluteForm is a whole URI: "http://www.example.org/pub/WWW/".
	AbsoluteForm
	// AuthorityForm is host:port, only for CONNECT.
	AuthorityForm
	// AsteriskForm is "*", only for OPTIONS.
	AsteriskForm
)

var formNames = [...]string{"origin", "absolute", "authority", "asterisk"}

// String returns "origin", "absolute", "authority" or "asterisk".
func (f TargetForm) String() string {
	if int(f) < len(formNames) {
		return formNames[f]
	}
	return "invalid"
}

// Decline is why the fast path should leave a valid request to net/http.
type Decline uint8

const (
	// DeclineNone means the fast path can proxy the request.
	DeclineNone Decline = iota
	// DeclineConnect is a CONNECT request (a tunnel).
	DeclineConnect
	// DeclineAsterisk is OPTIONS *, which net/http answers itself.
	DeclineAsterisk
	// DeclineAbsoluteForm is an absolute-form target: its authority replaces Host
	// (RFC 9112 §3.2.2), which net/http already implements.
	DeclineAbsoluteForm
	// DeclineUpgrade is a request with an Upgrade field (WebSocket, h2c).
	DeclineUpgrade
	// DeclineExpect is a request with an Expect field: 100-continue needs an interim
	// response, and net/http answers any other expectation with 417.
	DeclineExpect
	// DeclineTrailers is a request with a Trailer field, or TE naming trailers: net/http
	// carries trailers between the two sides, the fast path does not.
	DeclineTrailers
)

var declineNames = [...]string{"none", "connect", "asterisk", "absolute-form", "upgrade", "expect", "trailers"}

// String returns a short lower-case name, such as "upgrade", for logs and metrics.
func (d Decline) String() string {
	if int(d) < len(declineNames) {
		return declineNames[d]
	}
	return "invalid"
}

// Request is a parsed request head. Its slices point into the buffer given to
// ParseRequest, and its Header and Connection keep their capacity from one parse to the
// next, so a Request reused on a connection allocates nothing in the steady state.
type Request struct {
	// Method is the method token, case-sensitive (RFC 9110 §9.1).
	Method []byte
	// Target is the request-target as received, in the form Form.
	Target []byte
	Form   TargetForm
	// Minor is the minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
	Minor int
	// Host is the Host field's value; HasHost says whether there was one (HTTP/1.1
	// requires exactly one, HTTP/1.0 allows none).
	Host    []byte
	HasHost bool
	// Header holds every field line, hop-by-hop ones included, in order.
	Header Header
	// Connection holds the tokens of the Connection fields, in order: options such as
	// close and keep-alive, and the names of fields meant for this hop only.
	Connection [][]byte
	// Framing and ContentLength give the body's length. ContentLength is -1 unless
	// Framing is FramingLength.
	Framing       Framing
	ContentLength int64
	// KeepAlive says whether the connection may carry another request after this one
	// (RFC 9112 §9.3): HTTP/1.1 unless Connection: close, HTTP/1.0 only with
	// Connection: keep-alive.
	KeepAlive bool
	// ExpectContinue is set by Expect: 100-continue, Expect by any Expect field.
	ExpectContinue bool
	Expect         bool
	// Upgrade is set by an Upgrade field.
	Upgrade bool
	// Trailer is set by a Trailer field, TETrailers by a TE field listing trailers.
	Trailer    bool
	TETrailers bool
	// Declined is why the fast path should hand this request to net/http, or DeclineNone.
	Declined Decline
}

func (r *Request) reset() {
	*r = Request{Header: r.Header[:0], Connection: r.Connection[:0], ContentLength: -1}
}

// ParseRequest parses the request head at the start of buf into req and returns its
// length; the body, if any, starts at buf[n]. While buf holds only part of a head it
// returns ErrIncomplete (a fault in the lines already complete is reported at once);
// a refused head returns an *Error with the status to answer. It never panics, and
// with enough capacity in req.Header and req.Connection it does not allocate. Bodies
// framed by Content-Length or chunked are both accepted; see Request.Declined for the
// requests the fast path should not proxy itself.
func ParseRequest(buf []byte, req *Request, lim Limits) (n int, err error) {
	req.reset()
	maxHead, maxFields := lim.values()
	line, pos, bad := firstLine(buf, maxHead)
	if bad == faultNone {
		bad = req.parseRequestLine(line)
	}
	if bad == faultNone {
		pos, bad = parseFields(buf, pos, maxHead, maxFields, &req.Header)
	}
	if bad == faultNone {
		bad = req.interpret()
	}
	if bad != faultNone {
		return 0, bad.request()
	}
	return pos, nil
}

// parseRequestLine parses method SP request-target SP HTTP-version (RFC 9112 §3):
// exactly one SP between the parts, nothing around them.
func (r *Request) parseRequestLine(line []byte) fault {
	sp := 0
	for sp < len(line) && classes[line[sp]]&classTchar != 0 {
		sp++
	}
	if sp == 0 || sp == len(line) || line[sp] != ' ' {
		if sp < len(line) && line[sp] != ' ' {
			return faultMethod
		}
		return faultStartLine
	}
	r.Method = line[:sp]
	rest := line[sp+1:]
	t := 0
	for t < len(rest) && classes[rest[t]]&classTarget != 0 {
		t++
	}
	if t == 0 || t == len(rest) || rest[t] != ' ' {
		if t < len(rest) && rest[t] != ' ' {
			return faultTarget
		}
		return faultStartLine
	}
	r.Target = rest[:t]
	switch v := rest[t+1:]; {
	case string(v) == "HTTP/1.1":
		r.Minor = 1
	case string(v) == "HTTP/1.0":
		r.Minor = 0
	case len(v) == 8 && string(v[:5]) == "HTTP/" && isDigit(v[5]) && v[6] == '.' && isDigit(v[7]):
		return faultVersionUnsupported
	default:
		return faultVersion
	}
	return r.classifyTarget()
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// classifyTarget sets Form, refusing targets no form matches.
func (r *Request) classifyTarget() fault {
	t := r.Target
	switch {
	case t[0] == '/':
		r.Form = OriginForm
		// net/http refuses a malformed percent-encoding in the path (not the query)
		// with 400; so does the fast path, so that both paths answer alike.
		for i := 0; i < len(t) && t[i] != '?'; i++ {
			if t[i] == '%' && (i+2 >= len(t) || classes[t[i+1]]&classHex == 0 || classes[t[i+2]]&classHex == 0) {
				return faultTarget
			}
		}
	case string(r.Method) == "CONNECT":
		r.Form = AuthorityForm
	case len(t) == 1 && t[0] == '*':
		if string(r.Method) != "OPTIONS" {
			return faultTarget
		}
		r.Form = AsteriskForm
	case hasScheme(t):
		r.Form = AbsoluteForm
	default:
		return faultTarget
	}
	return faultNone
}

// hasScheme reports whether t starts with scheme ":" (RFC 3986 §3.1).
func hasScheme(t []byte) bool {
	for i, c := range t {
		switch {
		case 'a' <= lower[c] && lower[c] <= 'z':
		case i > 0 && (isDigit(c) || c == '+' || c == '-' || c == '.'):
		case i > 0 && c == ':':
			return true
		default:
			return false
		}
	}
	return false
}

// interpret reads the fields that matter to the proxy and decides framing,
// persistence and whether to decline.
func (r *Request) interpret() fault {
	var b bodyFields
	hosts := 0
	for i := range r.Header {
		f := &r.Header[i]
		var bad fault
		switch len(f.Name) {
		case 2:
			if equalFold(f.Name, "te") {
				for rest := f.Value; rest != nil; {
					var elem []byte
					elem, rest = nextElement(rest)
					if equalFold(elem, "trailers") {
						r.TETrailers = true
					}
				}
			}
		case 4:
			if equalFold(f.Name, "host") {
				hosts++
				r.Host, r.HasHost = f.Value, true
			}
		case 6:
			if equalFold(f.Name, "expect") {
				r.Expect = true
				if equalFold(f.Value, "100-continue") {
					r.ExpectContinue = true
				}
			}
		case 7:
			if equalFold(f.Name, "upgrade") {
				r.Upgrade = true
			} else if equalFold(f.Name, "trailer") {
				r.Trailer = true
			}
		default:
			bad = b.field(f, &r.Connection)
		}
		if bad != faultNone {
			return bad
		}
	}
	switch {
	case hosts > 1:
		return faultHostRepeated
	case hosts == 0 && r.Minor == 1:
		return faultHostMissing
	case hosts == 1 && !validHost(r.Host):
		return faultHost
	}
	if b.te && r.Minor == 0 {
		// RFC 9112 §6.1 calls the framing of such a message faulty; net/http would
		// ignore the field and use Content-Length.
		return faultTE10
	}
	if bad := b.teFault(); bad != faultNone {
		return bad
	}
	switch {
	case b.te:
		r.Framing = FramingChunked
	case b.cl != nil:
		r.Framing, r.ContentLength = FramingLength, b.length
	}
	r.KeepAlive = b.keepAliveFor(r.Minor)
	switch {
	case r.Form == AuthorityForm:
		r.Declined = DeclineConnect
	case r.Form == AsteriskForm:
		r.Declined = DeclineAsterisk
	case r.Form == AbsoluteForm:
		r.Declined = DeclineAbsoluteForm
	case r.Upgrade:
		r.Declined = DeclineUpgrade
	case r.Expect:
		r.Declined = DeclineExpect
	case r.Trailer || r.TETrailers:
		r.Declined = DeclineTrailers
	}
	return faultNone
}

// validHost reports whether h is a plausible uri-host [ ":" port ]: only the
// characters of reg-name, IP-literal and port, brackets only around an IP-literal.
// Empty is valid (RFC 9110 §7.2: the authority may be undefined).
func validHost(h []byte) bool {
	for i, c := range h {
		if classes[c]&classHost == 0 {
			return false
		}
		if c == '[' && i != 0 || c == ']' && h[0] != '[' {
			return false
		}
	}
	return true
}
