package tlscost

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A handshake costs the process more than its thread clock shows. Around the measured
// segments there are the read system calls of the handshake (the thread is released
// around them), the extra park and netpoll wake-up of each round trip, and the goroutine
// and channel hand-off of the listener. None of it can be clocked per handshake, but all
// of it shows in the process's CPU clock. measureHandshakeFactor runs handshakes through
// a Listener on loopback against a client in a child process (hschild.go), alternating
// with batches of plain TCP connections carrying the same one-byte exchange, and divides
// the process CPU the handshakes added by their thread-clock segments: HandshakeFactor
// is process CPU per second of segment CPU, and each handshake is charged its segments
// times it. If no child can be started, the client runs in this process and its
// handshakes are measured in segments too: the factor is then the extra process CPU over
// the segments of both sides, assuming the client's unseen share is like the server's.

// handshakeFactorRounds alternate TLS and plain batches of handshakeFactorConns
// connections each, over handshakeFactorWorkers concurrent clients.
const (
	handshakeFactorRounds  = 7
	handshakeFactorConns   = 24
	handshakeFactorWorkers = 2
)

// measureHandshakeFactor returns process CPU per second of thread-clock handshake CPU, and
// the share of the extra CPU that was the collector's background work (left out of the
// factor, see below).
func measureHandshakeFactor(cert tls.Certificate) (factor, gcShare float64, err error) {
	a, err := newAccountant(Options{HandshakeTimeout: 5 * time.Second, Costs: &Costs{}}, prometheus.NewRegistry())
	if err != nil {
		return 0, 0, err
	}
	tlsRaw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = tlsRaw.Close()
		return 0, 0, err
	}
	tl := a.Listener(tlsRaw, &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: true})
	var wg sync.WaitGroup
	serve := func(ln net.Listener) {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				echoOne(c)
			}()
		}
	}
	wg.Add(2)
	go serve(tl)
	go serve(plain)
	defer func() {
		_, _ = tl.Close(), plain.Close()
		wg.Wait()
	}()

	ccfg := &tls.Config{InsecureSkipVerify: true}
	var clientNanos atomic.Int64
	child, childErr := startCalibrationClient(tlsRaw.Addr().String(), plain.Addr().String())
	if child != nil {
		defer child.close()
	}
	inProcess := func(useTLS bool) error {
		addr := plain.Addr().String()
		if useTLS {
			addr = tlsRaw.Addr().String()
		}
		return runBatch(func() error { return clientOne(a, addr, useTLS, ccfg, &clientNanos) })
	}
	batch := inProcess
	if childErr == nil {
		batch = child.batch
	}
	// Background garbage collection is left out of the factor: it is charged as it
	// happens, by gcShare, because how much the collector works per byte allocated depends
	// on the live heap, which is small here and larger under load.
	gc := newGCShare(a)
	gcNow := func() float64 { sec, _ := gc.read(); return sec }
	// Warm up: connections, the listener's goroutines, crypto tables.
	for _, useTLS := range []bool{true, false} {
		if err := batch(useTLS); err != nil {
			return 0, 0, err
		}
	}
	var extra, extraGC, seg float64
	for r := range handshakeFactorRounds {
		seg0 := a.hsNanos.Load() + clientNanos.Load()
		for _, useTLS := range []bool{r%2 == 0, r%2 == 1} {
			g0, p0 := gcNow(), processCPU()
			if err := batch(useTLS); err != nil {
				return 0, 0, err
			}
			d, g := float64(processCPU()-p0), (gcNow()-g0)*1e9
			if !useTLS {
				d, g = -d, -g
			}
			extra, extraGC = extra+d, extraGC+g
		}
		seg += float64(a.hsNanos.Load() + clientNanos.Load() - seg0)
	}
	if seg <= 0 || extra <= 0 {
		return 0, 0, errors.New("no handshake CPU measured")
	}
	// Never below 1: the segments are part of the process's CPU.
	return max(1, (extra-max(0, extraGC))/seg), max(0, extraGC) / extra, nil
}

// echoOne is the calibration server's exchange: one byte in, one byte out, close.
func echoOne(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err == nil {
		_, _ = c.Write(b[:])
	}
}

// clientOne is the calibration client: connect, (handshake,) one byte out, one byte in,
// close. With a non-nil a (the client in this process), the handshake is measured in
// segments as the server's is, and their CPU added to nanos.
func clientOne(a *Accountant, addr string, useTLS bool, cfg *tls.Config, nanos *atomic.Int64) error {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := raw
	if useTLS && a == nil { // in the child: nothing to measure here
		tc := tls.Client(raw, cfg)
		if err := tc.Handshake(); err != nil {
			_ = raw.Close()
			return err
		}
		c = tc
	} else if useTLS {
		mc := &conn{Conn: raw, a: a, inHandshake: true}
		tc := tls.Client(mc, cfg)
		mc.startSegment()
		err := tc.Handshake()
		mc.endSegment()
		mc.inHandshake = false
		nanos.Add(mc.cpu)
		if err != nil {
			_ = raw.Close()
			return err
		}
		c = tc
	}
	defer raw.Close()
	var b [1]byte
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	_, err = io.ReadFull(c, b[:])
	return err
}
