package h1

import (
	"net/netip"
	"testing"
)

// browserRequest is what a current browser sends for a page: 12 fields, ~500 bytes.
const browserRequest = "GET /admin/login/?next=/admin/ HTTP/1.1\r\n" +
	"Host: www.example.com\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
	"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n" +
	"Accept-Language: en-US,en;q=0.5\r\n" +
	"Accept-Encoding: gzip, deflate, br, zstd\r\n" +
	"Referer: https://www.example.com/admin/\r\n" +
	"Connection: keep-alive\r\n" +
	"Cookie: csrftoken=Zq3bN1s0aVvQ8mXo2yLkP4tR7uWcE9dH; sessionid=k2j3h4g5f6d7s8a9\r\n" +
	"Upgrade-Insecure-Requests: 1\r\n" +
	"Sec-Fetch-Dest: document\r\n" +
	"Sec-Fetch-Mode: navigate\r\n" +
	"Sec-Fetch-Site: same-origin\r\n" +
	"\r\n"

// djangoResponse is a typical response head from Django under gunicorn.
const djangoResponse = "HTTP/1.1 200 OK\r\n" +
	"Server: gunicorn\r\n" +
	"Date: Tue, 03 Jun 2025 10:00:00 GMT\r\n" +
	"Connection: keep-alive\r\n" +
	"Content-Type: text/html; charset=utf-8\r\n" +
	"Expires: Tue, 03 Jun 2025 10:00:00 GMT\r\n" +
	"Cache-Control: max-age=0, no-cache, no-store, must-revalidate, private\r\n" +
	"Vary: Cookie\r\n" +
	"X-Frame-Options: DENY\r\n" +
	"Content-Length: 4173\r\n" +
	"X-Content-Type-Options: nosniff\r\n" +
	"Referrer-Policy: same-origin\r\n" +
	"Cross-Origin-Opener-Policy: same-origin\r\n" +
	"Set-Cookie: csrftoken=Zq3bN1s0aVvQ8mXo2yLkP4tR7uWcE9dH; expires=Tue, 02 Jun 2026 10:00:00 GMT; Max-Age=31449600; Path=/; SameSite=Lax\r\n" +
	"\r\n"

func BenchmarkParseRequest(b *testing.B) {
	in := []byte(browserRequest)
	var req Request
	b.ReportAllocs()
	measureCPU(b)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := ParseRequest(in, &req, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseResponse(b *testing.B) {
	in := []byte(djangoResponse)
	method := []byte("GET")
	var resp Response
	b.ReportAllocs()
	measureCPU(b)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := ParseResponse(in, &resp, method, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkScanHead(b *testing.B) {
	in := []byte(browserRequest)
	b.ReportAllocs()
	measureCPU(b)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if ready, _ := ScanHead(in, 0, 0); !ready {
			b.Fatal("not ready")
		}
	}
}

func BenchmarkAppendRequestHead(b *testing.B) {
	var req Request
	if _, err := ParseRequest([]byte(browserRequest), &req, Limits{}); err != nil {
		b.Fatal(err)
	}
	opts := &RequestHeadOptions{ClientIP: netip.MustParseAddr("203.0.113.7"), Proto: "https", ForwardedHost: true}
	dst := make([]byte, 0, 1024)
	b.ReportAllocs()
	measureCPU(b)
	for b.Loop() {
		dst = AppendRequestHead(dst[:0], &req, opts)
	}
}

func BenchmarkAppendResponseHead(b *testing.B) {
	var resp Response
	if _, err := ParseResponse([]byte(djangoResponse), &resp, []byte("GET"), Limits{}); err != nil {
		b.Fatal(err)
	}
	opts := &ResponseHeadOptions{Extra: Header{{Name: []byte("Strict-Transport-Security"), Value: []byte("max-age=31536000")}}}
	dst := make([]byte, 0, 1024)
	b.ReportAllocs()
	measureCPU(b)
	for b.Loop() {
		dst = AppendResponseHead(dst[:0], &resp, opts)
	}
}

// BenchmarkChunkedScan checks 64 KiB of 4 KiB chunks, as the proxy forwards them.
func BenchmarkChunkedScan(b *testing.B) {
	var body []byte
	chunk := make([]byte, 4096)
	for i := 0; i < 16; i++ {
		body = append(body, "1000\r\n"...)
		body = append(body, chunk...)
		body = append(body, "\r\n"...)
	}
	body = append(body, "0\r\n\r\n"...)
	var c Chunked
	b.ReportAllocs()
	measureCPU(b)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		c.Reset()
		if n, err := c.Scan(body); err != nil || n != len(body) || !c.Done() {
			b.Fatal(n, err)
		}
	}
}
