package h1

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"testing"
)

var requestSeeds = []string{
	browserRequest,
	head("GET / HTTP/1.1", "Host: a"),
	head("GET / HTTP/1.0"),
	head("POST / HTTP/1.1", "Host: a", "Content-Length: 5") + "hello",
	head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked") + "5\r\nhello\r\n0\r\n\r\n",
	head("POST / HTTP/1.1", "Host: a", "Content-Length: 6", "Transfer-Encoding: chunked"),
	head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding : chunked"),
	head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: xchunked"),
	head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, identity"),
	head("POST / HTTP/1.1", "Host: a", "Content-Length: 5", "Content-Length: 6"),
	head("POST / HTTP/1.1", "Host: a", "Content-Length: +5"),
	head("GET / HTTP/1.1", "Host: a", "X: a", " b"),
	"GET / HTTP/1.1\nHost: a\n\n",
	head("GET / HTTP/1.1", "Host: a", "X: a\x00"),
	head("GET  / HTTP/1.1", "Host: a"),
	head("GET / http/1.1", "Host: a"),
	head("GET / HTTP/1.1", "Host: a", "Host: b"),
	head("GET / HTTP/1.1", "Host: a", "Connection: close, X-A", "X-A: 1", "Keep-Alive: 1", "X-Forwarded-For: 1.1.1.1"),
	head("GET http://a/ HTTP/1.1", "Host: a"),
	head("CONNECT a:443 HTTP/1.1", "Host: a:443"),
	head("OPTIONS * HTTP/1.1", "Host: a"),
	head("GET /ws HTTP/1.1", "Host: a", "Upgrade: websocket", "Connection: upgrade"),
	head("PUT / HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 1"),
}

var responseSeeds = []string{
	djangoResponse,
	head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked") + "0\r\n\r\n",
	head("HTTP/1.1 200 OK"),
	head("HTTP/1.0 200 OK", "Connection: keep-alive", "Content-Length: 0"),
	head("HTTP/1.1 204 No Content", "Content-Length: 0"),
	head("HTTP/1.1 304 Not Modified", "Content-Length: 7"),
	head("HTTP/1.1 100 Continue"),
	head("HTTP/1.1 200", "Content-Length: 3", "Content-Length: 3"),
	head("HTTP/1.1 200 OK", "Content-Length: 3", "Transfer-Encoding: chunked"),
	head("HTTP/1.1 200 OK", "Connection: X-A, close", "X-A: b", "Trailer: c", "Content-Length: 1"),
}

var chunkedSeeds = []string{
	"5\r\nhello\r\n0\r\n\r\n",
	"5;a=b\r\nhello\r\n0\r\nX: y\r\n\r\nGET",
	"A \t;x=\"y\"\r\n0123456789\r\n0\r\n\r\n",
	"8000000000000000\r\n",
	"5\nhello\r\n0\r\n\r\n",
	"0\r\nX: a\r\n b\r\n\r\n",
}

// FuzzParseRequest checks that ParseRequest never panics, answers only with its own
// errors, agrees with ScanHead, and that every request it accepts for the fast path is
// read the same way by net/http, rewrites to a request with the same meaning and
// rewrites the same way twice.
func FuzzParseRequest(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	opts := &RequestHeadOptions{ClientIP: netip.MustParseAddr("192.0.2.1"), Proto: "https", ForwardedHost: true, DefaultHost: "t:80"}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req Request
		n, err := ParseRequest(data, &req, Limits{})
		checkScanHead(t, data, err)
		if err != nil {
			var e *Error
			if err != ErrIncomplete && !(errors.As(err, &e) && slices.Contains([]int{400, 431, 501, 505}, e.Status)) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if n < 4 || n > len(data) || string(data[n-4:n]) != "\r\n\r\n" {
			t.Fatalf("got n %d for %d bytes", n, len(data))
		}
		var again Request
		if _, err := ParseRequest(data[:n-1], &again, Limits{}); err != ErrIncomplete {
			t.Fatalf("head less its last byte: got %v; want ErrIncomplete", err)
		}
		if req.Declined != DeclineNone {
			return
		}
		checkNetHTTPRequest(t, data[:n], &req)

		out := AppendRequestHead(nil, &req, opts)
		var re Request
		m, err := ParseRequest(out, &re, Limits{})
		if err != nil || m != len(out) {
			t.Fatalf("rewritten head %q: got %d, %v", out, m, err)
		}
		host := req.Host
		if !req.HasHost {
			host = []byte(opts.DefaultHost)
		}
		if !bytes.Equal(re.Method, req.Method) || !bytes.Equal(re.Target, req.Target) || !bytes.Equal(re.Host, host) ||
			re.Framing != req.Framing || re.ContentLength != req.ContentLength || re.Declined != DeclineNone || !re.KeepAlive || re.Minor != 1 {
			t.Fatalf("rewritten head %q means %+v; want the meaning of %+v", out, re, req)
		}
		for _, f := range re.Header {
			if isHopByHop(f.Name, req.Connection) && !(equalFold(f.Name, "transfer-encoding") && req.Framing == FramingChunked) {
				t.Fatalf("rewritten head %q keeps hop-by-hop field %q", out, f.Name)
			}
		}
		// Without a Host, the first rewrite adds DefaultHost and the second forwards it.
		if out2 := AppendRequestHead(nil, &re, opts); req.HasHost && !bytes.Equal(out, out2) {
			t.Fatalf("rewriting twice differs:\n%q\n%q", out, out2)
		}
	})
}

