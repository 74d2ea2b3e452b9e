package passthrough

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"edgeproxy/health"
	"edgeproxy/internal/testutil"
)

// tlsBackend is a target speaking TLS as name; it answers "backend NAME".
func tlsBackend(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend %s", name)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{testutil.SelfSignedCert(t, name)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.events = append(r.events, s)
	r.mu.Unlock()
}
func (r *recorder) HealthCheck(string, bool, string) {}
func (r *recorder) TargetHealthy(string, bool)       {}
func (r *recorder) PassthroughOpened(target string)  { r.add("opened " + target) }
func (r *recorder) PassthroughFailed(target string)  { r.add("failed " + target) }
func (r *recorder) PassthroughClosed(target string, in, out int64) {
	r.add(fmt.Sprintf("closed %s in>0:%v out>0:%v", target, in > 0, out > 0))
}
func (r *recorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, "; ")
}

// edge serves TLS as "edge.test" behind a router's listener, as edgeproxy's HTTPS
// listener does, and returns its address.
func edge(t *testing.T, r *Router) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprint(w, "edge")
	})}
	tl := tls.NewListener(r.Listener(ln), &tls.Config{Certificates: []tls.Certificate{testutil.SelfSignedCert(t, "edge.test")}})
	go func() { _ = srv.Serve(tl) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func newRouter(t *testing.T, obs Observer, routes ...Route) *Router {
	t.Helper()
	r := New(Options{
		Routes:      routes,
		PeekTimeout: 500 * time.Millisecond,
		DialTimeout: time.Second,
		Health:      health.Options{Interval: time.Hour, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1},
		Observer:    obs,
		Logger:      slog.New(slog.DiscardHandler), // quiet for tests
	})
	ctx, cancel := context.WithCancel(context.Background())
	r.Start(ctx)
	t.Cleanup(func() { cancel(); r.Wait() })
	return r
}

// get fetches / over TLS with SNI name and returns the body and the certificate's name.
func get(t *testing.T, addr, name string) (body, certName string, err error) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	certName = c.ConnectionState().PeerCertificates[0].Subject.CommonName
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", name)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", certName, err
	}
	b, err := io.ReadAll(res.Body)
	return string(b), certName, err
}

