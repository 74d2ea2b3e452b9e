package fastpath

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
	"edgeproxy/proxy"
)

// reasonCounter counts the requests the edge answered itself, by reason.
type reasonCounter struct {
	nopObserver
	mu      sync.Mutex
	reasons map[string]int
}

func (o *reasonCounter) ProxyError(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reasons[reason]++
}

// startCertServer serves TLS with a certificate for names in front of target, telling
// the Server which certificate each handshake served, as the edge does.
func startCertServer(tb testing.TB, fast bool, target string, obs proxy.Observer, names ...string) string {
	tb.Helper()
	bal := healthyPool(target)
	h := proxy.New(Options{Picker: bal, Passive: bal, Observer: obs})
	backend := &Backend{Handler: h, Upstream: NewUpstream(5*time.Second, time.Minute, nil)}
	cert := testutil.SelfSignedCert(tb, names...)
	s := NewServer(ServerOptions{Backend: func() *Backend { return backend }, HTTP: &http.Server{Handler: h}, FastPath: fast,
		ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10,
		Certificate: func(*tls.ConnectionState) *x509.Certificate { return cert.Leaf }})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go s.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}))
	tb.Cleanup(func() { s.Close() })
	return ln.Addr().String()
}

// A request whose Host the connection's certificate does not cover gets 421, counted as
// misdirected, on the fast path and on net/http alike; the connection stays open and
// serves the hosts it covers.
func TestServer_MisdirectedHostGets421(t *testing.T) {
	target := cannedTarget(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	for _, fast := range []bool{true, false} {
		obs := &reasonCounter{reasons: map[string]int{}}
		addr := startCertServer(t, fast, target, obs, "a.test", "*.b.test")
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "a.test", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		for _, tt := range []struct {
			host string
			want int
		}{
			{"a.test", 200}, {"A.TEST.:443", 200}, {"c.test", 421}, {"x.b.test", 200}, {"x.y.b.test", 421}, {"a.test", 200},
		} {
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", tt.host)
			resp, body := readResp(t, br)
			if resp.StatusCode != tt.want {
				t.Errorf("fast=%v Host %s: %d %q; want %d", fast, tt.host, resp.StatusCode, body, tt.want)
			}
			if tt.want == 421 && body != errorBody(421) {
				t.Errorf("fast=%v: 421 body %q; want %q", fast, body, errorBody(421))
			}
		}
		c.Close()
		if got := obs.reasons[proxy.ReasonMisdirected]; got != 2 {
			t.Errorf("fast=%v: %d requests counted misdirected; want 2", fast, got)
		}
	}
}
