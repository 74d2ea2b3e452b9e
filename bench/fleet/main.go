// Command fleet measures a fleet of edgeproxy replicas sharing their ACME state through
// Redis (issue 15): it starts a Debian redis-server, Pebble and -replicas edgeproxy
// processes with one domain list, all at once on 127.0.0.1, and reports how many orders
// Pebble received (the fleet should place one per name) and how long each replica took
// from its start to present a trusted certificate for every name (time to first
// certificate; median and max over the replicas), over -runs runs, each with a fresh
// Redis, Pebble and cache directories.
//
//	go run ./bench/fleet                  # ten replicas, 3 runs
//	go run ./bench/fleet -replicas 3      # for comparison
//
// Pebble validates through a TCP round robin over the replicas (a stand-in for an NLB:
// one port in front of every replica's HTTPS port, one in front of their plain-HTTP
// ports), so the replica that orders is rarely the one validated: the challenge answers
// travel through Redis. A replica that is not listening yet is skipped, as a load
// balancer's health check would. Pebble does not sleep before validating
// (PEBBLE_VA_NOSLEEP=1), so the times are the fleet's own, not a CA's. Each run is bounded
// by -timeout. The machine may be shared: read the spread, not only the medians. Needs
// redis-server and Pebble (see internal/testutil).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

func main() {
	replicas := flag.Int("replicas", 10, "edgeproxy replicas in the fleet")
	runs := flag.Int("runs", 3, "runs, each with a fresh Redis, Pebble and replicas")
	names := flag.String("domains", "app.test,www.app.test", "the replicas' domain list (Pebble's DNS answers 127.0.0.1 for every name)")
	timeout := flag.Duration("timeout", 2*time.Minute, "bound of each run's wait for the certificates")
	flag.Parse()
	if *replicas < 1 || *runs < 1 {
		fmt.Fprintln(os.Stderr, "fleet: -replicas and -runs must be at least 1")
		os.Exit(2)
	}
	domains := strings.Split(*names, ",")
	fmt.Printf("fleet: %d replicas, domains %v, %d runs\n", *replicas, domains, *runs)
	var results []result
	for i := range *runs {
		r, err := run(*replicas, domains, *timeout)
		for retry := 0; err != nil && strings.Contains(err.Error(), "address already in use") && retry < 3; retry++ {
			// A port found free was taken before the replica bound it (by another
			// process, or by one of the fleet's own outgoing connections): not the
			// fleet's doing. Start the run again, on other ports.
			fmt.Printf("run %d: a port was taken before a replica bound it; starting the run again\n", i+1)
			r, err = run(*replicas, domains, *timeout)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "fleet: run %d: %v\n", i+1, err)
			os.Exit(1)
		}
		fmt.Printf("run %d: %s\n", i+1, r)
		results = append(results, r)
	}
	fmt.Println(summary(results, len(domains)))
}

// result is one run's outcome.
type result struct {
	orders   int             // new-order requests Pebble received
	serials  int             // distinct certificates served, over all replicas and names
	ordered  int             // replicas that logged obtaining a certificate
	answered int             // replicas that answered a challenge
	ttfc     []time.Duration // time to first certificate (every name), by replica
	failures []string        // the replicas' log lines of failed challenges and orders
}

func (r result) String() string {
	s := fmt.Sprintf("%d orders, %d distinct certificates, obtained by %d replica(s), challenges answered by %d; time to first certificate median %v, max %v",
		r.orders, r.serials, r.ordered, r.answered, median(r.ttfc).Round(time.Millisecond), slices.Max(r.ttfc).Round(time.Millisecond))
	for _, f := range r.failures {
		s += "\n  " + f
	}
	return s
}

// summary is the median over the runs of each run's figures, with their spread.
func summary(results []result, names int) string {
	var orders []int
	var med, mx []time.Duration
	for _, r := range results {
		orders = append(orders, r.orders)
		med = append(med, median(r.ttfc))
		mx = append(mx, slices.Max(r.ttfc))
	}
	return fmt.Sprintf("summary over %d runs: orders per run %v (want %d, one per name); time to first certificate: median over replicas %v (runs %v..%v), max over replicas %v (runs %v..%v)",
		len(results), orders, names,
		median(med).Round(time.Millisecond), slices.Min(med).Round(time.Millisecond), slices.Max(med).Round(time.Millisecond),
		median(mx).Round(time.Millisecond), slices.Min(mx).Round(time.Millisecond), slices.Max(mx).Round(time.Millisecond))
}

