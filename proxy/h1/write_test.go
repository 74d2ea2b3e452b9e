package h1

import (
	"net/netip"
	"testing"
)

func TestAppendRequestHead(t *testing.T) {
	client := netip.MustParseAddr("203.0.113.7")
	tests := []struct {
		name string
		in   string
		opts *RequestHeadOptions
		want string
	}{
		{
			name: "plain",
			in:   head("GET /x?y=1 HTTP/1.1", "Host: example.com", "Accept: */*"),
			opts: &RequestHeadOptions{ClientIP: client, Proto: "https", ForwardedHost: true},
			want: head("GET /x?y=1 HTTP/1.1", "Host: example.com", "Accept: */*",
				"X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https", "X-Forwarded-Host: example.com"),
		},
		{
			name: "nil options",
			in:   head("GET / HTTP/1.1", "host: a"),
			want: head("GET / HTTP/1.1", "Host: a"),
		},
		{
			name: "hop-by-hop and connection-named stripped",
			in: head("GET / HTTP/1.1", "Accept: */*", "Connection: keep-alive, X-Secret, x-other", "Keep-Alive: timeout=5",
				"Proxy-Connection: keep-alive", "TE: gzip", "Proxy-Authorization: Basic Zm9v", "X-Secret: 1", "X-Other: 2",
				"X_Other: 3", "X-Kept: 4", "Host: a"),
			opts: &RequestHeadOptions{},
			want: head("GET / HTTP/1.1", "Host: a", "Accept: */*", "X-Kept: 4"),
		},
		{
			name: "client forwarding fields replaced",
			in: head("GET / HTTP/1.1", "Host: a", "X-Forwarded-For: 1.2.3.4", "X-Forwarded-Proto: https",
				"X-Forwarded-Host: evil", "Forwarded: for=1.2.3.4", "X_Forwarded_For: 5.6.7.8", "x-forwarded_for: 9.9.9.9"),
			opts: &RequestHeadOptions{ClientIP: client, Proto: "http"},
			want: head("GET / HTTP/1.1", "Host: a", "X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: http"),
		},
		{
			name: "trusted peer's X-Forwarded-For extended",
			in:   head("GET / HTTP/1.1", "Host: a", "X-Forwarded-For: 1.2.3.4, 10.0.0.1", "x-forwarded-for: 10.0.0.2", "X-Forwarded-For:", "X_Forwarded_For: 6.6.6.6"),
			opts: &RequestHeadOptions{ClientIP: netip.MustParseAddr("::ffff:10.0.0.3"), TrustForwarded: true},
			want: head("GET / HTTP/1.1", "Host: a", "X-Forwarded-For: 1.2.3.4, 10.0.0.1, 10.0.0.2, 10.0.0.3"),
		},
		{
			name: "no client IP, no X-Forwarded-For",
			in:   head("GET / HTTP/1.1", "Host: a", "X-Forwarded-For: 1.2.3.4"),
			opts: &RequestHeadOptions{TrustForwarded: true},
			want: head("GET / HTTP/1.1", "Host: a"),
		},
		{
			name: "ipv6 client",
			in:   head("GET / HTTP/1.1", "Host: a"),
			opts: &RequestHeadOptions{ClientIP: netip.MustParseAddr("2001:db8::1")},
			want: head("GET / HTTP/1.1", "Host: a", "X-Forwarded-For: 2001:db8::1"),
		},
		{
			name: "content-length rewritten",
			in:   head("POST /f HTTP/1.1", "Content-Length: 5", "Host: a", "content-length: 5", "Content_Length: 99"),
			want: head("POST /f HTTP/1.1", "Host: a", "Content-Length: 5"),
		},
		{
			name: "chunked kept",
			in:   head("POST /f HTTP/1.1", "Host: a", "transfer-encoding: Chunked", "X: y"),
			want: head("POST /f HTTP/1.1", "Host: a", "X: y", "Transfer-Encoding: chunked"),
		},
		{
			name: "connection naming framing and host cannot remove them",
			in:   head("POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Connection: Content-Length, Host, X-Forwarded-For"),
			opts: &RequestHeadOptions{ClientIP: client},
			want: head("POST / HTTP/1.1", "Host: a", "Content-Length: 3", "X-Forwarded-For: 203.0.113.7"),
		},
		{
			name: "http/1.0 without host",
			in:   head("GET / HTTP/1.0", "Connection: keep-alive"),
			opts: &RequestHeadOptions{DefaultHost: "127.0.0.1:8000", Close: true},
			want: head("GET / HTTP/1.1", "Host: 127.0.0.1:8000", "Connection: close"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			if _, err := ParseRequest([]byte(tt.in), &req, Limits{}); err != nil {
				t.Fatal(err)
			}
			got := string(AppendRequestHead([]byte("prefix"), &req, tt.opts))
			if got != "prefix"+tt.want {
				t.Errorf("got\n%q; want\n%q", got, "prefix"+tt.want)
			}
			// The result is itself a valid request with the same meaning.
			var out Request
			n, err := ParseRequest([]byte(got[len("prefix"):]), &out, Limits{})
			if err != nil || n != len(tt.want) {
				t.Fatalf("reparse: got %d, %v", n, err)
			}
			if string(out.Method) != string(req.Method) || string(out.Target) != string(req.Target) ||
				out.Framing != req.Framing || out.ContentLength != req.ContentLength {
				t.Errorf("reparse: got %+v; want the meaning of %+v", out, req)
			}
		})
	}
}

