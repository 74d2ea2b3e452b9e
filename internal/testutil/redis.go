package testutil

import (
	"crypto/x509"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// redisStartTimeout bounds how long StartRedis waits for redis-server to accept connections.
const redisStartTimeout = 15 * time.Second

// RedisOptions configure StartRedis.
type RedisOptions struct {
	// Password, when set, is required of every client (requirepass, the "default" user).
	Password string
	// TLS makes redis-server speak only TLS, with a certificate for 127.0.0.1 signed by a
	// CA of the test's own (Redis.RootCAs); clients need no certificate.
	TLS bool
}

// Redis is a running Debian redis-server on a free loopback port, without persistence:
// after Stop and Start it comes back empty, as a Redis restarted without its data would.
// It is killed when the test ends, and its log is printed if the test failed.
type Redis struct {
	// Addr is "127.0.0.1:PORT"; it stays the same across Stop and Start.
	Addr string
	// RootCAs trusts the server's certificate when RedisOptions.TLS is set; else nil.
	RootCAs *x509.CertPool

	t    testing.TB
	bin  string
	dir  string
	opts RedisOptions
	proc *Proc

	certFile, keyFile string // with RedisOptions.TLS
}

// StartRedis starts redis-server on a free port of 127.0.0.1 and waits until it accepts
// connections. When redis-server is missing the test is skipped, or fails in CI.
func StartRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	r := &Redis{
		Addr: LoopbackAddr(t, "127.0.0.1"),
		t:    t,
		bin:  RequireTool(t, "redis-server"),
		dir:  t.TempDir(),
		opts: opts,
	}
	if opts.TLS {
		// A CA of its own and a certificate for 127.0.0.1 signed by it.
		_, r.certFile, r.keyFile, r.RootCAs = CASignedFiles(t, r.dir, "localhost", "127.0.0.1")
	}
	r.Start()
	return r
}

// Start starts redis-server again after Stop, empty, on the same address. It does nothing
// if it is running.
func (r *Redis) Start() {
	r.t.Helper()
	if r.proc != nil && !r.proc.Exited() {
		return
	}
	_, port, _ := net.SplitHostPort(r.Addr)
	args := []string{
		"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir,
		"--daemonize", "no", "--logfile", "",
	}
	if r.opts.TLS {
		args[1] = "0" // no plain port
		args = append(args, "--tls-port", port,
			"--tls-cert-file", r.certFile, "--tls-key-file", r.keyFile, "--tls-auth-clients", "no")
	}
	if r.opts.Password != "" {
		args = append(args, "--requirepass", r.opts.Password)
	}
	// The port may be held for a moment after Stop: seen as redis-server failing to bind
	// ("Address already in use") while a fleet's replicas were dialing it, probably one
	// of their dials from an ephemeral port of the same number, which connects to itself
	// (TCP simultaneous open). Try again until the port is free.
	deadline := time.Now().Add(redisStartTimeout)
	for {
		r.proc = StartProcWith(r.t, ProcOptions{Name: "redis-server"}, r.bin, args...)
		if r.proc.WaitForOutput("Ready to accept connections", time.Until(deadline)) {
			break
		}
		if !strings.Contains(r.proc.Output(), "Address already in use") || time.Now().After(deadline) {
			r.t.Fatalf("testutil: redis-server did not start within %v:\n%s", redisStartTimeout, r.proc.Output())
		}
		_, _ = r.proc.Wait(5 * time.Second)
		time.Sleep(100 * time.Millisecond)
	}
	if err := waitTCP(r.Addr, time.Until(deadline), r.proc.Done()); err != nil {
		r.t.Fatalf("testutil: redis-server: %v\n%s", err, r.proc.Output())
	}
}

// Stop kills redis-server, as a crash would, and waits for it to exit. Its data is lost.
func (r *Redis) Stop() {
	r.t.Helper()
	if r.proc == nil || r.proc.Exited() {
		return
	}
	_ = r.proc.Signal(syscall.SIGKILL)
	if _, err := r.proc.Wait(10 * time.Second); err != nil {
		r.t.Fatalf("testutil: stopping redis-server: %v", err)
	}
}

// Port returns the TCP port redis-server listens on.
func (r *Redis) Port() int {
	_, port, _ := net.SplitHostPort(r.Addr)
	n, _ := strconv.Atoi(port)
	return n
}

// Output returns redis-server's log since its last Start.
func (r *Redis) Output() string { return r.proc.Output() }
