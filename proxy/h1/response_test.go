package h1

import (
	"strings"
	"testing"
)

func TestParseResponse(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		method    string
		status    int
		reason    string
		minor     int
		framing   Framing
		length    int64
		keepAlive bool
	}{
		{name: "length", in: head("HTTP/1.1 200 OK", "Content-Length: 12"),
			status: 200, reason: "OK", minor: 1, framing: FramingLength, length: 12, keepAlive: true},
		{name: "chunked", in: head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"),
			status: 200, reason: "OK", minor: 1, framing: FramingChunked, length: -1, keepAlive: true},
		{name: "until close", in: head("HTTP/1.1 200 OK", "Content-Type: text/plain"),
			status: 200, reason: "OK", minor: 1, framing: FramingClose, length: -1},
		{name: "close", in: head("HTTP/1.1 200 OK", "Content-Length: 0", "Connection: close"),
			status: 200, reason: "OK", minor: 1, framing: FramingLength, length: 0},
		{name: "reason with spaces", in: head("HTTP/1.1 404 Not  Found ", "Content-Length: 0"),
			status: 404, reason: "Not  Found ", minor: 1, framing: FramingLength, length: 0, keepAlive: true},
		{name: "empty reason", in: head("HTTP/1.1 200 ", "Content-Length: 0"),
			status: 200, minor: 1, framing: FramingLength, length: 0, keepAlive: true},
		{name: "no reason, no space", in: head("HTTP/1.1 200", "Content-Length: 0"),
			status: 200, minor: 1, framing: FramingLength, length: 0, keepAlive: true},
		{name: "head", in: head("HTTP/1.1 200 OK", "Content-Length: 4173"), method: "HEAD",
			status: 200, reason: "OK", minor: 1, framing: FramingNone, length: 4173, keepAlive: true},
		{name: "head chunked", in: head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"), method: "HEAD",
			status: 200, reason: "OK", minor: 1, framing: FramingNone, length: -1, keepAlive: true},
		{name: "204", in: head("HTTP/1.1 204 No Content"),
			status: 204, reason: "No Content", minor: 1, framing: FramingNone, length: -1, keepAlive: true},
		{name: "304", in: head("HTTP/1.1 304 Not Modified", "Content-Length: 50"),
			status: 304, reason: "Not Modified", minor: 1, framing: FramingNone, length: 50, keepAlive: true},
		{name: "100", in: head("HTTP/1.1 100 Continue"),
			status: 100, reason: "Continue", minor: 1, framing: FramingNone, length: -1, keepAlive: true},
		{name: "103", in: head("HTTP/1.1 103 Early Hints", "Link: </s.css>; rel=preload"),
			status: 103, reason: "Early Hints", minor: 1, framing: FramingNone, length: -1, keepAlive: true},
		{name: "connect 200", in: head("HTTP/1.1 200 Connection Established"), method: "CONNECT",
			status: 200, reason: "Connection Established", minor: 1, framing: FramingNone, length: -1},
		{name: "http/1.0", in: head("HTTP/1.0 200 OK", "Content-Length: 1"),
			status: 200, reason: "OK", minor: 0, framing: FramingLength, length: 1},
		{name: "http/1.0 keep-alive", in: head("HTTP/1.0 200 OK", "Content-Length: 1", "Connection: Keep-Alive"),
			status: 200, reason: "OK", minor: 0, framing: FramingLength, length: 1, keepAlive: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			var resp Response
			n, err := ParseResponse([]byte(tt.in+"body"), &resp, []byte(method), Limits{})
			if err != nil {
				t.Fatalf("ParseResponse: %v", err)
			}
			if n != len(tt.in) {
				t.Errorf("got n %d; want %d", n, len(tt.in))
			}
			got := []any{resp.Status, string(resp.Reason), resp.Minor, resp.Framing, resp.ContentLength, resp.KeepAlive}
			want := []any{tt.status, tt.reason, tt.minor, tt.framing, tt.length, tt.keepAlive}
			names := []string{"status", "reason", "minor", "framing", "length", "keepAlive"}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("got %s %v; want %v", names[i], got[i], want[i])
				}
			}
		})
	}
}

func TestParseResponse_Refused(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"CL and TE", head("HTTP/1.1 200 OK", "Content-Length: 3", "Transfer-Encoding: chunked")},
		{"TE and CL", head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked", "Content-Length: 3")},
		{"CL differing", head("HTTP/1.1 200 OK", "Content-Length: 3", "Content-Length: 4")},
		{"CL sign", head("HTTP/1.1 200 OK", "Content-Length: +3")},
		{"TE gzip", head("HTTP/1.1 200 OK", "Transfer-Encoding: gzip")},
		{"TE gzip, chunked", head("HTTP/1.1 200 OK", "Transfer-Encoding: gzip, chunked")},
		{"TE chunked, gzip", head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked, gzip")},
		{"TE xchunked", head("HTTP/1.1 200 OK", "Transfer-Encoding: xchunked")},
		{"TE on 1.0", head("HTTP/1.0 200 OK", "Transfer-Encoding: chunked")},
		{"TE space before colon", head("HTTP/1.1 200 OK", "Transfer-Encoding : chunked")},
		{"obs-fold", head("HTTP/1.1 200 OK", "X: a", " b")},
		{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n"},
		{"NUL in value", head("HTTP/1.1 200 OK", "X: \x00")},
		{"CR in reason", head("HTTP/1.1 200 O\rK")},
		{"lowercase version", head("http/1.1 200 OK")},
		{"version 2", head("HTTP/2.0 200 OK")},
		{"version 1.2", head("HTTP/1.2 200 OK")},
		{"two digit status", head("HTTP/1.1 20 OK")},
		{"four digit status", head("HTTP/1.1 2000 OK")},
		{"status 099", head("HTTP/1.1 099 Odd")},
		{"status 600", head("HTTP/1.1 600 Odd")},
		{"status with sign", head("HTTP/1.1 +20 OK")},
		{"two spaces", head("HTTP/1.1  200 OK")},
		{"short", head("HTTP/1.1")},
		{"bad name", head("HTTP/1.1 200 OK", "Set Cookie: a=b")},
		{"huge", head("HTTP/1.1 200 OK", "X: "+strings.Repeat("a", DefaultMaxHeadBytes))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp Response
			_, err := ParseResponse([]byte(tt.in), &resp, []byte("GET"), Limits{})
			if got := statusOf(err); got != 502 {
				t.Errorf("got %v (status %d); want status 502", err, got)
			}
		})
	}
}

func TestParseResponse_Incremental(t *testing.T) {
	in := []byte(djangoResponse)
	var resp Response
	for i := 0; i < len(in); i++ {
		if _, err := ParseResponse(in[:i], &resp, []byte("GET"), Limits{}); err != ErrIncomplete {
			t.Fatalf("prefix %d: got %v; want ErrIncomplete", i, err)
		}
	}
	if n, err := ParseResponse(in, &resp, []byte("GET"), Limits{}); err != nil || n != len(in) {
		t.Fatalf("got %d, %v", n, err)
	}
	if resp.ContentLength != 4173 || len(resp.Header) != 13 {
		t.Errorf("got length %d, %d fields", resp.ContentLength, len(resp.Header))
	}
}

func TestParseResponse_NoAllocs(t *testing.T) {
	in := []byte(djangoResponse)
	var resp Response
	method := []byte("GET")
	ParseResponse(in, &resp, method, Limits{})
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseResponse(in, &resp, method, Limits{}); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("got %v allocs per parse; want 0", allocs)
	}
}
