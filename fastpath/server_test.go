package fastpath

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
	"edgeproxy/proxy"
)

// rawBackend is a target that records every request it reads (normalized by
// net/http's parser) and answers with a canned response chosen by path.
type rawBackend struct {
	ln    net.Listener
	mu    sync.Mutex
	seen  []string // normalized requests
	conns int      // connections accepted
}

// Canned responses by path; "%s" in a body is replaced by nothing (kept simple).
var cannedResponses = map[string]string{
	"/":          "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Backend: yes\r\n\r\nhello",
	"/chunked":   "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
	"/nocontent": "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
	"/notmod":    "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 99\r\n\r\n",
	"/close":     "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
	"/hop":       "HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
	"/hints":     "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"/big":       "", // filled in below
}

func init() {
	body := strings.Repeat("0123456789abcdef", 200<<10/16)
	cannedResponses["/big"] = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

func startRawBackend(t *testing.T) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns++
			b.mu.Unlock()
			go b.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return b
}

func (b *rawBackend) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(req.Body)
		b.mu.Lock()
		b.seen = append(b.seen, normalizeRequest(req, body))
		b.mu.Unlock()
		path := req.URL.Path
		resp, ok := cannedResponses[path]
		if !ok {
			resp = cannedResponses["/"]
		}
		if req.Method == "HEAD" {
			resp = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
		}
		c.Write([]byte(resp))
		if strings.HasPrefix(resp, "HTTP/1.0") {
			return
		}
	}
}

func (b *rawBackend) requests() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.seen...)
}

// normalizeRequest is what the target saw, independent of field order, spelling of names
// and of the body's framing.
func normalizeRequest(r *http.Request, body []byte) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s %s host=%s\n", r.Method, r.RequestURI, r.Host)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&sb, "%s: %q\n", k, r.Header[k])
	}
	fmt.Fprintf(&sb, "body=%s", shortBody(body))
	return sb.String()
}

// shortBody shows a body, or its length and hash when long.
func shortBody(b []byte) string {
	if len(b) <= 64 {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%d bytes sha256:%x", len(b), sha256.Sum256(b))
}

// normalizeResponse is what the client got, independent of framing and Date.
func normalizeResponse(resp *http.Response) string {
	body, err := io.ReadAll(resp.Body)
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d\n", resp.StatusCode)
	keys := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		switch k {
		case "Date", "Content-Length", "Transfer-Encoding", "Connection":
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&sb, "%s: %q\n", k, resp.Header[k])
	}
	fmt.Fprintf(&sb, "body=%s err=%v", shortBody(body), err)
	return sb.String()
}

type testServer struct {
	addr string
	logs *testutil.Buffer
}

// startServer runs a Server with the fast path on or off in front of the targets.
func startServer(t *testing.T, fast bool, opts Options, useTLS bool) *testServer {
	t.Helper()
	return startServerTimeout(t, fast, opts, useTLS, 60*time.Second)
}

// startServerTimeout is startServer with the response-header timeout of both paths.
func startServerTimeout(t *testing.T, fast bool, opts Options, useTLS bool, headerTimeout time.Duration) *testServer {
	t.Helper()
	return startServerWith(t, fast, opts, useTLS, headerTimeout, nil)
}

