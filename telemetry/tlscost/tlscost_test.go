package tlscost

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	certfixture "edgeproxy/internal/testutil/fixture"
)

// testCosts are round numbers, so that tests check the accounting, not the machine.
var testCosts = &Costs{
	Seal:  map[string]Linear{AES128GCM: {PerCall: 1e-6, PerByte: 1e-9}},
	Open:  map[string]Linear{AES128GCM: {PerCall: 1e-6, PerByte: 1e-9}},
	Write: Linear{PerCall: 5e-6},
}

func testCert(t testing.TB, key string) tls.Certificate {
	t.Helper()
	c, err := certfixture.SelfSigned(certfixture.CertOptions{Hosts: []string{"localhost", "127.0.0.1"}, RSA: key == "rsa"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// countingListener counts the bytes its connections really read and write: the truth the
// metrics are checked against.
type countingListener struct {
	net.Listener
	in, out atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, l: l}, nil
}

type countingConn struct {
	net.Conn
	l *countingListener
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.l.out.Add(int64(n))
	return n, err
}

type fixture struct {
	a   *Accountant
	reg *prometheus.Registry
	raw *countingListener
	ln  *listener
	cfg *tls.Config

	accepted atomic.Int64 // connections accepted by serve
}

func newFixture(t *testing.T, opts Options, cfg *tls.Config) *fixture {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	if opts.Costs == nil {
		opts.Costs = testCosts
	}
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if cfg == nil {
		cfg = &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}}
	}
	cl := &countingListener{Listener: raw}
	f := &fixture{a: a, reg: reg, raw: cl, cfg: cfg, ln: a.listener(cl, cfg).(*listener)}
	t.Cleanup(func() { _ = f.ln.Close() })
	return f
}

// serve accepts on f.ln until it is closed and, in a goroutine per connection as
// proxy.Server does, runs the connection's handshake with Accountant.Handshake, then
// handle. The connection is closed after. The WaitGroup is done when all have returned.
func (f *fixture) serve(handle func(net.Conn)) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := f.ln.Accept()
			if err != nil {
				return
			}
			f.accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if err := f.a.Handshake(c.(*tls.Conn)); err != nil {
					return
				}
				handle(c)
			}()
		}
	}()
	return &wg
}

func (f *fixture) addr() string { return f.ln.Addr().String() }

// value returns the sum of the samples of a metric whose labels include want (a counter's
// value, a histogram's sample sum).
func (f *fixture) value(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			sum += sampleValue(m)
		}
	}
	return sum
}

func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return m.Histogram.GetSampleSum()
	}
	return 0
}

func clientConfig() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}
}

// serveEcho serves f (see serve): read a decimal length line, write that many bytes,
// then read until EOF, then close.
func serveEcho(f *fixture) *sync.WaitGroup {
	return f.serve(func(c net.Conn) {
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line))
		buf := make([]byte, n)
		// Written in pieces the way a proxy copies: 32 KiB at a time.
		for off := 0; off < n; off += 32 << 10 {
			if _, err := c.Write(buf[off:min(n, off+32<<10)]); err != nil {
				return
			}
		}
		_, _ = io.Copy(io.Discard, br)
	})
}