// median is the middle value of ds (the mean of the two middle ones for an even count).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// serving is what edgeproxy logs once its listeners are bound.
const serving = "edgeproxy serving"

// replica is one edgeproxy of the fleet.
type replica struct {
	https, http, metrics string
	proc                 atomic.Pointer[testutil.Proc] // set once started; read by roundRobin
}

// run starts a fleet of n replicas for domains and measures it.
func run(n int, domains []string, timeout time.Duration) (res result, err error) {
	tb := newRunTB()
	defer tb.cleanup()
	defer func() {
		switch p := recover().(type) {
		case nil:
		case fatal:
			err = errors.New(string(p))
		default:
			panic(p)
		}
	}()
	redis := testutil.StartRedis(tb, testutil.RedisOptions{})
	rs := make([]*replica, n)
	for i := range rs {
		rs[i] = &replica{https: testutil.LoopbackAddr(tb, "127.0.0.1"), http: testutil.LoopbackAddr(tb, "127.0.0.1"),
			metrics: testutil.LoopbackAddr(tb, "127.0.0.1")}
	}
	pebble := testutil.StartPebble(tb, testutil.PebbleOptions{
		TLSPort:  port(roundRobin(tb, rs, func(r *replica) string { return r.https })),
		HTTPPort: port(roundRobin(tb, rs, func(r *replica) string { return r.http })),
		Env:      []string{"PEBBLE_AUTHZREUSE=0"}})
	roots := pebble.Roots()
	backend := strings.TrimPrefix(testutil.EchoBackend(tb, new(atomic.Int64)).URL, "http://")
	bin := testutil.BuildEdgeproxy(tb)
	keyFile := filepath.Join(tb.TempDir(), "fleet-key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		return res, err
	}
	configs := make([]string, n)
	for i, r := range rs {
		configs[i] = filepath.Join(tb.TempDir(), "edgeproxy.yaml")
		cfg := testutil.FleetReplicaConfig{HTTPS: r.https, HTTP: r.http, Metrics: r.metrics,
			CacheDir: filepath.Join(tb.TempDir(), "acme"), Domains: domains, Pebble: pebble,
			RedisAddr: redis.Addr, KeyFile: keyFile, Target: backend}.YAML()
		if err := os.WriteFile(configs[i], []byte(cfg), 0o600); err != nil {
			return res, err
		}
	}

	start := time.Now()
	for i, r := range rs {
		r.proc.Store(testutil.StartProcWith(tb, testutil.ProcOptions{Name: fmt.Sprintf("edgeproxy-%d", i)}, bin, "run", "-config", configs[i]))
	}
	res.ttfc = make([]time.Duration, n)
	serials := make([][]*big.Int, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() {
			serials[i], errs[i] = r.waitCertificates(domains, roots, start.Add(timeout))
			res.ttfc[i] = time.Since(start)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return res, fmt.Errorf("replica %d: %w\n%s", i, err, rs[i].proc.Load().Output())
		}
	}
	var distinct []string
	for _, ss := range serials {
		for _, s := range ss {
			if hex := s.Text(16); !slices.Contains(distinct, hex) {
				distinct = append(distinct, hex)
			}
		}
	}
	res.serials = len(distinct)
	res.orders = pebble.Orders()
	slow := slices.Max(res.ttfc) > 15*time.Second
	for i, r := range rs {
		out := r.proc.Load().Output()
		if slow {
			// Say where the time went: the orders, locks and faults of every replica.
			for line := range strings.Lines(out) {
				if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") ||
					strings.Contains(line, "acme: ordering") || strings.Contains(line, "acme: certificate obtained") {
					res.failures = append(res.failures, fmt.Sprintf("replica %d: %s", i, strings.TrimSpace(line)))
				}
			}
		}
		if strings.Contains(out, "acme: certificate obtained for ") {
			res.ordered++
		}
		if strings.Contains(out, "challenge for ") {
			res.answered++
		}
		for line := range strings.Lines(out) {
			if !slow && strings.Contains(line, "acme: ") && strings.Contains(line, " failed") {
				res.failures = append(res.failures, strings.TrimSpace(line))
			}
		}
	}
	return res, nil
}