// checkScanHead checks that ScanHead, fed data in pieces, says ready exactly when
// ParseRequest or ParseResponse stops saying ErrIncomplete (a fault found early in a
// complete line aside).
func checkScanHead(t *testing.T, data []byte, err error) {
	ready, next := false, 0
	for i := 0; i <= len(data) && !ready; i += 7 {
		ready, next = ScanHead(data[:i], next, 0)
	}
	if !ready {
		ready, _ = ScanHead(data, next, 0)
	}
	if whole, _ := ScanHead(data, 0, 0); whole != ready {
		t.Fatalf("ScanHead in pieces says %v, at once %v", ready, whole)
	}
	if ready && err == ErrIncomplete || !ready && err == nil {
		t.Fatalf("ScanHead says ready %v, the parser %v", ready, err)
	}
}

// checkNetHTTPRequest checks that net/http reads an accepted head as the fast path
// does: a request both paths read alike cannot be smuggled between them.
func checkNetHTTPRequest(t *testing.T, head []byte, req *Request) {
	hr, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		t.Fatalf("net/http refuses accepted head %q: %v", head, err)
	}
	wantLength := req.ContentLength
	switch req.Framing {
	case FramingNone:
		wantLength = 0
	case FramingChunked:
		wantLength = -1
	}
	chunked := len(hr.TransferEncoding) == 1 && hr.TransferEncoding[0] == "chunked"
	if hr.Method != string(req.Method) || hr.RequestURI != string(req.Target) || hr.Host != string(req.Host) ||
		hr.ContentLength != wantLength || chunked != (req.Framing == FramingChunked) || hr.Close == req.KeepAlive {
		t.Fatalf("net/http reads %q as %s %s host %q length %d te %q close %v; h1 as %+v",
			head, hr.Method, hr.RequestURI, hr.Host, hr.ContentLength, hr.TransferEncoding, hr.Close, req)
	}
}

// FuzzParseResponse is FuzzParseRequest for response heads, to GET or HEAD.
func FuzzParseResponse(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s), false)
	}
	f.Add([]byte(djangoResponse), true)
	opts := &ResponseHeadOptions{Extra: Header{{Name: []byte("Strict-Transport-Security"), Value: []byte("max-age=1")}}}
	f.Fuzz(func(t *testing.T, data []byte, isHead bool) {
		method := []byte("GET")
		if isHead {
			method = []byte("HEAD")
		}
		var resp Response
		n, err := ParseResponse(data, &resp, method, Limits{})
		checkScanHead(t, data, err)
		if err != nil {
			var e *Error
			if err != ErrIncomplete && !(errors.As(err, &e) && e.Status == 502) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if n < 4 || n > len(data) || string(data[n-4:n]) != "\r\n\r\n" {
			t.Fatalf("got n %d for %d bytes", n, len(data))
		}
		checkNetHTTPResponse(t, data[:n], string(method), &resp)

		out := AppendResponseHead(nil, &resp, opts)
		var re Response
		m, err := ParseResponse(out, &re, method, Limits{})
		if err != nil || m != len(out) {
			t.Fatalf("rewritten head %q: got %d, %v", out, m, err)
		}
		wantLength := resp.ContentLength
		if resp.Status < 200 || resp.Status == 204 {
			wantLength = -1
		}
		if re.Status != resp.Status || !bytes.Equal(re.Reason, resp.Reason) || re.Framing != resp.Framing ||
			re.ContentLength != wantLength || re.KeepAlive != (resp.Framing != FramingClose) {
			t.Fatalf("rewritten head %q means %+v; want the meaning of %+v", out, re, resp)
		}
		for _, f := range re.Header {
			if isHopByHop(f.Name, resp.Connection) && !equalFold(f.Name, "connection") &&
				!(equalFold(f.Name, "transfer-encoding") && resp.Framing == FramingChunked) {
				t.Fatalf("rewritten head %q keeps hop-by-hop field %q", out, f.Name)
			}
		}
		if out2 := AppendResponseHead(nil, &re, opts); !bytes.Equal(out, out2) {
			t.Fatalf("rewriting twice differs:\n%q\n%q", out, out2)
		}
	})
}