// Bytes counted in the metrics are the bytes the server really read and wrote, split
// between handshake and records; and the records after the handshake are what the client
// sent and received after its handshake.
func TestListener_BytesMatchWire(t *testing.T) {
	for _, tt := range []struct {
		name    string
		version uint16
		size    int
		trickle bool // the client writes in 100-byte pieces: many reads per flight
	}{
		{"tls13-small", tls.VersionTLS13, 100, false},
		{"tls13-200KiB", tls.VersionTLS13, 200 << 10, false},
		{"tls12-200KiB", tls.VersionTLS12, 200 << 10, false},
		{"tls13-trickled", tls.VersionTLS13, 100, true},
		{"tls12-trickled", tls.VersionTLS12, 100, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, MaxVersion: tt.version, SessionTicketsDisabled: true}
			f := newFixture(t, Options{}, cfg)
			wg := serveEcho(f)

			raw, err := net.Dial("tcp", f.addr())
			if err != nil {
				t.Fatal(err)
			}
			cc := &countingConn{Conn: raw, l: &countingListener{}}
			var under net.Conn = cc
			if tt.trickle {
				under = trickleConn{cc}
			}
			tc := tls.Client(under, clientConfig())
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			hsOut, hsIn := cc.l.out.Load(), cc.l.in.Load()
			if _, err := fmt.Fprintf(tc, "%d\n", tt.size); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadFull(tc, make([]byte, tt.size))
			if err != nil || got != tt.size {
				t.Fatalf("read %d, %v; want %d", got, err, tt.size)
			}
			_ = tc.Close() // close_notify, then FIN: the server reads to EOF
			_ = f.ln.Close()
			wg.Wait()

			in := f.value(t, "edgeproxy_tls_handshake_bytes_total", map[string]string{"direction": "in"}) +
				f.value(t, "edgeproxy_tls_record_bytes_total", map[string]string{"direction": "in"})
			out := f.value(t, "edgeproxy_tls_handshake_bytes_total", map[string]string{"direction": "out"}) +
				f.value(t, "edgeproxy_tls_record_bytes_total", map[string]string{"direction": "out"})
			if in != float64(f.raw.in.Load()) {
				t.Errorf("bytes in: got %v; want %d read by the server", in, f.raw.in.Load())
			}
			if out != float64(f.raw.out.Load()) {
				t.Errorf("bytes out: got %v; want %d written by the server", out, f.raw.out.Load())
			}
			if got, want := f.value(t, "edgeproxy_tls_handshake_bytes_total", map[string]string{"direction": "out"}), float64(hsIn); got != want {
				t.Errorf("handshake bytes out: got %v; want %v read by the client in its handshake", got, want)
			}
			if got, want := f.value(t, "edgeproxy_tls_record_bytes_total", map[string]string{"direction": "in"}), float64(cc.l.out.Load()-hsOut); got != want {
				t.Errorf("record bytes in: got %v; want %v written by the client after its handshake", got, want)
			}
			if got := f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "ok", "resumed": "false", "key": "ecdsa"}); got != 1 {
				t.Errorf("ok handshakes: got %v; want 1", got)
			}
			recCPU := f.value(t, "edgeproxy_tls_record_cpu_seconds_total", nil)
			hsCPU := f.value(t, "edgeproxy_tls_handshake_cpu_seconds", nil)
			total := f.value(t, "edgeproxy_tls_cpu_seconds_total", nil)
			if recCPU <= 0 || hsCPU <= 0 {
				t.Errorf("record CPU %v, handshake CPU %v; want both > 0", recCPU, hsCPU)
			}
			if d := total - recCPU - hsCPU; d > 1e-9 || d < -1e-9 {
				t.Errorf("tls_cpu_seconds_total %v; want records %v + handshakes %v", total, recCPU, hsCPU)
			}
		})
	}
}

// trickleConn writes in 100-byte pieces, a millisecond apart, so that the server reads a
// flight in many reads.
type trickleConn struct{ net.Conn }

func (c trickleConn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), 100)
		m, err := c.Conn.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
		time.Sleep(time.Millisecond)
	}
	return n, nil
}

// A full handshake reads the thread clock four times when its tail is measured: when the
// ClientHello has been read, around the wait for the client's second flight, and at the
// end; twice when its tail is estimated. A ClientHello that arrives at once is read at
// once, however little crypto/tls asks for (its record header first).
func TestListener_HandshakeClockReadings(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, measureTail := range []bool{true, false} {
			cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, MaxVersion: version, SessionTicketsDisabled: true}
			f := newFixture(t, Options{}, cfg)
			if !measureTail {
				f.a.tailWarmup, f.a.tailEvery = 0, math.MaxUint32
			}
			reads := make(chan int, 1)
			wg := f.serve(func(c net.Conn) {
				reads <- must(measured(c.(*tls.Conn).NetConn())).clockReads
			})
			tc, err := tls.Dial("tcp", f.addr(), clientConfig())
			if err != nil {
				t.Fatal(err)
			}
			want := 2
			if measureTail {
				want = 4
			}
			if got := <-reads; got != want {
				t.Errorf("TLS %x, tail measured %v: %d thread clock readings in a full handshake; want %d", version, measureTail, got, want)
			}
			_ = tc.Close()
			_ = f.ln.Close()
			wg.Wait()
		}
	}
}

// measuredHandshake is what a served connection's handshake measured: its CPU, and the
// part of it that was the tail.
type measuredHandshake struct{ cpu, tail int64 }

// tailFixture serves cfg with an Accountant that measures the tails of the first three
// handshakes and estimates all others, and sends what each served connection measured.
func tailFixture(t *testing.T, cfg *tls.Config) (*fixture, <-chan measuredHandshake, *sync.WaitGroup) {
	f := newFixture(t, Options{}, cfg)
	f.a.tailWarmup, f.a.tailEvery = 3, math.MaxUint32
	got := make(chan measuredHandshake, 1)
	wg := f.serve(func(c net.Conn) {
		mc := must(measured(c.(*tls.Conn).NetConn()))
		got <- measuredHandshake{mc.cpu, mc.tailCPU}
	})
	return f, got, wg
}

