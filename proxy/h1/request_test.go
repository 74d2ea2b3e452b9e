package h1

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// head joins lines with CRLF and ends them with the blank line.
func head(lines ...string) string {
	return strings.Join(lines, "\r\n") + "\r\n\r\n"
}

// statusOf returns the Status of an *Error, 0 for nil and -1 for anything else.
func statusOf(err error) int {
	var e *Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &e):
		return e.Status
	}
	return -1
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		method    string
		target    string
		form      TargetForm
		minor     int
		host      string
		framing   Framing
		length    int64
		keepAlive bool
		declined  Decline
		conn      string // Connection tokens joined by ","
	}{
		{name: "get", in: head("GET / HTTP/1.1", "Host: example.com"),
			method: "GET", target: "/", minor: 1, host: "example.com", length: -1, keepAlive: true},
		{name: "query and port", in: head("GET /a/b?c=d&e=%20f HTTP/1.1", "Host: example.com:8443", "Accept: */*"),
			method: "GET", target: "/a/b?c=d&e=%20f", minor: 1, host: "example.com:8443", length: -1, keepAlive: true},
		{name: "bad escape in query is left to the target", in: head("GET /?q=%zz HTTP/1.1", "Host: a"),
			method: "GET", target: "/?q=%zz", minor: 1, host: "a", length: -1, keepAlive: true},
		{name: "ipv6 host", in: head("GET / HTTP/1.1", "Host: [::1]:443"),
			method: "GET", target: "/", minor: 1, host: "[::1]:443", length: -1, keepAlive: true},
		{name: "empty host", in: head("GET / HTTP/1.1", "Host:"),
			method: "GET", target: "/", minor: 1, host: "", length: -1, keepAlive: true},
		{name: "post length", in: head("POST /form HTTP/1.1", "Host: a", "Content-Length: 11", "Content-Type: text/plain"),
			method: "POST", target: "/form", minor: 1, host: "a", framing: FramingLength, length: 11, keepAlive: true},
		{name: "length zero", in: head("POST / HTTP/1.1", "Host: a", "Content-Length: 0"),
			method: "POST", target: "/", minor: 1, host: "a", framing: FramingLength, length: 0, keepAlive: true},
		{name: "identical lengths", in: head("POST / HTTP/1.1", "Host: a", "Content-Length: 5", "content-length:  5 "),
			method: "POST", target: "/", minor: 1, host: "a", framing: FramingLength, length: 5, keepAlive: true},
		{name: "chunked", in: head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"),
			method: "POST", target: "/", minor: 1, host: "a", framing: FramingChunked, length: -1, keepAlive: true},
		{name: "chunked mixed case", in: head("POST / HTTP/1.1", "Host: a", "transfer-encoding: \tChunKed\t"),
			method: "POST", target: "/", minor: 1, host: "a", framing: FramingChunked, length: -1, keepAlive: true},
		{name: "close", in: head("GET / HTTP/1.1", "Host: a", "Connection: close"),
			method: "GET", target: "/", minor: 1, host: "a", length: -1, conn: "close"},
		{name: "connection list", in: head("GET / HTTP/1.1", "Host: a", "Connection: Keep-Alive, X-Secret,,", "connection: CLOSE"),
			method: "GET", target: "/", minor: 1, host: "a", length: -1, conn: "Keep-Alive,X-Secret,CLOSE"},
		{name: "http/1.0", in: head("GET / HTTP/1.0"),
			method: "GET", target: "/", minor: 0, length: -1},
		{name: "http/1.0 keep-alive", in: head("GET / HTTP/1.0", "Connection: keep-alive", "Host: a"),
			method: "GET", target: "/", minor: 0, host: "a", length: -1, keepAlive: true, conn: "keep-alive"},
		{name: "extension method", in: head("PROPFIND /dav HTTP/1.1", "Host: a"),
			method: "PROPFIND", target: "/dav", minor: 1, host: "a", length: -1, keepAlive: true},
		{name: "empty value and obs-text", in: head("GET / HTTP/1.1", "Host: a", "X-Empty:", "X-Latin: caf\xe9"),
			method: "GET", target: "/", minor: 1, host: "a", length: -1, keepAlive: true},
		{name: "connect", in: head("CONNECT example.com:443 HTTP/1.1", "Host: example.com:443"),
			method: "CONNECT", target: "example.com:443", form: AuthorityForm, minor: 1, host: "example.com:443", length: -1, keepAlive: true, declined: DeclineConnect},
		{name: "options asterisk", in: head("OPTIONS * HTTP/1.1", "Host: a"),
			method: "OPTIONS", target: "*", form: AsteriskForm, minor: 1, host: "a", length: -1, keepAlive: true, declined: DeclineAsterisk},
		{name: "absolute form", in: head("GET http://b/x HTTP/1.1", "Host: a"),
			method: "GET", target: "http://b/x", form: AbsoluteForm, minor: 1, host: "a", length: -1, keepAlive: true, declined: DeclineAbsoluteForm},
		{name: "websocket", in: head("GET /ws HTTP/1.1", "Host: a", "Upgrade: websocket", "Connection: Upgrade"),
			method: "GET", target: "/ws", minor: 1, host: "a", length: -1, keepAlive: true, declined: DeclineUpgrade, conn: "Upgrade"},
		{name: "expect continue", in: head("PUT / HTTP/1.1", "Host: a", "Content-Length: 1", "Expect: 100-Continue"),
			method: "PUT", target: "/", minor: 1, host: "a", framing: FramingLength, length: 1, keepAlive: true, declined: DeclineExpect},
		{name: "expect other", in: head("PUT / HTTP/1.1", "Host: a", "Expect: teapot"),
			method: "PUT", target: "/", minor: 1, host: "a", length: -1, keepAlive: true, declined: DeclineExpect},
		{name: "te trailers", in: head("GET / HTTP/1.1", "Host: a", "TE: deflate, trailers"),
			method: "GET", target: "/", minor: 1, host: "a", length: -1, keepAlive: true, declined: DeclineTrailers},
		{name: "te without trailers", in: head("GET / HTTP/1.1", "Host: a", "TE: deflate"),
			method: "GET", target: "/", minor: 1, host: "a", length: -1, keepAlive: true},
		{name: "trailer", in: head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Trailer: X-Sum"),
			method: "POST", target: "/", minor: 1, host: "a", framing: FramingChunked, length: -1, keepAlive: true, declined: DeclineTrailers},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			n, err := ParseRequest([]byte(tt.in+"BODY"), &req, Limits{})
			if err != nil {
				t.Fatalf("ParseRequest: %v", err)
			}
			if n != len(tt.in) {
				t.Errorf("got n %d; want %d", n, len(tt.in))
			}
			var conn []string
			for _, c := range req.Connection {
				conn = append(conn, string(c))
			}
			got := []any{string(req.Method), string(req.Target), req.Form, req.Minor, string(req.Host), req.Framing, req.ContentLength, req.KeepAlive, req.Declined, strings.Join(conn, ",")}
			want := []any{tt.method, tt.target, tt.form, tt.minor, tt.host, tt.framing, tt.length, tt.keepAlive, tt.declined, tt.conn}
			names := []string{"method", "target", "form", "minor", "host", "framing", "length", "keepAlive", "declined", "connection"}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("got %s %v; want %v", names[i], got[i], want[i])
				}
			}
		})
	}
}

