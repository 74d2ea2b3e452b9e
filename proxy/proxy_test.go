package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
	"edgeproxy/pool"
)

// staticPicker always picks the same target.
type staticPicker struct{ t *pool.Target }

func (p staticPicker) Next() pool.Pick                   { return pool.Pick{Target: p.t} }
func (p staticPicker) NextExcept(*pool.Target) pool.Pick { return p.Next() }

func pickerFor(srv *httptest.Server) staticPicker {
	return staticPicker{&pool.Target{Addr: srv.Listener.Addr().String()}}
}

type countingObserver struct {
	mu    sync.Mutex
	codes []int
}

func (o *countingObserver) Request(code int, pool, route, target string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.codes = append(o.codes, code)
}
func (o *countingObserver) FailOpen(string)      {}
func (o *countingObserver) Retry(string, string) {}
func (o *countingObserver) ProxyError(string)    {}

func frontend(t *testing.T, opts Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(New(opts))
	t.Cleanup(srv.Close)
	return srv
}

// Django's view of the client must not be spoofable: client-supplied forwarding headers
// are replaced, Host passes unchanged, X-Forwarded-Proto says https.
func TestForwardingHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	hosts := make(chan string, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		hosts <- r.Host
	}))
	defer backend.Close()
	front := frontend(t, Options{Picker: pickerFor(backend)})

	req, _ := http.NewRequest("GET", front.URL+"/x?y=1", nil)
	req.Host = "app.test"
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Forwarded-Proto", "http")
	req.Header.Set("X-Forwarded-Host", "evil.test")
	req.Header.Set("Forwarded", "for=6.6.6.6")
	req.Header.Set("Connection", "X-Secret")
	req.Header.Set("X-Secret", "hop")
	resp, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := <-got
	for name, want := range map[string]string{
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "https",
		"X-Forwarded-Host":  "app.test",
		"Forwarded":         "",
		"X-Secret":          "", // named in Connection: hop-by-hop
	} {
		if g := strings.Join(h.Values(name), ","); g != want {
			t.Errorf("%s: got %q; want %q", name, g, want)
		}
	}
	if host := <-hosts; host != "app.test" {
		t.Errorf("Host: got %q; want app.test", host)
	}
}

// A trusted proxy in front (another LB) keeps its X-Forwarded-For and -Proto.
func TestForwardingHeaders_TrustedProxyKept(t *testing.T) {
	got := make(chan http.Header, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() }))
	defer backend.Close()
	front := httptest.NewServer(New(Options{Picker: pickerFor(backend), TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}))
	defer front.Close()
	req, _ := http.NewRequest("GET", front.URL, nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	req.Header.Set("X-Forwarded-Proto", "https")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := <-got
	if g := h.Get("X-Forwarded-For"); g != "203.0.113.7, 127.0.0.1" {
		t.Errorf("X-Forwarded-For: got %q; want %q", g, "203.0.113.7, 127.0.0.1")
	}
	if g := h.Get("X-Forwarded-Proto"); g != "https" {
		t.Errorf("X-Forwarded-Proto: got %q; want https", g)
	}
}

func TestErrors(t *testing.T) {
	deadAddr := testutil.DeadAddr(t)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()

	tests := []struct {
		name   string
		opts   Options
		body   string
		status int
	}{
		{"dead target is 502", Options{Picker: staticPicker{&pool.Target{Addr: deadAddr}}}, "", http.StatusBadGateway},
		{"response header timeout is 504", Options{Picker: pickerFor(slow), Transport: NewTransport(time.Second, 100*time.Millisecond, nil)}, "", http.StatusGatewayTimeout},
		{"empty pool is 503", Options{Picker: staticPicker{}}, "", http.StatusServiceUnavailable},
		{"body over the limit is 413", Options{Picker: pickerFor(slow), MaxBodyBytes: 4}, "too long", http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obs := &countingObserver{}
			tt.opts.Observer = obs
			front := frontend(t, tt.opts)
			resp, err := front.Client().Post(front.URL, "text/plain", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("got status %d; want %d", resp.StatusCode, tt.status)
			}
			// Short, plain, and without internal detail (no address, no Go error text).
			if want := fmt.Sprintf("%d %s\n", tt.status, http.StatusText(tt.status)); string(body) != want {
				t.Errorf("got body %q; want %q", body, want)
			}
			if obs.codes[0] != tt.status {
				t.Errorf("observer got %d; want %d", obs.codes[0], tt.status)
			}
		})
	}
}