// waitCertificates waits until r presents a certificate trusted by roots for every one of
// domains, and returns their serial numbers; an error after deadline.
func (r *replica) waitCertificates(domains []string, roots *x509.CertPool, deadline time.Time) ([]*big.Int, error) {
	proc := r.proc.Load()
	if !proc.WaitForOutput(serving, time.Until(deadline)) {
		return nil, errors.New("not serving")
	}
	var serials []*big.Int
	for _, name := range domains {
		for {
			serial, err := handshake(r.https, name, roots)
			if err == nil {
				serials = append(serials, serial)
				break
			}
			if time.Now().After(deadline) || proc.Exited() {
				return nil, fmt.Errorf("no trusted certificate for %s: %w", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return serials, nil
}

// handshake completes a TLS handshake with addr for name, verified against roots, and
// returns the serial number of the certificate presented.
func handshake(addr, name string, roots *x509.CertPool) (*big.Int, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// roundRobin listens on a free loopback port and passes each connection to addr of the
// next replica that serves, until the run's cleanup; it returns its address. A replica
// is dialed only once it said it serves: a dial to a port nobody listens on yet may
// come from that very port number and connect to itself, and then the replica cannot
// bind it.
func roundRobin(tb *runTB, targets []*replica, addr func(*replica) string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	var next atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for range targets {
					r := targets[int(next.Add(1))%len(targets)]
					if p := r.proc.Load(); p == nil || !strings.Contains(p.Output(), serving) {
						continue
					}
					u, err := net.DialTimeout("tcp", addr(r), time.Second)
					if err != nil {
						continue
					}
					defer u.Close()
					go func() { _, _ = io.Copy(u, c); _ = u.(*net.TCPConn).CloseWrite() }()
					_, _ = io.Copy(c, u)
					return
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// port is the port of addr, "127.0.0.1:PORT".
func port(addr string) int {
	p, _ := net.ResolveTCPAddr("tcp", addr)
	return p.Port
}

// fatal is what runTB's Fatal panics with; run recovers it as the run's error.
type fatal string

// runTB lets the benchmark start its servers with internal/testutil, as the e2e tests do:
// one per run, it collects the cleanups (which stop the processes) and the temporary
// directories, and turns Fatal and Skip into a panic that run recovers. The embedded
// testing.TB is nil: testutil calls only the methods defined here.
type runTB struct {
	testing.TB
	dir      string
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func newRunTB() *runTB {
	dir, err := os.MkdirTemp("", "edgeproxy-bench-fleet-")
	if err != nil {
		panic(err)
	}
	return &runTB{dir: dir}
}

// cleanup runs the cleanups, last registered first, and removes the directories.
func (t *runTB) cleanup() {
	t.mu.Lock()
	fns := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	_ = os.RemoveAll(t.dir)
}

func (t *runTB) Helper()      {}
func (t *runTB) Name() string { return "bench-fleet" }
func (t *runTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *runTB) TempDir() string {
	dir, err := os.MkdirTemp(t.dir, "")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
func (t *runTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *runTB) Log(...any)          {}
func (t *runTB) Logf(string, ...any) {}
func (t *runTB) Errorf(format string, args ...any) {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}
func (t *runTB) Error(args ...any) { t.Errorf("%s", fmt.Sprint(args...)) }
func (t *runTB) FailNow()          { t.Fatal("failed") }
func (t *runTB) Fatalf(format string, args ...any) {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
	panic(fatal(fmt.Sprintf(format, args...)))
}
func (t *runTB) Fatal(args ...any) { t.Fatalf("%s", fmt.Sprint(args...)) }
func (t *runTB) Skipf(format string, args ...any) {
	t.Fatalf("skipped: %s", fmt.Sprintf(format, args...))
}
func (t *runTB) Skip(args ...any) { t.Fatalf("skipped: %s", fmt.Sprint(args...)) }