func TestAppendResponseHead(t *testing.T) {
	hsts := Header{{Name: []byte("Strict-Transport-Security"), Value: []byte("max-age=31536000")}}
	tests := []struct {
		name   string
		in     string
		method string
		opts   *ResponseHeadOptions
		want   string
	}{
		{
			name: "plain",
			in:   head("HTTP/1.1 200 OK", "Content-Type: text/html", "Content-Length: 4"),
			want: head("HTTP/1.1 200 OK", "Content-Type: text/html", "Content-Length: 4"),
		},
		{
			name: "hop-by-hop stripped, hsts replaced",
			in: head("HTTP/1.1 200 OK", "Connection: keep-alive, X-Internal", "Keep-Alive: timeout=5", "X-Internal: 1",
				"strict-transport-security: max-age=0", "Proxy-Authenticate: Basic", "Upgrade: h2c", "Content-Length: 0"),
			opts: &ResponseHeadOptions{Extra: hsts},
			want: head("HTTP/1.1 200 OK", "Content-Length: 0", "Strict-Transport-Security: max-age=31536000"),
		},
		{
			name: "chunked stays chunked",
			in:   head("HTTP/1.1 201 Created", "Transfer-Encoding: chunked", "Trailer: X-Sum", "Location: /x"),
			want: head("HTTP/1.1 201 Created", "Location: /x", "Transfer-Encoding: chunked"),
		},
		{
			name: "until close",
			in:   head("HTTP/1.0 200 OK", "Content-Type: text/plain"),
			opts: &ResponseHeadOptions{KeepAlive: true},
			want: head("HTTP/1.1 200 OK", "Content-Type: text/plain", "Connection: close"),
		},
		{
			name: "close asked",
			in:   head("HTTP/1.1 500 Internal Server Error", "Content-Length: 2"),
			opts: &ResponseHeadOptions{Close: true, KeepAlive: true},
			want: head("HTTP/1.1 500 Internal Server Error", "Content-Length: 2", "Connection: close"),
		},
		{
			name: "keep-alive for http/1.0 client",
			in:   head("HTTP/1.1 200 OK", "Content-Length: 2"),
			opts: &ResponseHeadOptions{KeepAlive: true},
			want: head("HTTP/1.1 200 OK", "Content-Length: 2", "Connection: keep-alive"),
		},
		{
			name:   "head keeps length",
			in:     head("HTTP/1.1 200 OK", "Content-Length: 4173"),
			method: "HEAD",
			want:   head("HTTP/1.1 200 OK", "Content-Length: 4173"),
		},
		{
			name: "304 keeps length",
			in:   head("HTTP/1.1 304 Not Modified", "ETag: \"x\"", "Content-Length: 10"),
			want: head("HTTP/1.1 304 Not Modified", "ETag: \"x\"", "Content-Length: 10"),
		},
		{
			name: "204 drops length",
			in:   head("HTTP/1.1 204 No Content", "Content-Length: 0"),
			want: head("HTTP/1.1 204 No Content"),
		},
		{
			name: "empty reason",
			in:   head("HTTP/1.1 200", "Content-Length: 0"),
			want: head("HTTP/1.1 200 ", "Content-Length: 0"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			var resp Response
			if _, err := ParseResponse([]byte(tt.in), &resp, []byte(method), Limits{}); err != nil {
				t.Fatal(err)
			}
			got := string(AppendResponseHead(nil, &resp, tt.opts))
			if got != tt.want {
				t.Errorf("got\n%q; want\n%q", got, tt.want)
			}
			var out Response
			if _, err := ParseResponse([]byte(got), &out, []byte(method), Limits{}); err != nil {
				t.Fatalf("reparse: %v", err)
			}
			if out.Status != resp.Status || out.ContentLength != resp.ContentLength && resp.Status != 204 {
				t.Errorf("reparse: got %+v; want the meaning of %+v", out, resp)
			}
		})
	}
}

func TestAppend_NoAllocs(t *testing.T) {
	var req Request
	var resp Response
	ParseRequest([]byte(browserRequest), &req, Limits{})
	ParseResponse([]byte(djangoResponse), &resp, []byte("GET"), Limits{})
	ropts := &RequestHeadOptions{ClientIP: netip.MustParseAddr("203.0.113.7"), TrustForwarded: true, Proto: "https", ForwardedHost: true}
	sopts := &ResponseHeadOptions{Close: true, Extra: Header{{Name: []byte("Strict-Transport-Security"), Value: []byte("max-age=1")}}}
	dst := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		dst = AppendRequestHead(dst[:0], &req, ropts)
		dst = AppendResponseHead(dst[:0], &resp, sopts)
	})
	if allocs != 0 {
		t.Errorf("got %v allocs; want 0", allocs)
	}
}
