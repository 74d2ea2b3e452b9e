package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// testCert returns a self-signed certificate for fleet.test and a pool trusting it.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	cert := testutil.SelfSignedCert(t, "fleet.test")
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	return cert, pool
}

// serveTLS runs a TLS server on a loopback port with cfg; each connection gets one byte
// after the handshake, so that the client reads the TLS 1.3 session tickets sent with it.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write([]byte("x"))
				_, _ = c.Read(make([]byte, 1)) // until the client closes
			})
		}
	})
	return ln.Addr().String()
}

// dial connects with cfg, reads the server's byte and reports whether the session was
// resumed.
func dial(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return c.ConnectionState().DidResume
}

// runTicketKeys runs tk until the test ends.
func runTicketKeys(t *testing.T, tk *TicketKeys) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { tk.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

func (tk *TicketKeys) installed() *ticketKeySet {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	return tk.set
}

// Issue 15: a TLS 1.3 client resumes on replica B with a ticket from replica A, also
// after a rotation.
func TestTicketKeys_ResumeOnAnotherReplica(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	cert, pool := testCert(t)
	rotation := 2 * time.Second
	var addrs []string
	var tks []*TicketKeys
	for range 2 {
		tk := NewTicketKeys(newTestStore(t, testOptions(r)), TicketKeysOptions{Rotation: rotation, Keep: 2})
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
		remove := tk.Apply(cfg)
		t.Cleanup(remove)
		runTicketKeys(t, tk)
		addrs = append(addrs, serveTLS(t, cfg))
		tks = append(tks, tk)
	}
	// A server with Go's own per-process keys: the control.
	lone := serveTLS(t, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})

	waitFor(t, 10*time.Second, "both replicas install the same keys", func() bool {
		a, b := tks[0].installed(), tks[1].installed()
		return a != nil && b != nil && a.Next == b.Next
	})
	client := func() *tls.Config {
		return &tls.Config{RootCAs: pool, ServerName: "fleet.test", MinVersion: tls.VersionTLS13,
			ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	}

	c := client()
	if dial(t, addrs[0], c) {
		t.Fatal("first connection to A resumed; want a full handshake")
	}
	if !dial(t, addrs[1], c) {
		t.Fatal("connection to B with A's ticket did not resume")
	}
	if dial(t, lone, client()) {
		t.Fatal("control: a fresh client resumed on a server of its own")
	}
	c2 := client()
	dial(t, addrs[0], c2)
	if dial(t, lone, c2) {
		t.Fatal("control: A's ticket resumed on a server that does not share the keys")
	}

	// After a rotation the old ticket still resumes (Keep), and both replicas agree on
	// the new encrypting key, which had been distributed as Next.
	c3 := client()
	dial(t, addrs[0], c3)
	before := tks[0].installed()
	waitFor(t, 3*rotation, "a rotation reaches both replicas", func() bool {
		a, b := tks[0].installed(), tks[1].installed()
		return a.Rotated.After(before.Rotated) && b.Next == a.Next
	})
	after := tks[1].installed()
	if after.Keys[0] != before.Next || after.Keys[1] != before.Keys[0] {
		t.Fatal("rotation: want the old Next to encrypt and the old encrypting key kept")
	}
	if !dial(t, addrs[1], c3) {
		t.Fatal("a ticket from before the rotation did not resume on B")
	}
}

// Issue 15: Redis restarted empty gets the same key set back, not a new one, so that
// tickets issued before stay valid.
func TestTicketKeys_RedisRestartedEmpty_KeysKept(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	tk := NewTicketKeys(newTestStore(t, testOptions(r)), TicketKeysOptions{})
	runTicketKeys(t, tk)
	waitFor(t, 10*time.Second, "keys installed", func() bool { return tk.installed() != nil })
	before := tk.installed()
	r.Stop()
	r.Start()
	other := newTestStore(t, testOptions(r))
	waitFor(t, 10*time.Second, "the key set is back in Redis", func() bool {
		_, err := other.Get(context.Background(), ticketKeysName)
		return err == nil
	})
	tk2 := NewTicketKeys(other, TicketKeysOptions{})
	set, err := tk2.load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if set.Next != before.Next || set.Keys[0] != before.Keys[0] {
		t.Fatal("after Redis restarted empty the fleet has new ticket keys; want the old ones back")
	}
}
