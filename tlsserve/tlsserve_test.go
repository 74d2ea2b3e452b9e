package tlsserve

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"edgeproxy/certs"
	"edgeproxy/telemetry/tlscost"
)

// selfSigned is a certificate source's configuration, as the edge hands it over.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	src, err := certs.New(certs.Options{SelfSigned: true})
	if err != nil {
		t.Fatal(err)
	}
	return src.TLSConfig()
}

// serveEcho serves ln as proxy.Server does (a goroutine per connection, Handshake first)
// and answers each connection's one line with "ok\n". It stops when the test ends.
func serveEcho(t *testing.T, ln net.Listener, handshake func(*tls.Conn) error) string {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if tc, ok := c.(*tls.Conn); ok {
					if err := handshake(tc); err != nil {
						return
					}
				}
				buf := make([]byte, 3)
				if _, err := io.ReadFull(c, buf); err == nil {
					_, _ = io.WriteString(c, "ok\n")
				}
			}()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// dial makes one exchange with cfg and reports whether the session resumed.
func dial(addr string, cfg *tls.Config) (resumed bool, err error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return false, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		return false, err
	}
	// Reading the answer also reads a TLS 1.3 session ticket.
	if _, err := io.ReadFull(c, make([]byte, 3)); err != nil {
		return false, err
	}
	return c.ConnectionState().DidResume, nil
}

func client(maxVersion uint16) *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", MaxVersion: maxVersion,
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
}

// A swap to tls.min_version 1.3 turns TLS 1.2 clients away from the next handshake on,
// without a new listener; a swap back lets them in again.
func TestServer_SwapAppliesMinVersion(t *testing.T) {
	tmpl := selfSigned(t)
	srv := New(Settings{Template: tmpl, MinVersion: tls.VersionTLS12})
	addr := serveEcho(t, srv.Listener(listen(t)), Handshake)

	if _, err := dial(addr, client(tls.VersionTLS12)); err != nil {
		t.Fatalf("TLS 1.2 client with min_version 1.2: %v", err)
	}
	srv.Swap(srv.Prepare(Settings{Template: tmpl, MinVersion: tls.VersionTLS13}))
	if _, err := dial(addr, client(tls.VersionTLS12)); err == nil {
		t.Errorf("TLS 1.2 client connected after a swap to min_version 1.3; want refused")
	}
	if _, err := dial(addr, client(tls.VersionTLS13)); err != nil {
		t.Errorf("TLS 1.3 client after the swap: %v", err)
	}
	if got := srv.Current().MinVersion; got != tls.VersionTLS13 {
		t.Errorf("Current().MinVersion = %x; want TLS 1.3", got)
	}
}

// Preparing a configuration changes nothing until it is swapped in (a reload that fails
// later leaves the TLS as it was).
func TestServer_PrepareAloneChangesNothing(t *testing.T) {
	tmpl := selfSigned(t)
	srv := New(Settings{Template: tmpl, MinVersion: tls.VersionTLS12})
	addr := serveEcho(t, srv.Listener(listen(t)), Handshake)
	_ = srv.Prepare(Settings{Template: tmpl, MinVersion: tls.VersionTLS13})
	if _, err := dial(addr, client(tls.VersionTLS12)); err != nil {
		t.Errorf("TLS 1.2 client after a Prepare without Swap: %v", err)
	}
}

// Sessions resume across a swap, in TLS 1.2 and 1.3: the new configuration gets the
// ticket keys in use.
func TestServer_ResumesAcrossSwap(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			tmpl := selfSigned(t)
			srv := New(Settings{Template: tmpl})
			addr := serveEcho(t, srv.Listener(listen(t)), Handshake)
			ccfg := client(v)
			if _, err := dial(addr, ccfg); err != nil {
				t.Fatal(err)
			}
			srv.Swap(srv.Prepare(Settings{Template: tmpl}))
			resumed, err := dial(addr, ccfg)
			if err != nil || !resumed {
				t.Errorf("after a swap: resumed %v, err %v; want resumed", resumed, err)
			}
		})
	}
}

// The TLS cost accounting follows the swaps: connections accepted while it is on are
// measured (with the key type of the certificate chosen), those accepted while it is
// off are not.
func TestServer_SwapTurnsAccountingOnAndOff(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := tlscost.New(tlscost.Options{Registerer: reg, Costs: &tlscost.Costs{Seal: map[string]tlscost.Linear{}, Open: map[string]tlscost.Linear{}}})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := selfSigned(t)
	srv := New(Settings{Template: tmpl})
	addr := serveEcho(t, srv.Listener(listen(t)), Handshake)
	count := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0.0
		for _, mf := range mfs {
			if mf.GetName() != "edgeproxy_tls_handshakes_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "key" && l.GetValue() == "ecdsa" {
						n += m.GetCounter().GetValue()
					}
				}
			}
		}
		return n
	}
	steps := []struct {
		cost *tlscost.Accountant
		want float64
	}{{nil, 0}, {a, 1}, {nil, 1}, {a, 2}}
	for i, st := range steps {
		srv.Swap(srv.Prepare(Settings{Template: tmpl, Cost: st.cost}))
		if _, err := dial(addr, client(0)); err != nil {
			t.Fatal(err)
		}
		if got := count(); got != st.want {
			t.Errorf("step %d (accounting on: %v): %v measured ECDSA handshakes; want %v", i, st.cost != nil, got, st.want)
		}
	}
}

