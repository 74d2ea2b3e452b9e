// Package h1 is the strict HTTP/1.1 message parser and writer of edgeproxy's fast path:
// request and response heads (RFC 9112, RFC 9110), the chunked transfer coding, and the
// heads the proxy sends on, with hop-by-hop and forwarding fields rewritten.
//
// Everything here works on caller-provided memory. A parsed head is a struct of slices
// into the buffer it was parsed from (valid as long as those bytes are), its field list
// reuses the capacity of the previous parse, and writers append to a caller's []byte, so
// that a connection loop that keeps its structs and buffers allocates nothing per
// message. Nothing uses maps, and names are compared ASCII case-insensitively in place.
//
// The parsers are strict on purpose: a proxy that accepts what its target reads
// differently is a request-smuggling proxy. What they refuse, beyond the grammar:
//   - bare LF line endings (RFC 9112 §2.2 lets a recipient accept them; a proxy that did
//     would forward a head its target may split differently), a bare CR, and empty lines
//     before the request line;
//   - obs-fold (a field line starting with SP or HTAB) and whitespace before a colon;
//   - control characters other than HTAB in field values, NUL and DEL included;
//   - Content-Length that is not plain digits, a comma list, or repeated with a different
//     spelling; Transfer-Encoding with both Content-Length, on HTTP/1.0, with empty list
//     elements, with chunked twice or not last (400), or with any coding but chunked (501);
//   - a missing or repeated Host on HTTP/1.1, and any version but HTTP/1.1 and HTTP/1.0.
//
// Requests that are valid but that the fast path leaves to net/http (CONNECT, OPTIONS *,
// absolute-form targets, Upgrade, Expect, trailers) parse without error and carry a
// Decline reason; the caller hands the connection, with the bytes already read, over.
package h1

import "errors"

// Limits bound a message head. The zero value means the defaults.
type Limits struct {
	// MaxHeadBytes bounds the head, from the start line through the blank line that ends
	// it. Zero or negative means DefaultMaxHeadBytes. A longer request head is refused
	// with 431, a longer response head with 502.
	MaxHeadBytes int
	// MaxFields bounds the number of field lines. Zero or negative means
	// DefaultMaxFields. More are refused like an oversized head.
	MaxFields int
}

// Defaults for Limits.
const (
	// DefaultMaxHeadBytes is limits.max_header_bytes' default in edgeproxy's config.
	DefaultMaxHeadBytes = 64 << 10
	// DefaultMaxFields is Apache's LimitRequestFields default.
	DefaultMaxFields = 100
)

func (l Limits) values() (maxHead, maxFields int) {
	maxHead, maxFields = l.MaxHeadBytes, l.MaxFields
	if maxHead <= 0 {
		maxHead = DefaultMaxHeadBytes
	}
	if maxFields <= 0 {
		maxFields = DefaultMaxFields
	}
	return maxHead, maxFields
}

// Field is one field line of a head. Name and Value are slices into the parsed buffer;
// Value has its leading and trailing whitespace (OWS) removed.
type Field struct {
	Name  []byte
	Value []byte
}

// Header is the field lines of a head in the order received, repeated names included.
type Header []Field

// Get returns the value of the first field named name (compared ASCII
// case-insensitively) and whether there is one.
func (h Header) Get(name string) ([]byte, bool) {
	for i := range h {
		if equalFoldAny(h[i].Name, name) {
			return h[i].Value, true
		}
	}
	return nil, false
}

// Framing is how the length of a message body is determined (RFC 9112 §6).
type Framing uint8

const (
	// FramingNone means there is no body: no Content-Length and no Transfer-Encoding on
	// a request, or a response that cannot have one (to HEAD, 1xx, 204, 304).
	FramingNone Framing = iota
	// FramingLength means the body is ContentLength bytes long (possibly zero).
	FramingLength
	// FramingChunked means the body is in the chunked transfer coding; see Chunked.
	FramingChunked
	// FramingClose means the body runs until the upstream closes the connection
	// (responses only: neither Content-Length nor Transfer-Encoding).
	FramingClose
)

