package e2e

// End-to-end tests of a fleet (issue 15): three edgeproxy processes share their ACME
// state and session ticket keys through a real redis-server, and get their certificate
// from a real Pebble that validates TLS-ALPN-01 on the second replica's HTTPS port and
// HTTP-01 on the third's plain-HTTP port, so the replica that orders is often not the
// one the CA reaches.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"edgeproxy/internal/testutil"
)

// fleetReplica is one edgeproxy of the fleet.
type fleetReplica struct {
	name                 string
	https, http, metrics string
	cacheDir             string // tls.acme.cache_dir, kept across restarts
	keyFile              string
	proc                 *testutil.Proc
}

// fleetSite is Redis, Pebble and three replicas for acmeDomain.
type fleetSite struct {
	redis    *testutil.Redis
	pebble   *testutil.Pebble
	roots    *x509.CertPool
	replicas []*fleetReplica
	bin      string
	target   string // the replicas' pool target
}

// newReplica returns a replica on free loopback ports, not started.
func newReplica(t *testing.T, name string) *fleetReplica {
	return &fleetReplica{name: name,
		https:    testutil.LoopbackAddr(t, "127.0.0.1"),
		http:     testutil.LoopbackAddr(t, "127.0.0.1"),
		metrics:  testutil.LoopbackAddr(t, "127.0.0.1"),
		cacheDir: filepath.Join(t.TempDir(), "acme")}
}