// A handshake whose tail is not measured is charged its measured head plus the mean of the
// tails measured for its label combination.
func TestListener_EstimatedTailIsTheMeanOfMeasuredOnes(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, MaxVersion: tls.VersionTLS12, SessionTicketsDisabled: true}
	f, got, wg := tailFixture(t, cfg)
	var tails int64
	for i := range 4 {
		before := f.value(t, "edgeproxy_tls_handshake_cpu_seconds", nil)
		tc, err := tls.Dial("tcp", f.addr(), clientConfig())
		if err != nil {
			t.Fatal(err)
		}
		m := <-got
		_ = tc.Close()
		charged := f.value(t, "edgeproxy_tls_handshake_cpu_seconds", nil) - before // reported before the handler ran
		want := m.cpu
		if i < 3 {
			if m.tail <= 0 {
				t.Fatalf("handshake %d: tail measured %dns; want > 0 (TLS 1.2: the key exchange)", i, m.tail)
			}
			tails += m.tail
		} else {
			if m.tail != 0 {
				t.Errorf("handshake %d: tail measured %dns; want none", i, m.tail)
			}
			want += tails / 3
		}
		if math.Abs(charged-float64(want)/1e9) > 1e-9 {
			t.Errorf("handshake %d: charged %.9fs; want %.9fs", i, charged, float64(want)/1e9)
		}
	}
	_ = f.ln.Close()
	wg.Wait()
}

// Handshakes are labelled with their cipher suite; a suite not seen before is charged the
// tails measured under the other suites of its combination (the tail does not depend on
// the record cipher), not zero.
func TestListener_CipherSuiteLabelSharesTheMeasuredTails(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, MaxVersion: tls.VersionTLS12, SessionTicketsDisabled: true}
	f, got, wg := tailFixture(t, cfg)
	const aes, chacha = tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
	var tails int64
	for i, suite := range []uint16{aes, aes, aes, chacha} {
		before := f.value(t, "edgeproxy_tls_handshake_cpu_seconds", nil)
		ccfg := clientConfig()
		ccfg.CipherSuites = []uint16{suite}
		tc, err := tls.Dial("tcp", f.addr(), ccfg)
		if err != nil {
			t.Fatal(err)
		}
		m := <-got
		_ = tc.Close()
		charged := f.value(t, "edgeproxy_tls_handshake_cpu_seconds", nil) - before
		want := m.cpu
		if i < 3 {
			tails += m.tail
		} else {
			want += tails / 3
		}
		if math.Abs(charged-float64(want)/1e9) > 1e-9 {
			t.Errorf("handshake %d (%s): charged %.9fs; want %.9fs", i, tls.CipherSuiteName(suite), charged, float64(want)/1e9)
		}
	}
	_ = f.ln.Close()
	wg.Wait()
	for suite, want := range map[uint16]float64{aes: 3, chacha: 1} {
		labels := map[string]string{"result": "ok", "version": "1.2", "cipher": tls.CipherSuiteName(suite)}
		if got := f.value(t, "edgeproxy_tls_handshakes_total", labels); got != want {
			t.Errorf("handshakes %v: got %v; want %v", labels, got, want)
		}
	}
}

// A client that is not speaking TLS, and one that hangs up, are failed handshakes.
func TestListener_FailedHandshakeCounted(t *testing.T) {
	f := newFixture(t, Options{}, nil)
	f.serve(func(net.Conn) {})
	c, err := net.Dial("tcp", f.addr())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c) // the server closes
	_ = c.Close()
	c, err = net.Dial("tcp", f.addr())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()

	deadline := time.Now().Add(5 * time.Second)
	for f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "error"}) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "error", "key": "none", "cipher": "none"}); got != 2 {
		t.Errorf("failed handshakes: got %v; want 2", got)
	}
	if got := f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "ok"}); got != 0 {
		t.Errorf("ok handshakes: got %v; want 0", got)
	}
	if got := f.value(t, "edgeproxy_tls_handshake_bytes_total", map[string]string{"direction": "in"}); got != float64(f.raw.in.Load()) {
		t.Errorf("handshake bytes in: got %v; want %d", got, f.raw.in.Load())
	}
}