func checkNetHTTPResponse(t *testing.T, head []byte, method string, resp *Response) {
	hr, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("net/http refuses accepted head %q: %v", head, err)
	}
	if hr.StatusCode != resp.Status {
		t.Fatalf("net/http reads %q as status %d", head, hr.StatusCode)
	}
	if resp.Status < 200 || method == "HEAD" || resp.Status == 204 || resp.Status == 304 {
		return
	}
	wantLength := resp.ContentLength
	if resp.Framing == FramingChunked {
		wantLength = -1
	}
	chunked := len(hr.TransferEncoding) == 1 && hr.TransferEncoding[0] == "chunked"
	if hr.ContentLength != wantLength || chunked != (resp.Framing == FramingChunked) || hr.Close == resp.KeepAlive {
		t.Fatalf("net/http reads %q as length %d te %q close %v; h1 as %+v", head, hr.ContentLength, hr.TransferEncoding, hr.Close, resp)
	}
}

// FuzzChunked checks that the chunked decoder never panics, that its three ways of
// use agree whatever the read sizes, and that the data of an accepted body survives
// being chunked again.
func FuzzChunked(f *testing.F) {
	for _, s := range chunkedSeeds {
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		var whole Chunked
		want, wn, werr := decodeAll(&whole, data, len(data)+1)
		if wn > len(data) || len(want) > wn {
			t.Fatalf("consumed %d of %d, %d data", wn, len(data), len(want))
		}
		if werr != nil {
			var e *Error
			if !errors.As(werr, &e) || e.Status != 400 {
				t.Fatalf("unexpected error %v", werr)
			}
		}
		var pieces Chunked
		got, n, err := decodeAll(&pieces, data, int(step)+1)
		if got != want || n != wn || err != werr || pieces.Done() != whole.Done() {
			t.Fatalf("step %d: got %q %d %v %v; at once %q %d %v %v", int(step)+1, got, n, err, pieces.Done(), want, wn, werr, whole.Done())
		}
		var scan Chunked
		if n, err := scan.Scan(data); n != wn || err != werr || scan.Done() != whole.Done() {
			t.Fatalf("Scan: got %d %v; Decode %d %v", n, err, wn, werr)
		}
		var inPlace Chunked
		buf := bytes.Clone(data)
		n, m, err := inPlace.DecodeInPlace(buf)
		if n != wn || err != werr || string(buf[:m]) != want || !bytes.Equal(buf[n:], data[n:]) {
			t.Fatalf("DecodeInPlace: got %d %q %v; Decode %d %q %v", n, buf[:m], err, wn, want, werr)
		}
		if werr != nil || !whole.Done() {
			return
		}
		var enc []byte
		if len(want) > 0 {
			enc = strconv.AppendInt(enc, int64(len(want)), 16)
			enc = append(enc, "\r\n"...)
			enc = append(enc, want...)
			enc = append(enc, "\r\n"...)
		}
		enc = append(enc, "0\r\n\r\n"...)
		var re Chunked
		if got, n, err := decodeAll(&re, enc, len(enc)); err != nil || got != want || n != len(enc) || !re.Done() {
			t.Fatalf("re-chunked %q: got %q %d %v", enc, got, n, err)
		}
	})
}

// FuzzRequestFields puts fuzzed field lines into an otherwise valid request, so that
// the framing, Connection and Host logic meets many more well-formed heads than
// byte-level mutation finds, each checked against net/http as in FuzzParseRequest.
func FuzzRequestFields(f *testing.F) {
	f.Add("Content-Length", "5", "Transfer-Encoding", "chunked")
	f.Add("Transfer-Encoding", "chunked", "Connection", "close, Transfer-Encoding")
	f.Add("Content-Length", "5", "content-length", "5")
	f.Add("Host", "b", "Connection", "keep-alive")
	f.Fuzz(func(t *testing.T, n1, v1, n2, v2 string) {
		for _, version := range []string{"HTTP/1.1", "HTTP/1.0"} {
			data := []byte("POST /p?q HTTP/1.1\r\nHost: a\r\n" + n1 + ": " + v1 + "\r\n" + n2 + ":" + v2 + "\r\n\r\n")
			if version == "HTTP/1.0" {
				data = []byte("POST /p?q HTTP/1.0\r\n" + n1 + ": " + v1 + "\r\n" + n2 + ":" + v2 + "\r\n\r\n")
			}
			var req Request
			n, err := ParseRequest(data, &req, Limits{})
			checkScanHead(t, data, err)
			if err != nil || req.Declined != DeclineNone {
				continue
			}
			checkNetHTTPRequest(t, data[:n], &req)
		}
	})
}