var framingNames = [...]string{"none", "length", "chunked", "close"}

// String returns "none", "length", "chunked" or "close".
func (f Framing) String() string {
	if int(f) < len(framingNames) {
		return framingNames[f]
	}
	return "invalid"
}

// Error is a message the parser refuses. Status is the HTTP status code to answer with:
// for a request 400, 431 (head too large), 501 (unknown transfer coding) or 505
// (unsupported version); for a response head always 502. Chunked body errors carry 400;
// for an upstream body the caller answers 502 or, once the head has gone out, aborts.
type Error struct {
	Status int
	// Reason says what was wrong, for logs; it never quotes the input.
	Reason string
}

// Error returns the reason prefixed by the package name.
func (e *Error) Error() string { return "h1: " + e.Reason }

// ErrIncomplete is returned by ParseRequest and ParseResponse when the buffer holds
// only the beginning of a head: read more and parse again.
var ErrIncomplete = errors.New("h1: incomplete head")

// fault is one way a head can be wrong; reqErrors and respErrors turn it into an *Error.
type fault uint8

const (
	faultNone fault = iota
	faultIncomplete
	faultTooLarge
	faultTooManyFields
	faultBareLF
	faultStartLine
	faultMethod
	faultTarget
	faultVersion
	faultVersionUnsupported
	faultObsFold
	faultFieldName
	faultSpaceBeforeColon
	faultFieldValue
	faultContentLength
	faultContentLengths
	faultTransferEncoding
	faultChunkedNotLast
	faultCodingUnknown
	faultTE10
	faultCLAndTE
	faultHostMissing
	faultHostRepeated
	faultHost
	faultConnection
	faultStatus
	faultReason
	faultCount
)

var faultReasons = [faultCount]string{
	faultTooLarge:           "head too large",
	faultTooManyFields:      "too many header fields",
	faultBareLF:             "line not ended by CRLF",
	faultStartLine:          "malformed start line",
	faultMethod:             "invalid method",
	faultTarget:             "invalid request target",
	faultVersion:            "malformed HTTP version",
	faultVersionUnsupported: "unsupported HTTP version",
	faultObsFold:            "obsolete line folding",
	faultFieldName:          "invalid header field name",
	faultSpaceBeforeColon:   "whitespace before colon in header field",
	faultFieldValue:         "invalid header field value",
	faultContentLength:      "invalid Content-Length",
	faultContentLengths:     "conflicting Content-Length fields",
	faultTransferEncoding:   "malformed Transfer-Encoding",
	faultChunkedNotLast:     "chunked is not the final transfer coding",
	faultCodingUnknown:      "unsupported transfer coding",
	faultTE10:               "Transfer-Encoding in an HTTP/1.0 message",
	faultCLAndTE:            "both Content-Length and Transfer-Encoding",
	faultHostMissing:        "missing Host",
	faultHostRepeated:       "more than one Host",
	faultHost:               "invalid Host",
	faultConnection:         "invalid Connection",
	faultStatus:             "invalid status code",
	faultReason:             "invalid reason phrase",
}

// reqErrors and respErrors hold one *Error per fault, made once so that refusing a
// message allocates nothing.
var reqErrors, respErrors = func() (req, resp [faultCount]*Error) {
	for f := faultTooLarge; f < faultCount; f++ {
		status := 400
		switch f {
		case faultTooLarge, faultTooManyFields:
			status = 431
		case faultVersionUnsupported:
			status = 505
		case faultCodingUnknown:
			status = 501
		}
		req[f] = &Error{Status: status, Reason: faultReasons[f]}
		resp[f] = &Error{Status: 502, Reason: "response: " + faultReasons[f]}
	}
	return req, resp
}()

func (f fault) request() error {
	if f == faultIncomplete {
		return ErrIncomplete
	}
	return reqErrors[f]
}

func (f fault) response() error {
	if f == faultIncomplete {
		return ErrIncomplete
	}
	return respErrors[f]
}
