package tlscost

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"edgeproxy/internal/sysconn"
)

// net/http's HTTP/1.1 server starts a goroutine per request that reads one byte from the
// connection while the handler runs (to notice a client that goes away), and ends it by
// setting a read deadline in the past when the handler returns. On a TLS connection that
// read goes through crypto/tls: a fresh goroutine's stack grows through tls.Conn.Read's
// deeper call chain (runtime.morestack and copystack: ~1.6 µs per request in a profile of
// 1 KiB responses, against ~0.4 µs on plain connections), and the read returns through
// crypto/tls's error path. A read that returns no data carries no record and is not a
// read that returns data, so neither the record costs nor PerRead charged it: small
// responses through net/http read about half of what TLS added (bench/RESULTS.md).
// measureInterruptedRead measures it here, as net/http incurs it.

// interruptedReads are the interrupted reads of one batch; interruptedRounds alternate
// a batch on a TLS connection with one on a plain connection.
const (
	interruptedReads  = 64
	interruptedRounds = 8

	// interruptedWait is how long each read waits before its deadline ends it: long
	// enough for its goroutine to park in the netpoller, as the background read of a
	// request does while the request is proxied.
	interruptedWait = 50 * time.Microsecond
)

// measureInterruptedRead returns the process CPU TLS adds, in seconds, to a read on a
// fresh goroutine that a deadline interrupts (Costs.InterruptedRead): the difference
// between such reads on a measured TLS connection (the wrapper that Accountant.Conn puts
// under crypto/tls included) and on a plain one, the median over alternating rounds.
func measureInterruptedRead(cert tls.Certificate, costs *Costs) (float64, error) {
	a, err := newAccountant(Options{HandshakeTimeout: 5 * time.Second, Costs: costs}, prometheus.NewRegistry())
	if err != nil {
		return 0, err
	}
	serverTLS, clientTLS, err := tlsPair(a, cert)
	if err != nil {
		return 0, err
	}
	defer serverTLS.Close()
	defer clientTLS.Close()
	serverPlain, clientPlain, err := tcpPair()
	if err != nil {
		return 0, err
	}
	defer serverPlain.Close()
	defer clientPlain.Close()

	type result struct {
		cpu int64
		err error
	}
	done := make(chan result, 1)
	// Each read's goroutine is locked to its thread, so that the thread's CPU clock,
	// read around the call, holds the read and nothing else: the thread sleeps while
	// the goroutine is parked. The stack growth, crypto/tls's calls and the park and
	// wake-up are on it; what the two kinds of connection share (the goroutine's start,
	// the deadline) cancels in the difference.
	batch := func(c net.Conn) (int64, error) {
		var sum int64
		for range interruptedReads {
			if err := c.SetReadDeadline(time.Time{}); err != nil {
				return 0, err
			}
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				var b [1]byte
				t0 := threadCPU()
				_, err := c.Read(b[:])
				done <- result{threadCPU() - t0, err}
			}()
			// Wait without sleeping: a sleep of a few µs lasts a millisecond here,
			// and a core that idles between reads clears the caches the next read
			// needs, which a busy edge's do not.
			for t0 := time.Now(); time.Since(t0) < interruptedWait; {
				runtime.Gosched()
			}
			if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
				return 0, err
			}
			r := <-done
			if !errors.Is(r.err, os.ErrDeadlineExceeded) {
				return 0, errors.Join(errors.New("an interrupted read did not end by its deadline"), r.err)
			}
			sum += r.cpu
		}
		return sum, nil
	}
	for _, c := range []net.Conn{serverTLS, serverPlain} { // warm up
		if _, err := batch(c); err != nil {
			return 0, err
		}
	}
	var perRound []float64
	for r := range interruptedRounds {
		var d [2]int64
		for _, i := range []int{r % 2, 1 - r%2} {
			c := []net.Conn{serverTLS, serverPlain}[i]
			if d[i], err = batch(c); err != nil {
				return 0, err
			}
		}
		perRound = append(perRound, float64(d[0]-d[1])/1e9/interruptedReads)
	}
	slices.Sort(perRound)
	return max(0, perRound[len(perRound)/2]), nil
}

// tlsPair returns the two ends of a loopback TCP connection after a TLS handshake: the
// server's measured by a, as the edge's connections are, and the client's.
func tlsPair(a *Accountant, cert tls.Certificate) (server *tls.Conn, client *tls.Conn, err error) {
	sc, cc, err := tcpPair()
	if err != nil {
		return nil, nil, err
	}
	server = tls.Server(a.Conn(sc), &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: true})
	client = tls.Client(cc, &tls.Config{InsecureSkipVerify: true})
	_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
	_ = cc.SetDeadline(time.Now().Add(5 * time.Second))
	errc := make(chan error, 1)
	go func() { errc <- client.Handshake() }()
	err = a.Handshake(server)
	if cerr := <-errc; err == nil {
		err = cerr
	}
	_ = sc.SetDeadline(time.Time{})
	_ = cc.SetDeadline(time.Time{})
	if err != nil {
		_, _ = sc.Close(), cc.Close()
		return nil, nil, err
	}
	return server, client, nil
}

// tcpPair returns the accepted and the dialled end of a new loopback TCP connection, both
// making raw system calls as the edge's sockets do (internal/sysconn).
func tcpPair() (server, client net.Conn, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	client, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		_ = ln.Close()
		<-accepted
		return nil, nil, err
	}
	if server = <-accepted; server == nil {
		_ = client.Close()
		return nil, nil, errors.New("loopback accept failed")
	}
	return sysconn.Wrap(server), sysconn.Wrap(client), nil
}