func threads(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status:", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

// The design constraint: handshakes wait for clients without holding an OS thread.
// Locking the goroutine across the whole handshake would need one thread per silent client
// (and dies at Go's 10,000-thread limit). 2,000 clients that connect, send half a
// ClientHello or nothing, and stall.
func TestListener_StalledHandshakesDoNotPinThreads(t *testing.T) {
	const n = 2000
	raiseFileLimit(t, 2*n+200)
	f := newFixture(t, Options{HandshakeTimeout: time.Minute}, nil)
	f.serve(func(net.Conn) {})
	before := threads(t)
	var clients []net.Conn
	t.Cleanup(func() {
		for _, c := range clients {
			_ = c.Close()
		}
	})
	for i := range n {
		c, err := net.Dial("tcp", f.addr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if i%2 == 0 {
			_, _ = c.Write([]byte{typeHandshake, 3, 1, 0x02, 0x00, 1, 0, 1}) // a ClientHello's first bytes
		}
		clients = append(clients, c)
	}
	deadline := time.Now().Add(30 * time.Second)
	for f.accepted.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d handshakes started", f.accepted.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let every handshake goroutine reach its read
	after := threads(t)
	t.Logf("threads: %d before, %d with %d stalled handshakes", before, after, n)
	if after > before+32 {
		t.Errorf("threads: got %d with %d stalled handshakes; want at most %d", after, n, before+32)
	}
	for _, c := range clients {
		_ = c.Close()
	}
	deadline = time.Now().Add(30 * time.Second)
	for f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "error"}) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "error"}); got != n {
		t.Errorf("failed handshakes after the clients hung up: got %v; want %d", got, n)
	}
}

func raiseFileLimit(t *testing.T, want uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skip("getrlimit:", err)
	}
	if lim.Cur >= want {
		return
	}
	if lim.Max < want {
		t.Skipf("RLIMIT_NOFILE hard limit %d < %d", lim.Max, want)
	}
	old := lim.Cur
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skip("setrlimit:", err)
	}
	t.Cleanup(func() {
		lim.Cur = old
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	})
}

// A client that never finishes its handshake is cut off at the deadline and counted.
func TestListener_HandshakeDeadline(t *testing.T) {
	f := newFixture(t, Options{HandshakeTimeout: 200 * time.Millisecond}, nil)
	f.serve(func(net.Conn) {})
	var conns []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", f.addr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("stalled client read: got %v; want EOF (closed by the server)", err)
		}
		_ = c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "error"}) < 20 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "error"}); got != 20 {
		t.Errorf("timed-out handshakes: got %v; want 20", got)
	}
}

// handshaking runs each connection's handshake with Accountant.Handshake in Accept, one at
// a time (enough for a test), for a server that would run it itself: net/http.
type handshaking struct {
	net.Listener
	a *Accountant
}

func (h handshaking) Accept() (net.Conn, error) {
	for {
		c, err := h.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if err := h.a.Handshake(c.(*tls.Conn)); err != nil {
			_ = c.Close()
			continue
		}
		return c, nil
	}
}

// get fetches url through tr and returns the body; tr's connections are closed after.
func get(t *testing.T, tr *http.Transport, url string) string {
	t.Helper()
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return string(body)
}

// net/http must still see a *tls.Conn: Request.TLS is set and h2 is negotiated by ALPN.
func TestListener_HTTPServer(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "rsa")}, NextProtos: []string{"h2", "http/1.1"}}
	f := newFixture(t, Options{}, cfg)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			t.Errorf("r.TLS is nil")
		}
		fmt.Fprintf(w, "%d", r.ProtoMajor)
	}), TLSConfig: cfg}
	go func() { _ = srv.Serve(handshaking{f.ln, f.a}) }()
	t.Cleanup(func() { _ = srv.Close() })

	for _, tt := range []struct {
		name   string
		protos []string
		want   string
	}{
		{"h2", []string{"h2"}, "2"},
		{"http1", []string{"http/1.1"}, "1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ccfg := clientConfig()
			ccfg.NextProtos = tt.protos
			body := get(t, &http.Transport{TLSClientConfig: ccfg, ForceAttemptHTTP2: tt.want == "2"}, "https://"+f.addr()+"/")
			if body != tt.want {
				t.Errorf("got protocol %q; want %q", body, tt.want)
			}
		})
	}
	if got := f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "ok", "key": "rsa", "version": "1.3"}); got != 2 {
		t.Errorf("ok RSA TLS 1.3 handshakes: got %v; want 2", got)
	}
}

// With session tickets, a second connection resumes; it uses no certificate key.
func TestListener_Resumption(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(versionLabel(version), func(t *testing.T) {
			cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, MaxVersion: version}
			f := newFixture(t, Options{}, cfg)
			wg := serveEcho(f)
			ccfg := clientConfig()
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			for range 2 {
				exchange(t, f.addr(), ccfg, 10)
			}
			_ = f.ln.Close()
			wg.Wait()
			if got := f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "ok", "resumed": "false", "key": "ecdsa"}); got != 1 {
				t.Errorf("full handshakes: got %v; want 1", got)
			}
			if got := f.value(t, "edgeproxy_tls_handshakes_total", map[string]string{"result": "ok", "resumed": "true", "key": "none"}); got != 1 {
				t.Errorf("resumed handshakes: got %v; want 1", got)
			}
		})
	}
}

// exchange makes one connection, asks for n bytes and reads them (which, in TLS 1.3, also
// reads the session ticket).
func exchange(t *testing.T, addr string, cfg *tls.Config, n int) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "%d\n", n)
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	return c.ConnectionState().DidResume
}