// TestParseRequest_Refused covers the request-smuggling classics and every other head
// the parser refuses, each with the status the caller answers.
func TestParseRequest_Refused(t *testing.T) {
	const ok = "GET / HTTP/1.1\r\nHost: a\r\n"
	tests := []struct {
		name   string
		in     string
		status int
	}{
		// Framing: CL.TE, TE.CL and TE.TE obfuscations.
		{"CL.TE", head("POST / HTTP/1.1", "Host: a", "Content-Length: 6", "Transfer-Encoding: chunked"), 400},
		{"TE.CL", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Content-Length: 3"), 400},
		{"TE xchunked", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: xchunked"), 501},
		{"TE space before colon", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding : chunked"), 400},
		{"TE tab before colon", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding\t: chunked"), 400},
		{"TE chunked, identity", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, identity"), 400},
		{"TE identity", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: identity"), 501},
		{"TE gzip, chunked", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked"), 501},
		{"TE chunked twice", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 400},
		{"TE chunked, chunked", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, chunked"), 400},
		{"TE split over fields", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: x"), 400},
		{"TE empty", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding:"), 400},
		{"TE empty element", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: ,chunked"), 400},
		{"TE trailing comma", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked,"), 400},
		{"TE quoted", head("POST / HTTP/1.1", "Host: a", `Transfer-Encoding: "chunked"`), 501},
		{"TE with parameter", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked;q=1"), 501},
		{"TE vertical tab", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: \vchunked"), 400},
		{"TE on HTTP/1.0", head("POST / HTTP/1.0", "Transfer-Encoding: chunked"), 400},
		{"TE obs-fold", head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding:", " chunked"), 400},
		{"CL differing", head("POST / HTTP/1.1", "Host: a", "Content-Length: 5", "Content-Length: 6"), 400},
		{"CL differing spelling", head("POST / HTTP/1.1", "Host: a", "Content-Length: 5", "Content-Length: 05"), 400},
		{"CL list", head("POST / HTTP/1.1", "Host: a", "Content-Length: 5, 5"), 400},
		{"CL plus", head("POST / HTTP/1.1", "Host: a", "Content-Length: +5"), 400},
		{"CL minus", head("POST / HTTP/1.1", "Host: a", "Content-Length: -1"), 400},
		{"CL underscore", head("POST / HTTP/1.1", "Host: a", "Content-Length: 1_0"), 400},
		{"CL hex", head("POST / HTTP/1.1", "Host: a", "Content-Length: 0x10"), 400},
		{"CL inner space", head("POST / HTTP/1.1", "Host: a", "Content-Length: 1 0"), 400},
		{"CL empty", head("POST / HTTP/1.1", "Host: a", "Content-Length:"), 400},
		{"CL overflow", head("POST / HTTP/1.1", "Host: a", "Content-Length: 9223372036854775808"), 400},
		{"CL space before colon", head("POST / HTTP/1.1", "Host: a", "Content-Length : 5"), 400},
		// Line endings and folding.
		{"bare LF everywhere", "GET / HTTP/1.1\nHost: a\n\n", 400},
		{"bare LF request line", "GET / HTTP/1.1\nHost: a\r\n\r\n", 400},
		{"bare LF field", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400},
		{"bare LF blank line", ok + "\n", 400},
		{"bare CR in value", head("GET / HTTP/1.1", "Host: a", "X: a\rb"), 400},
		{"CR before colon", head("GET / HTTP/1.1", "Host: a", "X\r: a"), 400},
		{"obs-fold", head("GET / HTTP/1.1", "Host: a", "X: a", " b"), 400},
		{"obs-fold tab", head("GET / HTTP/1.1", "Host: a", "X: a", "\tb"), 400},
		{"whitespace before first field", head("GET / HTTP/1.1", " Host: a"), 400},
		{"leading empty line", "\r\n" + head("GET / HTTP/1.1", "Host: a"), 400},
		// Field syntax.
		{"NUL in value", head("GET / HTTP/1.1", "Host: a", "X: a\x00b"), 400},
		{"DEL in value", head("GET / HTTP/1.1", "Host: a", "X: a\x7fb"), 400},
		{"ESC in value", head("GET / HTTP/1.1", "Host: a", "X: \x1b[31m"), 400},
		{"space in name", head("GET / HTTP/1.1", "Host: a", "X Y: z"), 400},
		{"empty name", head("GET / HTTP/1.1", "Host: a", ": z"), 400},
		{"no colon", head("GET / HTTP/1.1", "Host: a", "X-Nothing"), 400},
		{"non-token name", head("GET / HTTP/1.1", "Host: a", "X(y): z"), 400},
		{"utf-8 name", head("GET / HTTP/1.1", "Host: a", "caf\xc3\xa9: z"), 400},
		{"bad connection token", head("GET / HTTP/1.1", "Host: a", "Connection: close x"), 400},
		// Request line.
		{"two spaces", head("GET  / HTTP/1.1", "Host: a"), 400},
		{"two spaces before version", head("GET /  HTTP/1.1", "Host: a"), 400},
		{"trailing space", head("GET / HTTP/1.1 ", "Host: a"), 400},
		{"tab separator", head("GET\t/ HTTP/1.1", "Host: a"), 400},
		{"leading space", head(" GET / HTTP/1.1", "Host: a"), 400},
		{"no version", head("GET /", "Host: a"), 400},
		{"http/0.9", "GET /\r\n\r\n", 400},
		{"lowercase version", head("GET / http/1.1", "Host: a"), 400},
		{"version 1.2", head("GET / HTTP/1.2", "Host: a"), 505},
		{"version 2.0", head("PRI * HTTP/2.0", "", "SM"), 505},
		{"version 0.9", head("GET / HTTP/0.9", "Host: a"), 505},
		{"version long", head("GET / HTTP/1.10", "Host: a"), 400},
		{"empty method", head(" / HTTP/1.1", "Host: a"), 400},
		{"method with slash", head("G/ET / HTTP/1.1", "Host: a"), 400},
		{"NUL in target", head("GET /\x00 HTTP/1.1", "Host: a"), 400},
		{"DEL in target", head("GET /\x7f HTTP/1.1", "Host: a"), 400},
		{"bad escape in path", head("GET /%zz HTTP/1.1", "Host: a"), 400},
		{"truncated escape", head("GET /%4 HTTP/1.1", "Host: a"), 400},
		{"relative target", head("GET index.html HTTP/1.1", "Host: a"), 400},
		{"asterisk with GET", head("GET * HTTP/1.1", "Host: a"), 400},
		{"empty request line", head("", "Host: a"), 400},
		// Host.
		{"missing host", head("GET / HTTP/1.1", "X: a"), 400},
		{"two hosts", head("GET / HTTP/1.1", "Host: a", "Host: a"), 400},
		{"two hosts differing", head("GET / HTTP/1.1", "Host: a", "host: b"), 400},
		{"host with space", head("GET / HTTP/1.1", "Host: a b"), 400},
		{"host with slash", head("GET / HTTP/1.1", "Host: a/b"), 400},
		{"host with at", head("GET / HTTP/1.1", "Host: user@a"), 400},
		{"host bracket inside", head("GET / HTTP/1.1", "Host: a[::1]"), 400},
		{"two hosts on 1.0", head("GET / HTTP/1.0", "Host: a", "Host: b"), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			n, err := ParseRequest([]byte(tt.in), &req, Limits{})
			if got := statusOf(err); got != tt.status {
				t.Errorf("got status %d (%v, n %d); want %d", got, err, n, tt.status)
			}
		})
	}
}

func TestParseRequest_Limits(t *testing.T) {
	big := head("GET / HTTP/1.1", "Host: a", "Cookie: "+strings.Repeat("x", 70000))
	fields := []string{"GET / HTTP/1.1", "Host: a"}
	for i := 0; i < 20; i++ {
		fields = append(fields, "X: y")
	}
	many := head(fields...)
	tests := []struct {
		name   string
		in     string
		lim    Limits
		status int // -1: ErrIncomplete
	}{
		{"huge head", big, Limits{}, 431},
		{"huge head, first 64 KiB", big[:DefaultMaxHeadBytes], Limits{}, 431},
		{"just under the limit", big[:DefaultMaxHeadBytes-1], Limits{}, -1},
		{"long request line", "GET /" + strings.Repeat("a", 100), Limits{MaxHeadBytes: 100}, 431},
		{"ends exactly at the limit", head("GET / HTTP/1.1", "Host: a"), Limits{MaxHeadBytes: len(head("GET / HTTP/1.1", "Host: a"))}, 0},
		{"one byte over the limit", head("GET / HTTP/1.1", "Host: a"), Limits{MaxHeadBytes: len(head("GET / HTTP/1.1", "Host: a")) - 1}, 431},
		{"fields at the limit", many, Limits{MaxFields: 21}, 0},
		{"too many fields", many, Limits{MaxFields: 20}, 431},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			_, err := ParseRequest([]byte(tt.in), &req, tt.lim)
			got := statusOf(err)
			if err == ErrIncomplete {
				got = -1
			}
			if got != tt.status {
				t.Errorf("got status %d (%v); want %d", got, err, tt.status)
			}
		})
	}
}

// TestParseRequest_Incremental feeds a head one byte at a time: every proper prefix is
// incomplete, and ScanHead agrees with the parser about when to parse.
func TestParseRequest_Incremental(t *testing.T) {
	in := []byte(head("POST /upload?x=1 HTTP/1.1", "Host: example.com", "Content-Length: 3", "X-A: b") + "abc")
	end := len(in) - 3
	var req Request
	next := 0
	for i := 0; i <= len(in); i++ {
		n, err := ParseRequest(in[:i], &req, Limits{})
		ready, nx := ScanHead(in[:i], next, 0)
		next = nx
		if i < end {
			if err != ErrIncomplete || ready {
				t.Fatalf("prefix %d: got %v, ready %v; want ErrIncomplete, not ready", i, err, ready)
			}
			continue
		}
		if err != nil || n != end || !ready {
			t.Fatalf("prefix %d: got n %d, %v, ready %v; want %d, nil, ready", i, n, err, ready, end)
		}
	}
	if req.ContentLength != 3 || string(req.Host) != "example.com" {
		t.Errorf("got length %d host %q", req.ContentLength, req.Host)
	}
}

// TestParseRequest_EarlyFault checks that a fault in a complete line is reported
// before the head is complete, so a garbage sender is answered at once.
func TestParseRequest_EarlyFault(t *testing.T) {
	var req Request
	_, err := ParseRequest([]byte("GET / HTTP/1.1\r\nBad Name: x\r\n"), &req, Limits{})
	if got := statusOf(err); got != 400 {
		t.Errorf("got %v; want 400", err)
	}
}

func TestScanHead(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		max   int
		ready bool
	}{
		{"empty", "", 0, false},
		{"partial", "GET / HTTP/1.1\r\nHost: a\r\n", 0, false},
		{"partial CR", "GET / HTTP/1.1\r\nHost: a\r\n\r", 0, false},
		{"complete", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, true},
		{"bare LF", "GET / HTTP/1.1\n", 0, true},
		{"leading CRLF", "\r\n", 0, true},
		{"over the limit", "GET / HTTP/1.1\r\nHost: a", 10, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready, _ := ScanHead([]byte(tt.in), 0, tt.max)
			if ready != tt.ready {
				t.Errorf("got ready %v; want %v", ready, tt.ready)
			}
			var req Request
			_, err := ParseRequest([]byte(tt.in), &req, Limits{MaxHeadBytes: tt.max})
			if ready && err == ErrIncomplete {
				t.Errorf("ready, but ParseRequest says incomplete")
			}
		})
	}
}

func TestHeader_Get(t *testing.T) {
	var req Request
	if _, err := ParseRequest([]byte(head("GET / HTTP/1.1", "Host: a", "X-Forwarded-Proto: https", "x-forwarded-proto: http")), &req, Limits{}); err != nil {
		t.Fatal(err)
	}
	if v, ok := req.Header.Get("X-FORWARDED-PROTO"); !ok || string(v) != "https" {
		t.Errorf("got %q, %v; want \"https\", true", v, ok)
	}
	if _, ok := req.Header.Get("X-Missing"); ok {
		t.Errorf("got a missing field")
	}
}

// TestParseRequest_Reuse checks that a Request reused for a second, smaller head
// keeps nothing of the first.
func TestParseRequest_Reuse(t *testing.T) {
	var req Request
	if _, err := ParseRequest([]byte(head("POST / HTTP/1.1", "Host: a", "Connection: x", "Upgrade: y", "Content-Length: 4")), &req, Limits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseRequest([]byte(head("GET /b HTTP/1.1", "Host: b")), &req, Limits{}); err != nil {
		t.Fatal(err)
	}
	if len(req.Header) != 1 || len(req.Connection) != 0 || req.Upgrade || req.Declined != DeclineNone || req.Framing != FramingNone || req.ContentLength != -1 {
		t.Errorf("got %+v; want a clean request", req)
	}
}

func TestParseRequest_NoAllocs(t *testing.T) {
	in := []byte(browserRequest)
	var req Request
	ParseRequest(in, &req, Limits{})
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseRequest(in, &req, Limits{}); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("got %v allocs per parse; want 0", allocs)
	}
}

func TestStrings(t *testing.T) {
	if DeclineUpgrade.String() != "upgrade" || Decline(99).String() != "invalid" {
		t.Errorf("Decline.String")
	}
	if FramingChunked.String() != "chunked" || Framing(99).String() != "invalid" {
		t.Errorf("Framing.String")
	}
	if AbsoluteForm.String() != "absolute" || TargetForm(99).String() != "invalid" {
		t.Errorf("TargetForm.String")
	}
	if got := reqErrors[faultCodingUnknown].Error(); got != "h1: unsupported transfer coding" {
		t.Errorf("got %q", got)
	}
}

// TestScanValue checks the eight-bytes-at-a-time scan against the byte table, for
// every byte value at every position of a line, behind an HTAB or not.
func TestScanValue(t *testing.T) {
	naive := func(b []byte, i int) int {
		for ; i < len(b); i++ {
			if classes[b[i]]&classValue == 0 {
				return i
			}
		}
		return len(b)
	}
	for c := 0; c < 256; c++ {
		for p := 0; p < 19; p++ {
			for _, fill := range []byte{'a', '\t', 0xff} {
				b := bytes.Repeat([]byte{fill}, 19)
				b[p] = byte(c)
				for start := 0; start < 3; start++ {
					if got, want := scanValue(b, start), naive(b, start); got != want {
						t.Fatalf("byte %#x at %d in %q from %d: got %d; want %d", c, p, fill, start, got, want)
					}
				}
			}
		}
	}
}