func TestListener_RoutesBySNI(t *testing.T) {
	backend := tlsBackend(t, "pass.test")
	obs := &recorder{}
	r := newRouter(t, obs, Route{ServerNames: []string{"Pass.Test."}, Targets: []string{backend}})
	addr := edge(t, r)
	tests := []struct {
		name, sni, wantBody, wantCert string
	}{
		{"listed name: the backend's certificate and answer", "pass.test", "backend pass.test", "pass.test"},
		{"listed name in upper case", "PASS.TEST", "backend pass.test", "pass.test"},
		{"another name: terminated at the edge", "other.test", "edge", "edge.test"},
		{"no SNI: terminated at the edge", "", "edge", "edge.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, cert, err := get(t, addr, tt.sni)
			if err != nil {
				t.Fatal(err)
			}
			if body != tt.wantBody || cert != tt.wantCert {
				t.Errorf("got %q from %q; want %q from %q", body, cert, tt.wantBody, tt.wantCert)
			}
		})
	}
	waitFor(t, func() bool { return strings.Count(obs.all(), "closed "+backend+" in>0:true out>0:true") == 2 })
	if got := obs.all(); strings.Count(got, "opened "+backend) != 2 {
		t.Errorf("observer got %q; want two connections opened and closed", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A target that refuses the connection has carried nothing: the next one takes it.
func TestRouter_DialFailsOver(t *testing.T) {
	backend := tlsBackend(t, "pass.test")
	dead := testutil.DeadAddr(t)
	obs := &recorder{}
	r := newRouter(t, obs, Route{ServerNames: []string{"pass.test"}, Targets: []string{dead, backend}})
	addr := edge(t, r)
	for i := range 4 {
		if body, _, err := get(t, addr, "pass.test"); err != nil || body != "backend pass.test" {
			t.Fatalf("request %d: got %q, %v; want the backend's answer", i, body, err)
		}
	}
}

// With no target reachable the client's connection is closed and counted as failed.
func TestRouter_NoTargetReachable(t *testing.T) {
	dead := testutil.DeadAddr(t)
	obs := &recorder{}
	r := newRouter(t, obs, Route{ServerNames: []string{"pass.test"}, Targets: []string{dead}})
	addr := edge(t, r)
	if _, _, err := get(t, addr, "pass.test"); err == nil {
		t.Fatal("got a response; want the connection closed")
	}
	// The client may see the close before the router records it: wait a little.
	deadline := time.Now().Add(2 * time.Second)
	for obs.all() != "failed "+dead && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := obs.all(); got != "failed "+dead {
		t.Errorf("observer got %q; want %q", got, "failed "+dead)
	}
}

// Plain HTTP on the HTTPS port reaches the TLS layer as it was sent, which answers it as
// net/http does ("Client sent an HTTP request to an HTTPS server").
func TestListener_HandsOnWhatIsNotTLS(t *testing.T) {
	r := newRouter(t, nil, Route{ServerNames: []string{"pass.test"}, Targets: []string{testutil.DeadAddr(t)}})
	addr := edge(t, r)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: pass.test\r\n\r\n")
	b, _ := io.ReadAll(c)
	if !strings.Contains(string(b), "HTTP request to an HTTPS server") {
		t.Errorf("got %q; want net/http's answer to plain HTTP on a TLS port", b)
	}
}

// A client that sends nothing is closed after the peek timeout, and holds up no other.
func TestListener_SilentClientTimesOut(t *testing.T) {
	backend := tlsBackend(t, "pass.test")
	r := newRouter(t, nil, Route{ServerNames: []string{"pass.test"}, Targets: []string{backend}})
	addr := edge(t, r)
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if body, _, err := get(t, addr, "other.test"); err != nil || body != "edge" {
		t.Fatalf("while a client is silent: got %q, %v; want the edge's answer", body, err)
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("silent client: got %v; want EOF (closed by the edge)", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("silent client closed after %v; want about the 500ms peek timeout", d)
	}
}

// Unhealthy targets get no connections while a healthy one is left; Update keeps the
// health of targets that stay.
func TestRouter_HealthAndUpdate(t *testing.T) {
	a, b := tlsBackend(t, "a.test"), tlsBackend(t, "b.test")
	dead := testutil.DeadAddr(t)
	r := New(Options{
		Routes: []Route{{ServerNames: []string{"pass.test"}, Targets: []string{dead, a}}},
		Health: health.Options{Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, HealthyThreshold: 1, UnhealthyThreshold: 1},
		Logger: slog.New(slog.DiscardHandler),
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); r.Wait() }()
	r.Start(ctx)
	waitFor(t, func() bool {
		st := r.Statuses()
		return len(st) == 2 && st[0].State != health.Initial && st[1].State != health.Initial
	})
	bal := r.route("pass.test")
	for range 4 {
		if got := bal.Next().Target.Addr; got != a {
			t.Errorf("picked %s; want only the healthy %s", got, a)
		}
	}
	r.Update([]Route{{ServerNames: []string{"pass.test", "new.test"}, Targets: []string{a, b}}},
		health.Options{Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, HealthyThreshold: 1, UnhealthyThreshold: 1})
	if !r.route("new.test").Lookup(a).Healthy() {
		t.Errorf("after Update, %s lost its health", a)
	}
	waitFor(t, func() bool { return r.route("new.test").Lookup(b).Healthy() })
	if st := r.Statuses(); len(st) != 2 {
		t.Errorf("statuses after Update: %+v; want only the two current targets", st)
	}
}

// A reload that keeps a route keeps its pool: each target that stays keeps its state
// (health, ejection, connections counted) and the rotation goes on where it was, instead
// of starting again at the first target.
func TestRouter_UpdateKeepsTargetStateAndRotation(t *testing.T) {
	a, b := tlsBackend(t, "a.test"), tlsBackend(t, "b.test")
	route := Route{ServerNames: []string{"pass.test"}, Targets: []string{a, b}}
	r := newRouter(t, nil, route)
	addr := edge(t, r)
	waitFor(t, func() bool {
		return r.route("pass.test").Lookup(a).Healthy() && r.route("pass.test").Lookup(b).Healthy()
	})
	before := r.route("pass.test").Lookup(a)
	if body, _, err := get(t, addr, "pass.test"); err != nil || body != "backend a.test" {
		t.Fatalf("first connection: got %q, %v; want a's answer", body, err)
	}

	r.Update([]Route{route, {ServerNames: []string{"other.test"}, Targets: []string{a}}},
		health.Options{Interval: time.Hour, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1})
	if got := r.route("pass.test").Lookup(a); got != before || !got.Healthy() {
		t.Errorf("after Update, %s has a new state (same: %v, healthy: %v); want the one it had", a, got == before, got.Healthy())
	}
	if body, _, err := get(t, addr, "pass.test"); err != nil || body != "backend b.test" {
		t.Errorf("connection after Update: got %q, %v; want b's answer (the rotation's next)", body, err)
	}
}

// Shutdown waits for spliced connections, then closes those left when its context ends.
func TestRouter_Shutdown(t *testing.T) {
	// A target that holds the connection open and says nothing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	obs := &recorder{}
	r := newRouter(t, obs, Route{ServerNames: []string{"pass.test"}, Targets: []string{ln.Addr().String()}})
	addr := edge(t, r)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(clientHello(t, "pass.test")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(obs.all(), "opened") })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Errorf("Shutdown: got %v; want the deadline exceeded", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client after Shutdown: got %v; want EOF", err)
	}
}