// The listener starts no goroutine, and a connection's serving goroutine ends with its
// handshake, failed or not: none is left behind.
func TestListener_NoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	f := newFixture(t, Options{}, nil)
	wg := serveEcho(f)
	ccfg := clientConfig()
	for range 20 {
		exchange(t, f.addr(), ccfg, 1000)
	}
	stalled, err := net.Dial("tcp", f.addr()) // in its handshake when the listener closes
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	_ = f.ln.Close()
	_ = stalled.Close()
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<16)
		t.Errorf("goroutines: %d before, %d after\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

func TestNilAccountant_PlainTLSListener(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var a *Accountant
	if _, ok := a.listener(raw, &tls.Config{}).(*listener); ok {
		t.Errorf("nil Accountant: got a measuring listener; want tls.NewListener's")
	}
}

// The extra-write estimator on known sequences of records (TLS 1.3, AES-128-GCM).
func TestChargeOut_ExtraWrites(t *testing.T) {
	full := maxPlaintext + 17
	for _, tt := range []struct {
		name   string
		sent   int64 // bytes already sent: past the dynamic sizing threshold or not
		writes []int // record bodies; -1 is a read from the client in between, -2 a pause (another write of the application)
		want   float64
		// maxAppWrite is Options.MaxAppWrite: 32 KiB for net/http's data path, 0 for
		// the fast path's default.
		maxAppWrite int
	}{
		// net/http's 4 KiB bufio flush, then the proxy's 32 KiB chunks cut into records.
		{"64KiB-response", 1 << 20, []int{4096 + 17, full, 28672 - 16384 + 17, full, full}, 2, 32 << 10},
		{"two-32KiB-writes", 1 << 20, []int{full, full, full, full}, 2, 32 << 10}, // (+1 if writes were larger)
		// The fast path: the head with the first 16 KiB read (two records), then
		// 16 KiB writes of one record each, and the rest.
		{"fast-path-64KiB", 1 << 20, []int{full, 300 + 17, full, full, full, -2, 1000 + 17}, 1, 0},
		{"small-responses", 1 << 20, []int{200, -1, 300, -1, 17 + 2}, 1, 0}, // the last is close_notify
		{"full-then-read", 1 << 20, []int{full, -1, 100}, 0, 0},
		// A fresh connection: records grow by 1186 bytes of plaintext each.
		{"dynamic-sizing", 3000, []int{1186 + 17, 2372 + 17, 500 + 17}, 2, 0},
		{"dynamic-sizing-small", 3000, []int{900 + 17, -1, 1000 + 17}, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			a, err := New(Options{Registerer: reg, Costs: testCosts, MaxAppWrite: tt.maxAppWrite})
			if err != nil {
				t.Fatal(err)
			}
			c := &conn{a: a, sent: tt.sent}
			c.finishHandshake(&tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256})
			for _, body := range tt.writes {
				if body == -2 {
					c.gap = time.Millisecond
					continue
				}
				if body < 0 {
					c.reads.Add(1)
					continue
				}
				c.chargeOut(typeApplicationData, body, true)
				c.gap = 0
				c.sent += int64(recordHeaderLen + body)
			}
			c.outTally.flush(a, a.recordBytesOut, a.recordCPUOut) // as at the connection's end
			f := &fixture{reg: reg}
			if got := f.value(t, "edgeproxy_tls_extra_writes_total", nil); got != tt.want {
				t.Errorf("extra writes: got %v; want %v", got, tt.want)
			}
		})
	}
}