// Server-sent events reach the client as they are written, not when the response ends.
func TestStreaming_ServerSentEventsFlushed(t *testing.T) {
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: two\n\n")
	}))
	defer backend.Close()
	defer close(release)
	front := frontend(t, Options{Picker: pickerFor(backend)})
	resp, err := front.Client().Get(front.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(resp.Body).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "data: one\n" {
			t.Errorf("got %q; want the first event", l)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("first event not delivered while the stream is open")
	}
}

// WebSocket upgrades pass through: the 101 and then bytes both ways.
func TestUpgrade_WebSocketPassesThrough(t *testing.T) {
	backend := testutil.WebSocketEchoBackend(t)
	obs := &countingObserver{}
	front := frontend(t, Options{Picker: pickerFor(backend), Observer: obs})

	conn, err := tls.Dial("tcp", front.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("got %d; want 101", resp.StatusCode)
	}
	fmt.Fprint(conn, "hello\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo hello\n" {
		t.Errorf("got %q, %v; want the echo through the tunnel", line, err)
	}
	conn.Close()
	time.Sleep(50 * time.Millisecond)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.codes) != 1 || obs.codes[0] != 101 {
		t.Errorf("observer got %v; want [101]", obs.codes)
	}
}

// The edge's HSTS policy is on every HTTPS response, error pages included, and replaces
// a target's own.
func TestHSTS(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Strict-Transport-Security", "max-age=60")
	}))
	defer backend.Close()
	for name, picker := range map[string]Picker{"proxied": pickerFor(backend), "error page": staticPicker{}} {
		front := frontend(t, Options{Picker: picker, HSTS: "max-age=31536000"})
		resp, err := front.Client().Get(front.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if g := resp.Header.Values("Strict-Transport-Security"); len(g) != 1 || g[0] != "max-age=31536000" {
			t.Errorf("%s: got %q; want exactly max-age=31536000", name, g)
		}
	}
}

func TestRedirectHandler_KeepsHostPathAndQuery(t *testing.T) {
	tests := []struct{ port, host, target, want string }{
		{"443", "app.test", "/a/b?c=d&e", "https://app.test/a/b?c=d&e"},
		{"443", "app.test:80", "/", "https://app.test/"},
		{"8443", "app.test:8080", "/x?y", "https://app.test:8443/x?y"},
		{"443", "[::1]:80", "/", "https://[::1]/"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", tt.target, nil)
		req.Host = tt.host
		RedirectHandler(tt.port).ServeHTTP(rec, req)
		if rec.Code != http.StatusPermanentRedirect || rec.Header().Get("Location") != tt.want {
			t.Errorf("%s%s: got %d %q; want 308 %q", tt.host, tt.target, rec.Code, rec.Header().Get("Location"), tt.want)
		}
	}
}

// staticTransport answers every request in memory, to measure the handler alone.
type staticTransport struct{}

func (staticTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Length": {"2"}}, Body: io.NopCloser(strings.NewReader("ok")), ContentLength: 2, Request: r, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}, nil
}

func BenchmarkServeHTTP(b *testing.B) {
	h := New(Options{Picker: staticPicker{&pool.Target{Addr: "127.0.0.1:1"}}, Transport: staticTransport{}})
	req := httptest.NewRequest("GET", "/", nil)
	req.RemoteAddr = "192.0.2.1:1234"
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
	}
}