// startServerWith is startServerTimeout with configure, when not nil, changing the
// Server's options (and its net/http server) before it starts.
func startServerWith(t *testing.T, fast bool, opts Options, useTLS bool, headerTimeout time.Duration, configure func(*ServerOptions)) *testServer {
	t.Helper()
	up := NewUpstream(5*time.Second, headerTimeout, nil)
	if opts.Transport == nil {
		opts.Transport = proxy.NewTransport(5*time.Second, headerTimeout, nil)
	}
	logs := &testutil.Buffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	opts.AccessLog = true
	h := proxy.New(opts)
	httpSrv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug)}
	backend := &Backend{Handler: h, Upstream: up}
	so := ServerOptions{Backend: func() *Backend { return backend }, HTTP: httpSrv, FastPath: fast,
		ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
	if configure != nil {
		configure(&so)
	}
	s := NewServer(so)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if useTLS {
		cert := testutil.SelfSignedCert(t, "localhost")
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return &testServer{addr: ln.Addr().String(), logs: logs}
}

// exchange sends raw bytes on a new connection and reads responses until the server
// closes it or the deadline passes.
func exchange(t *testing.T, addr string, raw string, useTLS bool, method string) []*http.Response {
	t.Helper()
	var c net.Conn
	var err error
	if useTLS {
		c, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []*http.Response
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return out
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		out = append(out, resp)
		if resp.Close {
			return out
		}
	}
}

// The differential test: every request of the corpus goes through the fast path and
// through net/http (fast path off), each in front of its own recording target. Both
// must give the client the same responses (status, fields, body; framing, Date and
// Connection aside, since net/http re-frames bodies) and the target the same requests
// (method, target, Host, fields, body). Refused requests must get the same status on
// both, close the connection, and reach neither target.
func TestDifferential_FastPathMatchesNetHTTP(t *testing.T) {
	corpus := []struct {
		name, raw, method string
		refused           int // expected status when the edge refuses; 0 for valid requests
	}{
		{name: "get", raw: "GET /?q=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"},
		{name: "keep-alive pair", raw: "GET / HTTP/1.1\r\nHost: app.test\r\n\r\nGET /chunked HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"},
		{name: "hop-by-hop fields spelled with _", raw: "GET / HTTP/1.1\r\nHost: app.test\r\nKeep_Alive: timeout=5\r\nProxy_Connection: keep-alive\r\nConnection: x-private\r\nX_Private: secret\r\nX_Forwarded_Host: evil\r\nX-Kept_Field: yes\r\n\r\n"},
		{name: "spoofed forwarding", raw: "GET / HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\nX_Forwarded_For: 7.7.7.7\r\nConnection: close\r\n\r\n"},
		{name: "connection-named fields", raw: "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: X-Foo, close\r\nX-Foo: bar\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\n\r\n"},
		{name: "post length", raw: "POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"},
		{name: "post chunked", raw: "POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"},
		{name: "head", method: "HEAD", raw: "HEAD / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"},
		{name: "http/1.0", raw: "GET /chunked HTTP/1.0\r\nHost: app.test\r\n\r\n"},
		{name: "http/1.0 without host", raw: "GET / HTTP/1.0\r\n\r\n"},
		{name: "no content", raw: "GET /nocontent HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"},
		{name: "not modified", raw: "GET /notmod HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"},
		{name: "close-delimited response", raw: "GET /close HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"},
		{name: "hop-by-hop response fields", raw: "GET /hop HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"},
		{name: "big response", raw: "GET /big HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"},

		{name: "CL.TE", refused: 400, raw: "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"},
		{name: "TE.CL", refused: 400, raw: "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"},
		{name: "TE obfuscated", refused: 501, raw: "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"},
		{name: "TE space before colon", refused: 400, raw: "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"},
		{name: "TE chunked not last", refused: 400, raw: "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"},
		{name: "conflicting CL", refused: 400, raw: "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"},
		{name: "signed CL", refused: 400, raw: "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: +3\r\n\r\nabc"},
		{name: "obs-fold", refused: 400, raw: "GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\r\n b\r\n\r\n"},
		{name: "bare LF", refused: 400, raw: "GET / HTTP/1.1\nHost: app.test\n\n"},
		{name: "NUL in value", refused: 400, raw: "GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\x00b\r\n\r\n"},
		{name: "space in name", refused: 400, raw: "GET / HTTP/1.1\r\nHost: app.test\r\nX A: b\r\n\r\n"},
		{name: "double space", refused: 400, raw: "GET  / HTTP/1.1\r\nHost: app.test\r\n\r\n"},
		{name: "missing host", refused: 400, raw: "GET / HTTP/1.1\r\n\r\n"},
		{name: "two hosts", refused: 400, raw: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"},
		{name: "bad version", refused: 505, raw: "GET / HTTP/2.0\r\nHost: app.test\r\n\r\n"},
		{name: "second request smuggles", refused: 400, raw: "GET / HTTP/1.1\r\nHost: app.test\r\n\r\nGET / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	}
	for _, useTLS := range []bool{false, true} {
		for _, tc := range corpus {
			t.Run(fmt.Sprintf("%s/tls=%v", tc.name, useTLS), func(t *testing.T) {
				var got [2][]string
				var targets [2][]string
				for i, fast := range []bool{true, false} {
					b := startRawBackend(t)
					s := startServer(t, fast, Options{Picker: pickerForAddr(b.ln.Addr().String())}, useTLS)
					for _, resp := range exchange(t, s.addr, tc.raw, useTLS, tc.method) {
						got[i] = append(got[i], normalizeResponse(resp))
					}
					time.Sleep(20 * time.Millisecond)
					for _, r := range b.requests() {
						targets[i] = append(targets[i], strings.ReplaceAll(r, b.ln.Addr().String(), "TARGET"))
					}
					if tc.refused != 0 {
						last := len(got[i]) - 1
						if last < 0 || !strings.HasPrefix(got[i][last], fmt.Sprint(tc.refused)) {
							t.Errorf("fast=%v: responses %q; want the last to be %d", fast, got[i], tc.refused)
						}
						got[i] = []string{fmt.Sprint(len(got[i]))} // refusal pages differ in text only
						if strings.Contains(strings.Join(targets[i], ""), "SMUGGLED") || strings.Contains(tc.name, "CL") && len(targets[i]) > 0 {
							t.Errorf("fast=%v: a refused request reached the target: %q", fast, targets[i])
						}
					}
				}
				if strings.Join(got[0], "\n---\n") != strings.Join(got[1], "\n---\n") {
					t.Errorf("client saw\nfast path:\n%s\nnet/http:\n%s", strings.Join(got[0], "\n---\n"), strings.Join(got[1], "\n---\n"))
				}
				if strings.Join(targets[0], "\n---\n") != strings.Join(targets[1], "\n---\n") {
					t.Errorf("target saw\nfast path:\n%s\nnet/http:\n%s", strings.Join(targets[0], "\n---\n"), strings.Join(targets[1], "\n---\n"))
				}
			})
		}
	}
}