func TestThreadCPU(t *testing.T) {
	if !threadClockWorks() {
		t.Skip("no thread CPU clock")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0 := threadCPU()
	x := 0
	for i := range 20_000_000 {
		x += i ^ x
	}
	_ = x
	if d := threadCPU() - t0; d <= 0 {
		t.Errorf("thread CPU after a busy loop: advanced %dns; want > 0", d)
	}
	if n := testing.AllocsPerRun(100, func() { threadCPU() }); n != 0 {
		t.Errorf("threadCPU allocates %v times; want 0", n)
	}
}

func TestCalibrate(t *testing.T) {
	if !threadClockWorks() {
		t.Skip("no thread CPU clock")
	}
	c, err := Calibrate()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range aeadNames {
		if c.Seal[name].PerByte <= 0 || c.Open[name].PerByte <= 0 {
			t.Errorf("%s: seal %+v open %+v; want a per-byte cost", name, c.Seal[name], c.Open[name])
		}
	}
	if c.Write.PerCall <= 0 {
		t.Errorf("write: %+v; want a per-call cost", c.Write)
	}
	t.Logf("costs: seal %+v open %+v write %+v handshake allocs %d B, factor %.3f (GC %.2f) data factor %.3f per read %.2fµs", c.Seal, c.Open, c.Write, c.HandshakeAllocBytes, c.HandshakeFactor, c.HandshakeGCShare, c.DataFactor, c.PerRead*1e6)
	if c.HandshakeAllocBytes <= 0 {
		t.Errorf("handshake allocations: got %d; want > 0", c.HandshakeAllocBytes)
	}
	if c.HandshakeFactor < 1 {
		t.Errorf("handshake factor: got %v; want >= 1", c.HandshakeFactor)
	}
}

// A record is charged the record layer's cost times the data factor, and the gauges show
// what is charged: here a TLS 1.3 client sends a request line and a close_notify, two
// records, each charged 2 × (1 µs + 1 ns per plaintext byte).
func TestAccountant_ChargesRecordLayerTimesDataFactor(t *testing.T) {
	costs := *testCosts
	costs.DataFactor = 2
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true}
	f := newFixture(t, Options{Costs: &costs}, cfg)
	wg := serveEcho(f)
	exchange(t, f.addr(), clientConfig(), 10)
	_ = f.ln.Close()
	wg.Wait()

	const request = "10\n"
	const overhead = recordHeaderLen + 16 + 1 // TLS 1.3: header, tag, content type
	if got, want := f.value(t, "edgeproxy_tls_record_bytes_total", map[string]string{"direction": "in"}), float64(2*overhead+len(request)+2); got != want {
		t.Fatalf("record bytes in: got %v; want %v (the request line and a close_notify)", got, want)
	}
	want := 2 * (2*1e-6 + 1e-9*float64(len(request)+2))
	if got := f.value(t, "edgeproxy_tls_record_cpu_seconds_total", map[string]string{"direction": "in"}); math.Abs(got-want) > 1e-15 {
		t.Errorf("record CPU in: got %v; want %v", got, want)
	}
	for _, dir := range []string{"in", "out"} {
		lbl := map[string]string{"aead": AES128GCM, "direction": dir}
		if got := f.value(t, "edgeproxy_tls_record_cpu_seconds_per_byte", lbl); got != 2e-9 {
			t.Errorf("per byte %s: got %v; want 2e-9", dir, got)
		}
		if got := f.value(t, "edgeproxy_tls_record_cpu_seconds_per_record", lbl); got != 2e-6 {
			t.Errorf("per record %s: got %v; want 2e-6", dir, got)
		}
	}
}

