package tlscost

import (
	"cmp"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A handshake costs the process more than its thread clock shows. Around the measured
// segments there are the read system calls of the handshake (the thread is released
// around them) and the extra park and netpoll wake-up of each round trip. None of it can
// be clocked per handshake, but all of it shows in the process's CPU clock.
// measureHandshakeFactor runs handshakes through a measuring listener on loopback against a client
// in a child process (hschild.go), alternating with batches of plain TCP connections carrying the same one-byte exchange, and divides
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

	// dataFactorRounds alternate TLS and plain batches of dataFactorExchanges bulk
	// exchanges per worker. What TLS adds to a batch is the difference of two process
	// CPU readings that each move by ±10% from batch to batch (scheduling, wake-ups): it
	// takes some forty rounds, half a second, for the sum to settle within ±10%.
	dataFactorRounds    = 48
	dataFactorExchanges = 60

	// dataFactorPause spaces the rounds. A serving edge moves a response between other
	// work (other connections, reads from the target, the load on the machine), not in a
	// loop where the record layer's code and buffers never leave the caches and the CPU
	// never idles: back to back, the rounds read 1.3–1.7 over one start-up to the next
	// and the charge came to 0.71–1.05 of what TLS added to proxied 64 KiB responses in
	// the accuracy benchmark (seven start-ups); spaced, 1.3–2.0 and 0.82–1.08 (nine).
	// It costs start-up two seconds of waiting, no CPU.
	dataFactorPause = 40 * time.Millisecond
)

// measureHandshakeFactor returns process CPU per second of thread-clock handshake CPU, and
// the share of the extra CPU that was the collector's background work (left out of the
// factor, see below).
func measureHandshakeFactor(cert tls.Certificate, costs *Costs) (factor, gcShare, dataFactor float64, err error) {
	factor, gcShare, dataFactor = 1, 0, 1
	reg := prometheus.NewRegistry()
	a, err := newAccountant(Options{HandshakeTimeout: 5 * time.Second, Costs: &Costs{Seal: costs.Seal, Open: costs.Open, Write: costs.Write}}, reg)
	if err != nil {
		return
	}
	tlsRaw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return factor, gcShare, dataFactor, err
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = tlsRaw.Close()
		return factor, gcShare, dataFactor, err
	}
	tl := a.listener(tlsRaw, &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: true})
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
				if tc, ok := c.(*tls.Conn); ok {
					if err := a.Handshake(tc); err != nil {
						_ = tc.Close()
						return
					}
				}
				serveCalibration(c)
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
	// Warm up: connections, goroutine stacks, crypto tables.
	for _, useTLS := range []bool{true, false} {
		if err := batch(useTLS); err != nil {
			return factor, gcShare, dataFactor, err
		}
	}
	var extra, extraGC, seg float64
	for r := range handshakeFactorRounds {
		seg0 := a.hsNanos.Load() + clientNanos.Load()
		for _, useTLS := range []bool{r%2 == 0, r%2 == 1} {
			g0, p0 := gcNow(), processCPU()
			if err := batch(useTLS); err != nil {
				return factor, gcShare, dataFactor, err
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
		return factor, gcShare, dataFactor, errors.New("no handshake CPU measured")
	}
	// Never below 1: the segments are part of the process's CPU.
	factor, gcShare = max(1, (extra-max(0, extraGC))/seg), max(0, extraGC)/extra
	if child == nil {
		return factor, gcShare, dataFactor, nil // no bulk exchanges without a client of their own
	}

	// Data: the same comparison for keep-alive connections carrying bulk exchanges, against
	// what the record costs charged for them. DataFactor is the process CPU TLS adds to
	// moving data per second of record-layer CPU (at the cost Calibrate measured): the
	// copies and wake-ups around the record layer, and the contention of a client on the
	// same machine. Records are then charged the record layer's cost times DataFactor,
	// the two measured together, so that their product is what the exchanges measured.
	// (The record layer was once re-measured under contention and while traffic flowed,
	// and the factor applied to that: those short measurements read ±20–40% apart from
	// run to run on a KVM guest, where the extra CPU of the exchanges moved by ±8%, and
	// the charge carried their noise.)
	charged := func() float64 {
		mfs, _ := reg.Gather()
		sum := 0.0
		for _, mf := range mfs {
			if mf.GetName() == "edgeproxy_tls_record_cpu_seconds_total" {
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
			}
		}
		return sum * 1e9
	}
	for _, useTLS := range []bool{true, false} { // opens the connections
		if err := child.bulk(useTLS); err != nil {
			return factor, gcShare, dataFactor, err
		}
	}
	// The ratio of the sums over the rounds, less the rounds with the highest and lowest
	// ratios: a round where something else in the process or on the machine got in the
	// way of one batch is an outlier, not a share of the answer.
	var rounds []dataRound
	for r := range dataFactorRounds {
		time.Sleep(dataFactorPause)
		c0 := charged()
		dExtra := 0.0
		for _, useTLS := range []bool{r%2 == 0, r%2 == 1} {
			p0 := processCPU()
			if err := child.bulk(useTLS); err != nil {
				return factor, gcShare, dataFactor, err
			}
			d := float64(processCPU() - p0)
			if !useTLS {
				d = -d
			}
			dExtra += d
		}
		dCharged := charged() - c0
		if dCharged <= 0 {
			return factor, gcShare, dataFactor, errors.New("no record CPU charged")
		}
		rounds = append(rounds, dataRound{extra: dExtra, charged: dCharged})
	}
	if r := trimmedRatio(rounds); r > 0 {
		return factor, gcShare, r, nil
	}
	return factor, gcShare, dataFactor, errors.New("TLS added no CPU to the bulk exchanges")
}

// dataRound is what TLS added to the process CPU in one round of bulk exchanges, and the
// record-layer CPU charged for them.
type dataRound struct{ extra, charged float64 }

// trimmedRatio is the sum of extra over the sum of charged of the rounds, leaving out the
// eighth with the highest extra/charged and the eighth with the lowest.
func trimmedRatio(rounds []dataRound) float64 {
	s := slices.Clone(rounds)
	slices.SortFunc(s, func(a, b dataRound) int { return cmp.Compare(a.extra/a.charged, b.extra/b.charged) })
	cut := len(s) / 8
	var extra, charged float64
	for _, r := range s[cut : len(s)-cut] {
		extra, charged = extra+r.extra, charged+r.charged
	}
	return extra / charged
}

// Calibration exchanges. A connection's first byte says which: 'x' is one byte in, one
// byte out, close (after a handshake, or not); 'b' starts a bulk connection, kept alive:
// requests of bulkRequest bytes, each answered with bulkResponse bytes written in
// bulkPiece writes, as edgeproxy's fast path forwards a response as read from the target.
const (
	bulkRequest  = 128
	bulkResponse = 64 << 10
	bulkPiece    = 16 << 10
)

// serveCalibration is the calibration server's side of a connection.
func serveCalibration(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var b [bulkRequest]byte
	if _, err := io.ReadFull(c, b[:1]); err != nil {
		return
	}
	if b[0] != 'b' {
		_, _ = c.Write(b[:1])
		return
	}
	if _, err := io.ReadFull(c, b[1:]); err != nil {
		return
	}
	resp := make([]byte, bulkPiece)
	for {
		for range bulkResponse / bulkPiece {
			if _, err := c.Write(resp); err != nil {
				return
			}
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
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
		mc := &conn{Conn: raw, a: a, started: true, inHandshake: true, measureTail: true}
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
