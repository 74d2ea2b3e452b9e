package fastpath

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
	"edgeproxy/proxy"
	"edgeproxy/telemetry"
)

func dialRaw(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// Keep-alive requests from a client reuse one pooled connection to the target.
func TestFastPath_ReusesUpstreamConnections(t *testing.T) {
	b := startRawBackend(t)
	s := startServer(t, true, Options{Picker: pickerForAddr(b.ln.Addr().String())}, false)
	c, br := dialRaw(t, s.addr)
	for i := 0; i < 50; i++ {
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
		if resp, body := readResp(t, br); resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns != 1 {
		t.Errorf("target saw %d connections for 50 keep-alive requests; want 1", b.conns)
	}
	if !strings.Contains(s.logs.String(), "engine=fast") {
		t.Error("requests did not take the fast path")
	}
}

// Pipelined requests are answered in order.
func TestFastPath_Pipelined(t *testing.T) {
	b := startRawBackend(t)
	s := startServer(t, true, Options{Picker: pickerForAddr(b.ln.Addr().String())}, false)
	c, br := dialRaw(t, s.addr)
	fmt.Fprint(c, "GET /chunked HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n")
	for i, want := range []int{200, 200, 204} {
		if resp, _ := readResp(t, br); resp.StatusCode != want {
			t.Errorf("response %d: %d; want %d", i, resp.StatusCode, want)
		}
	}
	reqs := b.requests()
	if len(reqs) != 3 || !strings.Contains(reqs[1], `body="abc"`) {
		t.Errorf("target saw %q", reqs)
	}
}

// A WebSocket upgrade (which the fast path declines) is handed to net/http on the same
// connection, after a request the fast path served, without the client noticing.
func TestFastPath_HandsUpgradeToNetHTTP(t *testing.T) {
	backend := testutil.WebSocketEchoBackend(t)
	s := startServer(t, true, Options{Picker: pickerForAddr(backend.Listener.Addr().String())}, true)
	conn, err := tls.Dial("tcp", s.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
	if resp, body := readResp(t, br); resp.StatusCode != 200 || body != "plain" {
		t.Fatalf("first request: %d %q", resp.StatusCode, body)
	}
	fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v; want 101", resp, err)
	}
	fmt.Fprint(conn, "hello\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo hello\n" {
		t.Errorf("got %q, %v; want the echo through the tunnel\n%s", line, err, s.logs.String())
	}
	conn.Close() // ends the tunnel, and with it the upgraded request's access line
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(s.logs.String(), "engine=net/http") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	logs := s.logs.String()
	if !strings.Contains(logs, "engine=fast") || !strings.Contains(logs, "engine=net/http") {
		t.Errorf("want one request on each engine:\n%s", logs)
	}
}

// Expect: 100-continue goes through net/http, which sends the interim response.
func TestFastPath_ExpectContinue(t *testing.T) {
	b := startRawBackend(t)
	s := startServer(t, true, Options{Picker: pickerForAddr(b.ln.Addr().String())}, false)
	c, br := dialRaw(t, s.addr)
	fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("got %v %v; want 100 Continue", resp, err)
	}
	fmt.Fprint(c, "hello")
	if resp, body := readResp(t, br); resp.StatusCode != 200 || body != "hello" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	if reqs := b.requests(); len(reqs) != 1 || !strings.Contains(reqs[0], `body="hello"`) {
		t.Errorf("target saw %q", reqs)
	}
}

// HTTP/2 clients are served by net/http's HTTP/2 server.
func TestFastPath_HTTP2GoesToNetHTTP(t *testing.T) {
	b := startRawBackend(t)
	s := startServer(t, true, Options{Picker: pickerForAddr(b.ln.Addr().String())}, true)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	resp, err := client.Get("https://" + s.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Proto != "HTTP/2.0" || string(body) != "hello" {
		t.Errorf("got %s %q; want HTTP/2.0 hello", resp.Proto, body)
	}
}

// An interim 103 from the target reaches the client before the final response.
func TestFastPath_RelaysEarlyHints(t *testing.T) {
	b := startRawBackend(t)
	s := startServer(t, true, Options{Picker: pickerForAddr(b.ln.Addr().String())}, false)
	c, br := dialRaw(t, s.addr)
	fmt.Fprint(c, "GET /hints HTTP/1.1\r\nHost: a\r\n\r\n")
	line, _ := br.ReadString('\n')
	if line != "HTTP/1.1 103 Early Hints\r\n" {
		t.Errorf("first line %q; want the 103", line)
	}
}

// The fast path answers failures with the same status and body as the net/http path.
func TestFastPath_Errors(t *testing.T) {
	dead := testutil.DeadAddr(t)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	tests := []struct {
		name          string
		opts          Options
		headerTimeout time.Duration
		raw           string
		status        int
	}{
		{"dead target", Options{Picker: pickerForAddr(dead)}, time.Minute, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 502},
		{"timeout", Options{Picker: pickerForAddr(slow.Listener.Addr().String())}, 100 * time.Millisecond, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 504},
		{"empty pool", Options{Picker: staticPicker{}}, time.Minute, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 503},
		{"body too large", Options{Picker: pickerForAddr(dead), MaxBodyBytes: 4}, time.Minute, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789", 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, fast := range []bool{true, false} {
				s := startServerTimeout(t, fast, tt.opts, false, tt.headerTimeout)
				c, br := dialRaw(t, s.addr)
				fmt.Fprint(c, tt.raw)
				resp, body := readResp(t, br)
				if resp.StatusCode != tt.status || body != errorBody(tt.status) {
					t.Errorf("fast=%v: got %d %q; want %d %q", fast, resp.StatusCode, body, tt.status, errorBody(tt.status))
				}
			}
		})
	}
}

// A refused connection is retried on another target by the fast path too.
func TestFastPath_RetriesRefusedConnection(t *testing.T) {
	var hits atomic.Int64
	live := testutil.EchoBackend(t, &hits)
	b := healthyPool(testutil.DeadAddr(t), live.Listener.Addr().String())
	s := startServer(t, true, Options{Picker: b, Passive: b, Retries: 1}, false)
	for i := 0; i < 4; i++ {
		c, br := dialRaw(t, s.addr)
		fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\npayload")
		if resp, body := readResp(t, br); resp.StatusCode != 200 || body != "ok:payload" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
}

// cannedTarget answers every request head with the same response, without allocating, so
// that a benchmark counts the edge's allocations only.
func cannedTarget(tb testing.TB, response string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				resp := []byte(response)
				n := 0
				for {
					k, err := c.Read(buf[n:])
					if err != nil {
						return
					}
					n += k
					for {
						i := bytes.Index(buf[:n], []byte("\r\n\r\n"))
						if i < 0 {
							break
						}
						n = copy(buf, buf[i+4:n])
						if _, err := c.Write(resp); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkFastPath measures a keep-alive GET through the fast path, client and target
// on loopback and allocation-free; allocs/op is the edge's, with the real metrics.
func BenchmarkFastPath(b *testing.B) {
	benchmarkFastPath(b, telemetry.New(), false)
}

// BenchmarkFastPath_NoMetrics is the same without metrics, to see their cost.
func BenchmarkFastPath_NoMetrics(b *testing.B) {
	benchmarkFastPath(b, nopObserver{}, false)
}

// BenchmarkFastPath_TLS is BenchmarkFastPath over TLS (the client's TLS allocates
// nothing per request either), with the 421 check of the Host against the certificate
// served.
func BenchmarkFastPath_TLS(b *testing.B) {
	benchmarkFastPath(b, telemetry.New(), true)
}

func benchmarkFastPath(b *testing.B, obs proxy.Observer, useTLS bool) {
	target := cannedTarget(b, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	bal := healthyPool(target)
	h := proxy.New(Options{Picker: bal, Passive: bal, Retries: 1, Observer: obs})
	backend := &Backend{Handler: h, Upstream: NewUpstream(5*time.Second, time.Minute, nil)}
	cert := testutil.SelfSignedCert(b, "localhost", "*.test", "app.test")
	s := NewServer(ServerOptions{Backend: func() *Backend { return backend }, HTTP: &http.Server{Handler: h}, FastPath: true,
		ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10,
		Certificate: func(*tls.ConnectionState) *x509.Certificate { return cert.Leaf }})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	var c net.Conn
	var err error
	if useTLS {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
		go s.Serve(ln)
		c, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	} else {
		go s.Serve(ln)
		c, err = net.Dial("tcp", ln.Addr().String())
	}
	defer s.Close()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("GET /index.html?q=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: bench\r\nAccept: */*\r\nAccept-Language: en\r\nCookie: sessionid=abc\r\n\r\n")
	buf := make([]byte, 4096)
	want := len("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	roundTrip := func() {
		c.Write(req)
		for n := 0; n < want; {
			k, err := c.Read(buf[n:])
			if err != nil {
				b.Fatal(err)
			}
			n += k
		}
	}
	for i := 0; i < 100; i++ { // warm the pools
		roundTrip()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		roundTrip()
	}
}

type nopObserver struct{}

func (nopObserver) Request(int, string, string, string, time.Duration) {}
func (nopObserver) FailOpen(string)                                    {}
func (nopObserver) Retry(string, string)                               {}
func (nopObserver) ProxyError(string)                                  {}

// The retry rules hold on the fast path too: a GET reset before its response is retried
// on another target; a POST whose body reached a target is not.
func TestFastPath_RetryRules(t *testing.T) {
	for _, tc := range []struct {
		method, raw string
		status      int
		liveHits    int64
	}{
		{"GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200, 1},
		{"POST", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nonce", 502, 0},
	} {
		t.Run(tc.method, func(t *testing.T) {
			var resetHits, liveHits atomic.Int64
			dying := testutil.ResettingBackend(t, &resetHits)
			live := testutil.EchoBackend(t, &liveHits)
			b := healthyPool(dying.Listener.Addr().String(), live.Listener.Addr().String())
			b.Next()
			b.Next()
			s := startServer(t, true, Options{Picker: b, Passive: b, Retries: 1}, false)
			c, br := dialRaw(t, s.addr)
			fmt.Fprint(c, tc.raw)
			if resp, _ := readResp(t, br); resp.StatusCode != tc.status || liveHits.Load() != tc.liveHits || resetHits.Load() != 1 {
				t.Errorf("got %d with %d hits on the dying and %d on the live target; want %d, 1, %d",
					resp.StatusCode, resetHits.Load(), liveHits.Load(), tc.status, tc.liveHits)
			}
		})
	}
}

// A body over max_body_bytes is read and dropped (when moderate), answered 413, and the
// connection goes on, as with net/http: a client still sending it sees the 413, not a reset.
func TestFastPath_TooLargeBodyKeepsConnection(t *testing.T) {
	b := startRawBackend(t)
	s := startServer(t, true, Options{Picker: pickerForAddr(b.ln.Addr().String()), MaxBodyBytes: 4}, false)
	c, br := dialRaw(t, s.addr)
	fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n")
	fmt.Fprint(c, strings.Repeat("x", 20000))
	if resp, _ := readResp(t, br); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("got %d; want 413", resp.StatusCode)
	}
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, body := readResp(t, br); resp.StatusCode != 200 || body != "hello" {
		t.Errorf("next request on the connection: %d %q; want 200 hello", resp.StatusCode, body)
	}
	if reqs := b.requests(); len(reqs) != 1 {
		t.Errorf("target saw %d requests; want only the GET", len(reqs))
	}
}