// Each read that returns data after the handshake is charged the per-read cost on top of
// its records (a small kept-alive request costs more than its one record), and the gauge
// shows it: 20 requests on one connection, each read before the next is sent, are 20 reads
// (21 with the close_notify's own).
func TestAccountant_ChargesEachReadThePerReadCost(t *testing.T) {
	costs := Costs{Seal: map[string]Linear{}, Open: map[string]Linear{}, PerRead: 1}
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, SessionTicketsDisabled: true}
	f := newFixture(t, Options{Costs: &costs}, cfg)
	wg := f.serve(func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			if _, err := io.WriteString(c, "ok\n"); err != nil {
				return
			}
		}
	})
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", f.addr(), clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	const requests = 20
	for range requests {
		if _, err := io.WriteString(c, "GET\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.Close()
	_ = f.ln.Close()
	wg.Wait()
	if got := f.value(t, "edgeproxy_tls_record_cpu_seconds_total", map[string]string{"direction": "in"}); got < requests-1 || got > requests+1 {
		t.Errorf("record CPU in at 1 s per read: got %v; want %d±1 reads", got, requests)
	}
	if got := f.value(t, "edgeproxy_tls_read_cpu_seconds", nil); got != 1 {
		t.Errorf("edgeproxy_tls_read_cpu_seconds: got %v; want 1", got)
	}
}

// Calibration runs in the background: New returns before it is done, and the costs it
// measured are charged once Calibrated is closed.
func TestNew_CalibratesInTheBackground(t *testing.T) {
	if !threadClockWorks() {
		t.Skip("no thread CPU clock")
	}
	dir := t.TempDir()
	start := time.Now()
	a, err := New(Options{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	returned := time.Since(start)
	// Read the costs, then look whether the calibration had ended (it applies its costs
	// before it says so): if not, what was read is what New put in place. A calibration
	// can end within milliseconds (seen in CI), and then there is nothing to check.
	got, want := a.costs.Load().HandshakeFactor, ProvisionalCosts().HandshakeFactor
	select {
	case <-a.Calibrated():
	default:
		if got != want {
			t.Errorf("before calibration: handshake factor %v; want the provisional %v", got, want)
		}
	}
	waitCalibrated(t, a)
	t.Logf("New returned after %v; calibration done after %v", returned, time.Since(start))
	c := a.costs.Load()
	if c.Seal[AES128GCM].PerByte <= 0 {
		t.Errorf("after calibration: aes128gcm seal %+v; want a measured cost", c.Seal[AES128GCM])
	}

	// The next start of this build on this machine takes the costs from the cache, at once.
	b, err := New(Options{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Calibrated():
	default:
		t.Fatal("a start with a cached calibration is not calibrated at once")
	}
	if got := b.costs.Load(); got.DataFactor != c.DataFactor || got.PerRead != c.PerRead || got.Seal[AES128GCM] != c.Seal[AES128GCM] {
		t.Errorf("cached costs %+v; want the calibrated %+v", got, c)
	}
}

// A cache directory that cannot be written, or a cached file that is not a calibration
// of this build, is no error: the edge calibrates and serves on.
func TestNew_CalibratesWhenTheCacheIsUnusable(t *testing.T) {
	if !threadClockWorks() {
		t.Skip("no thread CPU clock")
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	garbled := t.TempDir()
	if err := os.WriteFile(currentCacheKey().path(garbled), []byte(`{"key":{"format":1}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(file, "sub"), garbled} {
		a, err := New(Options{CacheDir: dir})
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		waitCalibrated(t, a)
		if c := a.costs.Load(); c.Seal[AES128GCM].PerByte <= 0 || c.HandshakeFactor == ProvisionalCosts().HandshakeFactor {
			t.Errorf("%s: costs %+v; want calibrated ones", dir, c)
		}
	}
}

func waitCalibrated(t *testing.T, a *Accountant) {
	t.Helper()
	select {
	case <-a.Calibrated():
	case <-time.After(2 * time.Minute):
		t.Fatal("calibration did not finish")
	}
}

// The data factor is a ratio of sums, not swayed by the rounds that something else got in
// the way of: the eighth of the rounds with the highest ratio and the eighth with the
// lowest are left out.
func TestTrimmedSums_IgnoreOutlyingRounds(t *testing.T) {
	var rounds []dataRound
	for range 14 {
		rounds = append(rounds, dataRound{Extra: 3, Charged: 2, Reads: 1})
	}
	rounds = append(rounds, dataRound{Extra: 40, Charged: 2, Reads: 1}, dataRound{Extra: -5, Charged: 2, Reads: 1})
	if got := trimmedSums(rounds); got != (dataRound{Extra: 36, Charged: 24, Reads: 12}) {
		t.Errorf("trimmedSums: got %+v; want 12 rounds of 3, 2, 1 (two cut at each end)", got)
	}
}

// The data factor and the per-read cost are the solution of the bulk and the small
// exchanges' equations; a negative per-read cost (noise) is replaced by the provisional
// one, and the factor solved from the bulk exchanges with it.
func TestSolveDataCosts_FitsPerReadAndDataFactor(t *testing.T) {
	// DataFactor 1.5, PerRead 4000 ns: bulk 100 reads, 10000 ns of records; small 400
	// reads, 2000 ns of records.
	bulk := dataRound{Extra: 1.5*10000 + 4000*100, Charged: 10000, Reads: 100}
	small := dataRound{Extra: 1.5*2000 + 4000*400, Charged: 2000, Reads: 400}
	d, r := solveDataCosts(bulk, small)
	if math.Abs(d-1.5) > 1e-9 || math.Abs(r-4e-6) > 1e-15 {
		t.Errorf("solveDataCosts: got %v, %v; want 1.5, 4e-6", d, r)
	}
	small.Extra = 1.5 * 2000 // small exchanges cheaper per record than bulk ones
	small.Charged = 4000
	r0 := ProvisionalCosts().PerRead
	if d, r := solveDataCosts(bulk, small); r != r0 || math.Abs(d-(bulk.Extra-r0*1e9*bulk.Reads)/bulk.Charged) > 1e-9 {
		t.Errorf("solveDataCosts with a negative per-read cost: got %v, %v; want the provisional per-read cost %v and the bulk exchanges' factor with it", d, r, r0)
	}
}

// A connection whose handshake crypto/tls starts by itself, without Accountant.Handshake
// (net/http serving the listener directly), is served as usual and measured not at all:
// no handshake counted, no record charged.
func TestListener_HandshakeNotThroughAccountantIsUnmeasured(t *testing.T) {
	f := newFixture(t, Options{}, nil)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(f.ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	if body := get(t, &http.Transport{TLSClientConfig: clientConfig()}, "https://"+f.addr()+"/"); body != "ok" {
		t.Errorf("body: got %q; want ok", body)
	}
	for _, m := range []string{"edgeproxy_tls_handshakes_total", "edgeproxy_tls_record_bytes_total", "edgeproxy_tls_cpu_seconds_total"} {
		if got := f.value(t, m, nil); got != 0 {
			t.Errorf("%s: got %v; want 0", m, got)
		}
	}
}

// A connection passes what it charges to the shared counters in batches: every
// flushRecords records, at once for an alert, and when the connection fails; nothing is
// lost between the tally and the counters.
func TestConn_TallyFlushes(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := New(Options{Registerer: reg, Costs: testCosts})
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{a: a, sent: recordSizeBoostThreshold}
	c.finishHandshake(&tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256})
	f := &fixture{reg: reg}
	out := func() float64 {
		return f.value(t, "edgeproxy_tls_record_bytes_total", map[string]string{"direction": "out"})
	}
	const body = 100 + 17
	for range flushRecords - 1 {
		c.chargeOut(typeApplicationData, body, true)
	}
	if c.outTally.now || out() != 0 {
		t.Fatalf("after %d records: flush due %v, counted %v; want neither", flushRecords-1, c.outTally.now, out())
	}
	c.chargeOut(typeApplicationData, body, true)
	if !c.outTally.now {
		t.Fatalf("after %d records: no flush due", flushRecords)
	}
	c.outTally.flush(a, a.recordBytesOut, a.recordCPUOut)
	if got, want := out(), float64(flushRecords*(recordHeaderLen+body)); got != want {
		t.Errorf("bytes out: got %v; want %v", got, want)
	}
	c.chargeOut(typeApplicationData, 2+17, true) // a TLS 1.3 close_notify
	if !c.outTally.now {
		t.Errorf("close_notify: no flush due")
	}
}

// A server that answers one request and closes, without reading again, still has that
// request's record counted: Close counts what the connection had not yet passed on.
func TestConn_CloseCountsWhatIsPending(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true}
	f := newFixture(t, Options{}, cfg)
	wg := f.serve(func(c net.Conn) {
		if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			_, _ = c.Write(make([]byte, 10))
		}
	})
	exchange(t, f.addr(), clientConfig(), 10)
	_ = f.ln.Close()
	wg.Wait()
	const overhead = recordHeaderLen + 16 + 1
	if got, want := f.value(t, "edgeproxy_tls_record_bytes_total", map[string]string{"direction": "in"}), float64(overhead+len("10\n")); got != want {
		t.Errorf("record bytes in: got %v; want %v (the request)", got, want)
	}
	if got, want := f.value(t, "edgeproxy_tls_record_bytes_total", map[string]string{"direction": "out"}), float64(2*overhead+10+2); got != want {
		t.Errorf("record bytes out: got %v; want %v (the response and a close_notify)", got, want)
	}
}

// A read that a deadline interrupts costs more through crypto/tls than on a plain
// connection (its goroutine's stack grows through tls.Conn.Read), and the start-up
// measures it in microseconds, not nothing and not milliseconds.
func TestMeasureInterruptedRead_TLSCostsMoreThanPlain(t *testing.T) {
	cert, err := calibrationCert()
	if err != nil {
		t.Fatal(err)
	}
	got, err := measureInterruptedRead(cert, ProvisionalCosts())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("interrupted read: %.2f µs", got*1e6)
	if got < 0 || got > 100e-6 {
		t.Errorf("interrupted read costs %.2f µs, want a few µs", got*1e6)
	}
}

// A read that its deadline ends before data comes (net/http's background read, one per
// request) is charged the interrupted-read cost once, and the gauge shows it; a read that
// returns data is not charged it.
func TestAccountant_ChargesEachInterruptedReadItsCost(t *testing.T) {
	costs := Costs{Seal: map[string]Linear{}, Open: map[string]Linear{}, InterruptedRead: 1}
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t, "ecdsa")}, SessionTicketsDisabled: true}
	f := newFixture(t, Options{Costs: &costs}, cfg)
	const interrupted = 5
	wg := f.serve(func(c net.Conn) {
		var b [1]byte
		for range interrupted {
			_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read: %v, want a deadline error", err)
				return
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Read(b[:]) // data: not an interrupted read
		_, _ = c.Write(b[:])
	})
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", f.addr(), clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	time.Sleep(50 * time.Millisecond) // the server's reads time out meanwhile
	if _, err := c.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	_ = f.ln.Close()
	wg.Wait()
	if got := f.value(t, "edgeproxy_tls_record_cpu_seconds_total", map[string]string{"direction": "in"}); got != interrupted {
		t.Errorf("record CPU in at 1 s per interrupted read: got %v; want %d", got, interrupted)
	}
	if got := f.value(t, "edgeproxy_tls_interrupted_read_cpu_seconds", nil); got != 1 {
		t.Errorf("edgeproxy_tls_interrupted_read_cpu_seconds: got %v; want 1", got)
	}
}

// must returns c, for a connection the test knows to be measured.
func must(c *conn, ok bool) *conn {
	if !ok {
		panic("not a measured connection")
	}
	return c
}