// writeKey writes a fleet encryption key file of 32 bytes of b.
func writeKey(t *testing.T, b byte) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "fleet-key")
	if err := os.WriteFile(file, []byte(strings.Repeat(fmt.Sprintf("%02x", b), 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// start runs r as a replica of the fleet whose values are sealed with keyFile's key.
func (s *fleetSite) start(t testing.TB, r *fleetReplica, keyFile string) {
	t.Helper()
	config := testutil.FleetReplicaConfig{HTTPS: r.https, HTTP: r.http, Metrics: r.metrics,
		CacheDir: r.cacheDir, Domains: []string{acmeDomain}, Pebble: s.pebble,
		RedisAddr: s.redis.Addr, KeyFile: keyFile, Target: s.target}.YAML()
	file := filepath.Join(t.TempDir(), "edgeproxy.yaml")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	r.keyFile = keyFile
	r.proc = testutil.StartProcWith(t, testutil.ProcOptions{Name: "edgeproxy-" + r.name}, s.bin, "run", "-config", file)
}

// fleetOptions shape startFleet.
type fleetOptions struct {
	// pebbleEnv are extra environment variables for Pebble.
	pebbleEnv []string
	// validity is the lifetime of Pebble's certificates; 0 means Pebble's default.
	validity time.Duration
	// http01Only closes Pebble's TLS-ALPN-01 port: only HTTP-01, on replica C, validates.
	http01Only bool
	// firstOrders starts replica A alone and the others once A is ordering (A then holds
	// the order lock); otherwise B and C start together, and A as soon as they listen.
	firstOrders bool
}

// startFleet starts Redis, Pebble and three replicas, and waits until each serves (not
// yet until each has a certificate).
func startFleet(t *testing.T, opts fleetOptions) *fleetSite {
	t.Helper()
	s := &fleetSite{redis: testutil.StartRedis(t, testutil.RedisOptions{})}
	for _, name := range []string{"A", "B", "C"} {
		s.replicas = append(s.replicas, newReplica(t, name))
	}
	tlsPort := acmePort(t, s.replicas[1].https)
	if opts.http01Only {
		tlsPort = 0 // a free port nothing listens on
	}
	s.pebble = testutil.StartPebble(t, testutil.PebbleOptions{
		TLSPort:  tlsPort,
		HTTPPort: acmePort(t, s.replicas[2].http),
		Env:      append([]string{"PEBBLE_AUTHZREUSE=0"}, opts.pebbleEnv...),

		CertificateValidity: opts.validity,
	})
	s.roots = s.pebble.Roots()
	s.target = strings.TrimPrefix(testutil.EchoBackend(t, new(atomic.Int64)).URL, "http://")
	s.bin = testutil.BuildEdgeproxy(t)
	keyFile := writeKey(t, 0xab)
	if opts.firstOrders {
		a := s.replicas[0]
		s.start(t, a, keyFile)
		if !a.proc.WaitForOutput("acme: ordering a certificate for "+acmeDomain, 30*time.Second) {
			t.Fatalf("replica A did not start ordering within 30s:\n%s", a.proc.Output())
		}
		for _, r := range s.replicas[1:] {
			s.start(t, r, keyFile)
		}
	} else {
		// B and C, which Pebble validates on, listen before anyone orders (a replica binds
		// its listeners before it orders): an order validated on a replica not listening
		// yet fails and is placed again (seen: 3 orders instead of 1). A follows at once.
		for _, r := range s.replicas[1:] {
			s.start(t, r, keyFile)
		}
		for _, r := range s.replicas[1:] {
			if !r.proc.WaitForOutput("edgeproxy serving", 15*time.Second) {
				t.Fatalf("replica %s did not start:\n%s", r.name, r.proc.Output())
			}
		}
		s.start(t, s.replicas[0], keyFile)
	}
	for _, r := range s.replicas {
		if !r.proc.WaitForOutput("edgeproxy serving", 15*time.Second) {
			t.Fatalf("replica %s did not start:\n%s", r.name, r.proc.Output())
		}
	}
	return s
}

// dialReplica makes a TLS connection to r for acmeDomain, verified against Pebble's root,
// with cfg's other settings (nil: none), reads one HTTP response (and so the TLS 1.3
// session ticket), and returns the connection's state.
func (s *fleetSite) dialReplica(r *fleetReplica, cfg *tls.Config) (tls.ConnectionState, error) {
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg.ServerName, cfg.RootCAs, cfg.NextProtos = acmeDomain, s.roots, []string{"http/1.1"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", r.https, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+acmeDomain+"\r\nConnection: close\r\n\r\n"); err != nil {
		return tls.ConnectionState{}, err
	}
	_, _ = io.Copy(io.Discard, conn)
	return conn.ConnectionState(), nil
}

// waitServing waits until every replica presents a trusted certificate, and returns each
// one's leaf.
func (s *fleetSite) waitServing(t *testing.T, timeout time.Duration) []*x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var leaves []*x509.Certificate
	for _, r := range s.replicas {
		for {
			st, err := s.dialReplica(r, nil)
			if err == nil {
				leaves = append(leaves, st.PeerCertificates[0])
				break
			}
			if time.Now().After(deadline) || r.proc.Exited() {
				t.Fatalf("replica %s: no trusted certificate within %v: %v\n%s", r.name, timeout, err, s.logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return leaves
}

// logs are the replicas' outputs, for failures.
func (s *fleetSite) logs() string {
	var b strings.Builder
	for _, r := range s.replicas {
		fmt.Fprintf(&b, "--- replica %s:\n%s\n", r.name, r.proc.Output())
	}
	return b.String()
}

// Three replicas started together place one order for their name, whichever replica the
// CA validates, and serve the same certificate; a TLS 1.3 session from one resumes on
// another (shared ticket keys); with Redis stopped after issuance every replica still
// completes handshakes and /healthz answers 200.
func TestFleet_ThreeReplicasOneOrderSharedCertificateAndTickets(t *testing.T) {
	t.Parallel()
	fleetTest := t // a replica restarted in a subtest must outlive it: the later ones need it
	s := startFleet(t, fleetOptions{})
	leaves := s.waitServing(t, 90*time.Second)
	for i, leaf := range leaves {
		checkIssued(t, leaf)
		if leaf.SerialNumber.Cmp(leaves[0].SerialNumber) != 0 {
			t.Errorf("replica %s serves serial %x; replica A %x: want one certificate for the fleet", s.replicas[i].name, leaf.SerialNumber, leaves[0].SerialNumber)
		}
	}
	if n := s.pebble.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders; want 1 for the fleet\n%s", n, s.logs())
	}
	var ordered, answered []string
	for _, r := range s.replicas {
		out := r.proc.Output()
		if strings.Contains(out, "acme: certificate obtained for "+acmeDomain) {
			ordered = append(ordered, r.name)
		}
		if strings.Contains(out, "challenge for "+acmeDomain) {
			answered = append(answered, r.name)
		}
	}
	if len(ordered) != 1 || len(answered) == 0 {
		t.Errorf("replicas that obtained the certificate: %v, that answered a challenge: %v; want one, and at least one\n%s", ordered, answered, s.logs())
	}
	t.Logf("one order for three replicas (placed by %v, challenge answered by %v), serial %x", ordered, answered, leaves[0].SerialNumber)

	t.Run("ResumesOnAnotherReplica", func(t *testing.T) {
		// The replicas install the fleet's keys when they read them: retry for a while.
		deadline := time.Now().Add(15 * time.Second)
		for {
			cfg := &tls.Config{MinVersion: tls.VersionTLS13, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			_, errA := s.dialReplica(s.replicas[0], cfg)
			st, errB := s.dialReplica(s.replicas[1], cfg)
			if errA == nil && errB == nil && st.DidResume {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("a TLS 1.3 session from replica A did not resume on B within 15s (errors %v, %v)\n%s", errA, errB, s.logs())
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("RedisStoppedHandshakesSucceed", func(t *testing.T) {
		s.redis.Stop()
		for _, r := range s.replicas {
			for i := range 3 {
				st, err := s.dialReplica(r, nil)
				if err != nil {
					t.Fatalf("replica %s, handshake %d with Redis down: %v", r.name, i, err)
				}
				if st.PeerCertificates[0].SerialNumber.Cmp(leaves[0].SerialNumber) != 0 {
					t.Errorf("replica %s serves serial %x with Redis down; want %x", r.name, st.PeerCertificates[0].SerialNumber, leaves[0].SerialNumber)
				}
			}
			resp, err := http.Get("http://" + r.metrics + "/healthz")
			if err != nil {
				t.Fatalf("replica %s /healthz: %v", r.name, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("replica %s /healthz with Redis down: %s; want 200", r.name, resp.Status)
			}
		}
		if n := s.pebble.Orders(); n != 1 {
			t.Errorf("Pebble got %d orders after Redis stopped; want still 1", n)
		}
	})

	t.Run("RestartedWithRedisDownServesLocalCopy", func(t *testing.T) {
		c := s.replicas[2]
		acmeStop(t, c.proc)
		// Registered with the whole test, not this subtest, whose end would kill it: the
		// next subtest needs C, the only replica sure to hold the account key, to write
		// it back to the Redis restarted empty.
		s.start(fleetTest, c, c.keyFile)
		if !c.proc.WaitForOutput("edgeproxy serving", 15*time.Second) {
			t.Fatalf("replica C did not start with Redis down:\n%s", c.proc.Output())
		}
		st, err := s.dialReplica(c, nil)
		if err != nil {
			t.Fatalf("replica C restarted with Redis down: handshake: %v\n%s", err, c.proc.Output())
		}
		if st.PeerCertificates[0].SerialNumber.Cmp(leaves[0].SerialNumber) != 0 {
			t.Errorf("replica C restarted with Redis down serves %x; want its local copy %x", st.PeerCertificates[0].SerialNumber, leaves[0].SerialNumber)
		}
	})

	rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr})
	defer rdb.Close()
	t.Run("RedisRestartedEmptyIsRefilled", func(t *testing.T) {
		s.redis.Start() // empty
		deadline := time.Now().Add(60 * time.Second)
		for {
			n, err := rdb.Exists(context.Background(), "edgeproxy:data:"+acmeDomain, "edgeproxy:data:acme_account+key").Result()
			if err == nil && n == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Redis restarted empty has not got the certificate and account back within 60s (%d of 2, %v)\n%s", n, err, s.logs())
			}
			time.Sleep(200 * time.Millisecond)
		}
		if n := s.pebble.Orders(); n != 1 {
			t.Errorf("Pebble got %d orders after Redis came back empty; want still 1\n%s", n, s.logs())
		}
	})

	t.Run("OtherKeyRefusesStoredValues", func(t *testing.T) {
		d := newReplica(t, "D")
		s.start(t, d, writeKey(t, 0xcd))
		if !d.proc.WaitForOutput("encrypted with another key", 30*time.Second) {
			t.Fatalf("replica D with another key did not say so within 30s:\n%s", d.proc.Output())
		}
		if _, err := s.dialReplica(d, nil); err == nil {
			t.Errorf("replica D with another key completed a trusted handshake; want no certificate")
		}
		if n := s.pebble.Orders(); n != 1 {
			t.Errorf("Pebble got %d orders after a replica with another key started; want still 1", n)
		}
	})
}

// The lock holder killed with SIGKILL in the middle of its order (Pebble's validation is
// held by its random sleep) blocks the fleet only until its lock expires: another replica
// orders and every survivor serves the certificate within the lock's TTL (30 s) plus a
// retry and an order, and the survivors placed one order.
func TestFleet_LockHolderKilledMidOrder(t *testing.T) {
	t.Parallel()
	s := startFleet(t, fleetOptions{firstOrders: true, pebbleEnv: []string{"PEBBLE_VA_NOSLEEP=0", "PEBBLE_VA_SLEEPTIME=10"}})
	a := s.replicas[0]
	deadline := time.Now().Add(30 * time.Second)
	for s.pebble.Orders() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("replica A placed no order within 30s\n%s", s.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if _, err := a.proc.Wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	// A's orders: one, or two when Pebble validated before B listened (A starts first)
	// and A ordered again for HTTP-01 (an NLB would not have sent the validation to B).
	// Nobody else orders before A's lock expires.
	holderOrders := s.pebble.Orders()
	midOrder := !strings.Contains(a.proc.Output(), "acme: certificate obtained")
	survivors := &fleetSite{pebble: s.pebble, roots: s.roots, replicas: s.replicas[1:]}
	leaves := survivors.waitServing(t, 90*time.Second)
	if leaves[0].SerialNumber.Cmp(leaves[1].SerialNumber) != 0 {
		t.Errorf("B serves serial %x, C %x; want one certificate", leaves[0].SerialNumber, leaves[1].SerialNumber)
	}
	if n := s.pebble.Orders(); n > holderOrders+1 {
		t.Errorf("Pebble got %d orders, %d of them the killed holder's; want at most one more\n%s", n, holderOrders, survivors.logs())
	}
	t.Logf("holder killed mid-order: %v; the survivors served the certificate %v after the kill, %d order(s) in all",
		midOrder, time.Since(killed).Round(time.Millisecond), s.pebble.Orders())
}

// A renewal is one order for the fleet too, and every replica switches to the renewed
// certificate: 90-second certificates renew about 60 s in, on the first replica whose
// (jittered) renewal time comes; the others find it stored when they take the lock, or are
// told before.
func TestFleet_RenewalOneOrderAllSwitch(t *testing.T) {
	t.Parallel()
	s := startFleet(t, fleetOptions{validity: 90 * time.Second})
	first := s.waitServing(t, 90*time.Second)[0]
	deadline := first.NotAfter
	for _, r := range s.replicas {
		for {
			st, err := s.dialReplica(r, nil)
			if err != nil {
				t.Fatalf("replica %s: handshake during renewal: %v", r.name, err)
			}
			if leaf := st.PeerCertificates[0]; leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %s still serves %x at its expiry\n%s", r.name, first.SerialNumber, s.logs())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	leaves := s.waitServing(t, 10*time.Second)
	for i, leaf := range leaves {
		if leaf.SerialNumber.Cmp(leaves[0].SerialNumber) != 0 {
			t.Errorf("replica %s serves %x after the renewal, A %x; want one certificate", s.replicas[i].name, leaf.SerialNumber, leaves[0].SerialNumber)
		}
	}
	if n := s.pebble.Orders(); n != 2 {
		t.Errorf("Pebble got %d orders; want 2 (first issue and one renewal for the fleet)\n%s", n, s.logs())
	}
	t.Logf("renewed %v before expiry: serial %x -> %x on all three", time.Until(first.NotAfter).Round(time.Second), first.SerialNumber, leaves[0].SerialNumber)
}

// Any replica answers HTTP-01 too: with Pebble's TLS-ALPN-01 port closed, only replica C's
// plain-HTTP listener can validate, whichever replica orders.
func TestFleet_HTTP01AnsweredByAnyReplica(t *testing.T) {
	t.Parallel()
	s := startFleet(t, fleetOptions{http01Only: true})
	leaves := s.waitServing(t, 90*time.Second)
	for i, leaf := range leaves {
		if leaf.SerialNumber.Cmp(leaves[0].SerialNumber) != 0 {
			t.Errorf("replica %s serves %x, A %x; want one certificate", s.replicas[i].name, leaf.SerialNumber, leaves[0].SerialNumber)
		}
	}
	if !strings.Contains(s.replicas[2].proc.Output(), "answering the HTTP-01 challenge for "+acmeDomain) {
		t.Errorf("replica C did not answer the HTTP-01 challenge\n%s", s.logs())
	}
	for _, r := range s.replicas {
		if strings.Contains(r.proc.Output(), "acme: certificate obtained for "+acmeDomain) {
			t.Logf("ordered by replica %s, HTTP-01 answered by replica C", r.name)
		}
	}
	// One failed TLS-ALPN-01 order, then one validated by HTTP-01.
	if n := s.pebble.Orders(); n != 2 {
		t.Errorf("Pebble got %d orders; want 2 (TLS-ALPN-01 failed, HTTP-01)\n%s", n, s.logs())
	}
}

// get asks r's metrics listener for path and returns the status and body.
func (r *fleetReplica) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + r.metrics + path)
	if err != nil {
		t.Fatalf("replica %s GET %s: %v", r.name, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// storageErrors is r's edgeproxy_storage_errors_total{op}.
func (r *fleetReplica) storageErrors(t *testing.T, op string) float64 {
	t.Helper()
	_, metrics := r.get(t, "/metrics")
	return counterValue(metrics, `edgeproxy_storage_errors_total{op="`+op+`"}`)
}

// Redis down when the replicas start: the two with a local copy of the certificate serve
// it at once; a new replica without one says why it has none (its order attempt fails:
// no fleet lock) and keeps trying to reach Redis with backoff, counting each failure;
// every /healthz answers 200 (it says the edge runs). When Redis comes back (empty), the
// two write their copy back and the new replica serves it, without a new order.
func TestFleet_RedisDownAtStart(t *testing.T) {
	t.Parallel()
	s := startFleet(t, fleetOptions{})
	serial := s.waitServing(t, 90*time.Second)[0].SerialNumber
	// Usually 1; more when an order reached Pebble before the validating replica listened.
	orders := s.pebble.Orders()
	for _, r := range s.replicas {
		acmeStop(t, r.proc)
	}
	s.redis.Stop()

	a, b, d := s.replicas[0], s.replicas[1], newReplica(t, "D")
	s.replicas = []*fleetReplica{a, b, d}
	for _, r := range s.replicas {
		s.start(t, r, a.keyFile)
	}
	for _, r := range s.replicas {
		if !r.proc.WaitForOutput("edgeproxy serving", 15*time.Second) {
			t.Fatalf("replica %s did not start with Redis down:\n%s", r.name, r.proc.Output())
		}
	}
	for _, r := range []*fleetReplica{a, b} {
		st, err := s.dialReplica(r, nil)
		if err != nil {
			t.Fatalf("replica %s with a local copy, Redis down at start: handshake: %v\n%s", r.name, err, r.proc.Output())
		}
		if st.PeerCertificates[0].SerialNumber.Cmp(serial) != 0 {
			t.Errorf("replica %s serves %x; want its local copy %x", r.name, st.PeerCertificates[0].SerialNumber, serial)
		}
	}
	noCert := "acme: no certificate for " + acmeDomain + " yet, and the fleet's storage cannot be reached"
	if !d.proc.WaitForOutput(noCert, 20*time.Second) {
		t.Fatalf("replica D without a certificate did not say why within 20s:\n%s", d.proc.Output())
	}
	if _, err := s.dialReplica(d, nil); err == nil {
		t.Errorf("replica D completed a trusted handshake with Redis down and no certificate")
	}
	// The order lock is tried again with backoff (at once, then after 3 s, 6 s, ...): a
	// third failure within 10 s.
	retryDeadline := time.Now().Add(10 * time.Second)
	for strings.Count(d.proc.Output(), `msg="fleet: lock \"order:`+acmeDomain+`\": redis `+s.redis.Addr) < 3 {
		if time.Now().After(retryDeadline) {
			t.Fatalf("replica D did not try the fleet's order lock twice more within 10s:\n%s", d.proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, op := range []string{"lock", "subscribe"} {
		if n := d.storageErrors(t, op); n < 1 {
			t.Errorf(`replica D: edgeproxy_storage_errors_total{op=%q} = %v with Redis down; want >= 1`, op, n)
		}
	}
	for _, r := range s.replicas {
		if code, _ := r.get(t, "/healthz"); code != http.StatusOK {
			t.Errorf("replica %s /healthz with Redis down at start: %d; want 200 (the edge runs)", r.name, code)
		}
	}

	s.redis.Start() // empty
	back := time.Now()
	// The replicas resubscribe with backoff (at most RetryMax, 30 s, apart).
	leaves := s.waitServing(t, 35*time.Second)
	if leaves[2].SerialNumber.Cmp(serial) != 0 {
		t.Errorf("replica D serves %x once Redis is back; want the fleet's %x", leaves[2].SerialNumber, serial)
	}
	if n := s.pebble.Orders(); n != orders {
		t.Errorf("Pebble got %d orders; want still %d\n%s", n, orders, s.logs())
	}
	t.Logf("Redis down at start: A and B served their local copy; D served the certificate %v after Redis came back (D counted %v lock and %v subscribe errors)",
		time.Since(back).Round(time.Millisecond), d.storageErrors(t, "lock"), d.storageErrors(t, "subscribe"))
}

// Redis lost in the middle of an order (stopped while Pebble holds its validation): the
// order completes (the challenge answer was shared before, and the validating replica
// answers from its copy), the certificate is kept locally and served by the orderer, and
// written to Redis when it is back (empty), whereupon the other replicas serve it without
// ordering again. The failed write is logged and counted.
func TestFleet_RedisLostMidOrderResultWrittenBack(t *testing.T) {
	t.Parallel()
	s := startFleet(t, fleetOptions{pebbleEnv: []string{"PEBBLE_VA_NOSLEEP=0", "PEBBLE_VA_SLEEPTIME=8"}})
	// Pebble sleeps (0 to 7 s, three times in parallel) before it validates: the answer
	// is then stored in Redis and the order waits for the validation.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.pebble.Output(), "before validating") {
		if time.Now().After(deadline) {
			t.Fatalf("Pebble did not start a validation within 30s\n%s", s.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The other replicas copy the shared answer when told of it (a round trip): give them
	// that before Redis goes.
	time.Sleep(300 * time.Millisecond)
	s.redis.Stop()
	stopped := time.Now()
	var a *fleetReplica // the replica that orders: the holder of the order lock
	var others []*fleetReplica
	for _, r := range s.replicas {
		if a == nil && strings.Contains(r.proc.Output(), "acme: ordering a certificate for "+acmeDomain) {
			a = r
		} else {
			others = append(others, r)
		}
	}
	if a == nil {
		t.Fatalf("no replica is ordering\n%s", s.logs())
	}
	midOrder := !strings.Contains(a.proc.Output(), "acme: certificate obtained")

	if !a.proc.WaitForOutput("the fleet's storage gets it when Redis is back", 30*time.Second) {
		t.Fatalf("replica %s did not keep its certificate locally within 30s of Redis stopping\n%s", a.name, s.logs())
	}
	st, err := s.dialReplica(a, nil)
	if err != nil {
		t.Fatalf("replica %s, certificate obtained with Redis down: handshake: %v\n%s", a.name, err, a.proc.Output())
	}
	serial := st.PeerCertificates[0].SerialNumber
	if n := a.storageErrors(t, "put"); n < 1 {
		t.Errorf(`replica %s: edgeproxy_storage_errors_total{op="put"} = %v after storing with Redis down; want >= 1`, a.name, n)
	}
	for _, r := range others {
		if _, err := s.dialReplica(r, nil); err == nil {
			t.Errorf("replica %s has a trusted certificate while Redis is down; want none yet", r.name)
		}
	}

	s.redis.Start() // empty
	back := time.Now()
	leaves := s.waitServing(t, 35*time.Second)
	for i, leaf := range leaves {
		if leaf.SerialNumber.Cmp(serial) != 0 {
			t.Errorf("replica %s serves %x; want %s's %x", s.replicas[i].name, leaf.SerialNumber, a.name, serial)
		}
	}
	if !a.proc.WaitForOutput("is back: wrote", 10*time.Second) {
		t.Errorf("replica %s did not log writing its kept changes\n%s", a.name, a.proc.Output())
	}
	if n := s.pebble.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders; want 1\n%s", n, s.logs())
	}
	t.Logf("Redis stopped mid-order: %v (Redis down %v); the others served the certificate of %s %v after Redis came back",
		midOrder, back.Sub(stopped).Round(time.Millisecond), a.name, time.Since(back).Round(time.Millisecond))
}