// Keys rotate; a ticket resumes while its key is among the Keep newest, also on a new
// configuration attached later (a reload), and not after.
func TestSessionTickets_RotateAndShare(t *testing.T) {
	tmpl := selfSigned(t)
	tickets := &SessionTickets{Keep: 2}
	cfg1 := tmpl.Clone()
	tickets.Attach(cfg1)
	addr1 := serveEcho(t, tls.NewListener(listen(t), cfg1), (*tls.Conn).Handshake)
	ccfg := client(0)
	if _, err := dial(addr1, ccfg); err != nil {
		t.Fatal(err)
	}

	// A reload: a new configuration, the same rotator, one rotation later.
	tickets.Rotate()
	cfg2 := tmpl.Clone()
	tickets.Attach(cfg2)
	tickets.Detach(cfg1)
	addr2 := serveEcho(t, tls.NewListener(listen(t), cfg2), (*tls.Conn).Handshake)
	if resumed, err := dial(addr2, ccfg); err != nil || !resumed {
		t.Errorf("after one rotation and a reload: resumed %v (err %v); want resumed", resumed, err)
	}
	// The resumption above issued a ticket under the newest key; two more rotations drop it.
	tickets.Rotate()
	tickets.Rotate()
	if resumed, err := dial(addr2, ccfg); err != nil || resumed {
		t.Errorf("after the key left the window: resumed %v (err %v); want a full handshake", resumed, err)
	}
}

func TestSessionTickets_Run(t *testing.T) {
	tickets := &SessionTickets{Interval: 10 * time.Millisecond, Keep: 3}
	cfg := &tls.Config{}
	tickets.Attach(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tickets.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tickets.mu.Lock()
		n := len(tickets.keys)
		tickets.mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keys: got %d; want 3 after rotations", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}

// net/http behind the listener, with Config as its TLSConfig, serves HTTP/2 to a client
// that offers it (net/http sets HTTP/2 up only for a TLSConfig offering h2).
func TestServer_NetHTTPServesHTTP2(t *testing.T) {
	srv := New(Settings{Template: selfSigned(t)})
	hs := &http.Server{TLSConfig: srv.Config(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Proto)
	})}
	ln := srv.Listener(listen(t))
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: client(0), ForceAttemptHTTP2: true}}
	resp, err := c.Get("https://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "HTTP/2.0" {
		t.Errorf("served over %s; want HTTP/2.0", body)
	}
}

// sharedKeys is a TicketKeySource with one fixed key, as a fleet's would be.
type sharedKeys struct {
	key     [32]byte
	mu      sync.Mutex
	applied map[*tls.Config]bool
}

func (s *sharedKeys) Apply(cfg *tls.Config) (remove func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied[cfg] = true
	cfg.SetSessionTicketKeys([][32]byte{s.key})
	return func() {
		s.mu.Lock()
		delete(s.applied, cfg)
		s.mu.Unlock()
	}
}

// Two servers sharing their ticket keys (two replicas of a fleet) resume each other's
// sessions, across a swap too; a replaced configuration is no longer updated.
func TestServer_SharedTicketKeysResumeOnAnotherServer(t *testing.T) {
	keys := &sharedKeys{key: [32]byte{1, 2, 3}, applied: map[*tls.Config]bool{}}
	tmpl := selfSigned(t)
	a, b := New(Settings{Template: tmpl}), New(Settings{Template: tmpl})
	a.ShareTicketKeys(keys)
	b.ShareTicketKeys(keys)
	addrA := serveEcho(t, a.Listener(listen(t)), Handshake)
	addrB := serveEcho(t, b.Listener(listen(t)), Handshake)
	ccfg := client(tls.VersionTLS13)
	if _, err := dial(addrA, ccfg); err != nil {
		t.Fatal(err)
	}
	old := b.Current()
	b.Swap(b.Prepare(Settings{Template: tmpl}))
	if resumed, err := dial(addrB, ccfg); err != nil || !resumed {
		t.Errorf("on B with A's ticket: resumed %v, err %v; want resumed", resumed, err)
	}
	keys.mu.Lock()
	defer keys.mu.Unlock()
	if keys.applied[old] || !keys.applied[b.Current()] || len(keys.applied) != 2 {
		t.Errorf("configurations updated: %d, replaced one still: %v; want A's and B's current only", len(keys.applied), keys.applied[old])
	}
}
