package tlscost

import (
	"cmp"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"edgeproxy/internal/sysconn"
	"edgeproxy/internal/writebatch"
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
	// exchanges per worker, and of smallExchanges small ones. What TLS adds to a batch is
	// the difference of two process CPU readings that each move by ±10% from batch to
	// batch (scheduling, wake-ups): it takes some thirty to forty rounds for the sum to
	// settle within ±10%. Thirty-two of each kind: with the small exchanges and the
	// target, more would have cost a first start more than the two seconds of CPU the
	// calibration took before.
	dataFactorRounds    = 32
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
// factor, see below), with the data terms fitted on kept-alive exchanges (fitCosts) and
// the measurements they came from, which refinement (refine.go) adds to later.
func measureHandshakeFactor(cert tls.Certificate, costs *Costs) (factor, gcShare, dataFactor, perRead float64, s *calSamples, err error) {
	factor, gcShare, dataFactor = 1, 0, 1
	b, err := newCalBench(cert, costs)
	if err != nil {
		return factor, gcShare, dataFactor, perRead, nil, err
	}
	defer b.close()
	s = &calSamples{StartUp: dataFactorRounds}
	if s.HS, err = b.handshakeRounds(); err != nil {
		return factor, gcShare, dataFactor, perRead, nil, err
	}
	factor, gcShare = s.HS.factor(0), max(0, s.HS.GC)/s.HS.Extra
	if b.child == nil {
		return factor, gcShare, dataFactor, perRead, nil, nil // no kept-alive exchanges without a client of their own
	}
	if err := b.openData(); err != nil {
		return factor, gcShare, dataFactor, perRead, nil, err
	}
	for r := range dataFactorRounds {
		bulk, small, err := b.dataRound(r)
		if err != nil {
			return factor, gcShare, dataFactor, perRead, nil, err
		}
		s.Bulk, s.Small = append(s.Bulk, bulk), append(s.Small, small)
	}
	factor, dataFactor, perRead, err = s.fit()
	return factor, gcShare, dataFactor, perRead, s, err
}

// calSamples are the measurements the fitted terms come from: the handshake rounds' sums
// and each data round, kept with the cached costs so that refinement can add rounds and
// fit again from all of them.
type calSamples struct {
	HS hsSums `json:"handshakes"`
	// Bulk and Small are the data rounds of each kind (calBench.dataRound).
	Bulk  []dataRound `json:"bulk"`
	Small []dataRound `json:"small"`
	// StartUp is how many of the first rounds the start-up calibration measured, while
	// the edge was starting and perhaps already serving; refinement drops them once it has
	// as many of its own (refine.go).
	StartUp int `json:"start_up_rounds"`
	// Interrupted are the interrupted-read costs measured (measureInterruptedRead), the
	// start-up's and one per refinement; their median is charged.
	Interrupted []float64 `json:"interrupted_reads"`
}

// fit solves the data terms from every round (solveDataCosts over trimmedSums) and the
// handshake factor with the per-read cost they give.
func (s *calSamples) fit() (factor, dataFactor, perRead float64, err error) {
	dataFactor, perRead = solveDataCosts(trimmedSums(s.Bulk), trimmedSums(s.Small))
	if dataFactor <= 0 {
		return s.HS.factor(0), 1, 0, errors.New("TLS added no CPU to the bulk exchanges")
	}
	return s.HS.factor(perRead), dataFactor, perRead, nil
}

// hsSums are what TLS added to the handshake rounds' process CPU (ns), the part of it the
// runtime reported as garbage collection, the thread-clock segments of the handshakes,
// and the reads after them (one per exchange).
type hsSums struct {
	Extra float64 `json:"extra_ns"`
	GC    float64 `json:"gc_ns"`
	Seg   float64 `json:"segments_ns"`
	Reads float64 `json:"reads"`
}

// factor is the handshake factor when each read after a handshake costs perRead seconds
// on its own (charged as PerRead, so its share comes out of the factor). Never below 1:
// the segments are part of the process's CPU.
func (h hsSums) factor(perRead float64) float64 {
	if h.Seg <= 0 {
		return 1
	}
	return max(1, (h.Extra-max(0, h.GC)-perRead*1e9*h.Reads)/h.Seg)
}

// calBench is the calibration's set-up: a measuring TLS listener and a plain one on
// loopback, served as the edge serves (serveCalibration), and a client in a child process
// (hschild.go) with a target of its own; or, if no child can be started, a client in this
// process for the handshakes only.
type calBench struct {
	a           *Accountant
	reg         *prometheus.Registry // a's metrics: the record CPU charged
	tl, plain   net.Listener
	wg          sync.WaitGroup
	target      atomic.Pointer[string] // the kept-alive exchanges' target, in the child
	child       *calibrationClient
	clientNanos atomic.Int64
	batch       func(useTLS bool) error
	// pauseCPU is the most process CPU (ns) one pause of the last dataRound saw: the
	// bench does nothing then, so it is what else ran in the process.
	pauseCPU int64
}

// newCalBench starts the listeners and the child, charging records at costs' record-layer
// costs (Seal, Open, Write) alone: the data rounds compare that charge with what TLS adds.
func newCalBench(cert tls.Certificate, costs *Costs) (*calBench, error) {
	b := &calBench{reg: prometheus.NewRegistry()}
	var err error
	b.a, err = newAccountant(Options{HandshakeTimeout: 5 * time.Second, Costs: &Costs{Seal: costs.Seal, Open: costs.Open, Write: costs.Write}}, b.reg)
	if err != nil {
		return nil, err
	}
	tlsRaw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = tlsRaw.Close()
		return nil, err
	}
	// The edge's sockets make raw system calls (internal/sysconn); so do these.
	tlsRaw, b.plain = sysconn.Listener(tlsRaw), sysconn.Listener(plain)
	b.tl = b.a.listener(tlsRaw, &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: true})
	b.wg.Add(2)
	go b.serve(b.tl)
	go b.serve(b.plain)

	ccfg := &tls.Config{InsecureSkipVerify: true}
	child, childErr := startCalibrationClient(tlsRaw.Addr().String(), b.plain.Addr().String())
	if childErr == nil {
		b.child, b.batch = child, child.batch
		return b, nil
	}
	b.batch = func(useTLS bool) error {
		addr := b.plain.Addr().String()
		if useTLS {
			addr = tlsRaw.Addr().String()
		}
		return runBatch(func() error { return clientOne(b.a, addr, useTLS, ccfg, &b.clientNanos) })
	}
	return b, nil
}

func (b *calBench) serve(ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			if tc, ok := c.(*tls.Conn); ok {
				if err := b.a.Handshake(tc); err != nil {
					_ = tc.Close()
					return
				}
			}
			serveCalibration(c, b.target.Load())
		}()
	}
}

// close stops the child (its connections end, and the serving goroutines with them) and
// the listeners.
func (b *calBench) close() {
	if b.child != nil {
		b.child.close()
	}
	_, _ = b.tl.Close(), b.plain.Close()
	b.wg.Wait()
}

// handshakeRounds alternate batches of handshakes and of plain connections carrying the
// same one-byte exchange.
func (b *calBench) handshakeRounds() (hsSums, error) {
	var h hsSums
	// Background garbage collection is left out of the factor: it is charged as it
	// happens, by gcShare, because how much the collector works per byte allocated depends
	// on the live heap, which is small here and larger under load.
	gc := newGCShare(b.a)
	gcNow := func() float64 { sec, _ := gc.read(); return sec }
	// Warm up: connections, goroutine stacks, crypto tables.
	for _, useTLS := range []bool{true, false} {
		if err := b.batch(useTLS); err != nil {
			return h, err
		}
	}
	reads0 := b.a.appReads.Load()
	for r := range handshakeFactorRounds {
		seg0 := b.a.hsNanos.Load() + b.clientNanos.Load()
		for _, useTLS := range []bool{r%2 == 0, r%2 == 1} {
			g0, p0 := gcNow(), processCPU()
			if err := b.batch(useTLS); err != nil {
				return h, err
			}
			d, g := float64(processCPU()-p0), (gcNow()-g0)*1e9
			if !useTLS {
				d, g = -d, -g
			}
			h.Extra, h.GC = h.Extra+d, h.GC+g
		}
		h.Seg += float64(b.a.hsNanos.Load() + b.clientNanos.Load() - seg0)
	}
	h.Reads = float64(b.a.appReads.Load() - reads0) // the one-byte exchanges' reads after their handshakes
	if h.Seg <= 0 || h.Extra <= 0 {
		return h, errors.New("no handshake CPU measured")
	}
	return h, nil
}

// Data: the same comparison for kept-alive connections, against the record costs
// charged for them and the reads that brought the requests. Two kinds of exchange
// alternate: bulk (64 KiB responses: mostly per-byte record cost) and small (256-byte
// responses: mostly per-read cost), and DataFactor (the process CPU TLS adds to moving
// data per second of record-layer CPU: the copies and wake-ups around the record
// layer, the contention of a client on the same machine) and PerRead (what each read
// that returns data costs beyond its records: crypto/tls reading into its own buffer
// and the wake-up around it) are the solution of the two equations
//
//	extra_bulk  = DataFactor × records_bulk  + PerRead × reads_bulk
//	extra_small = DataFactor × records_small + PerRead × reads_small
//
// Records are then charged the record layer's cost times DataFactor, the two measured
// together, so that their product is what the exchanges measured. (The record layer
// was once re-measured under contention and while traffic flowed, and the factor
// applied to that: those short measurements read ±20–40% apart from run to run on a
// KVM guest, where the extra CPU of the exchanges moved by ±8%, and the charge carried
// their noise.)

// openData starts the child's target and opens the kept-alive connections of both kinds.
func (b *calBench) openData() error {
	addr, err := b.child.target()
	if err != nil {
		return err
	}
	b.target.Store(&addr)
	for _, kind := range []string{"bulk", "small"} {
		for _, useTLS := range []bool{true, false} {
			if err := b.child.exchanges(kind, useTLS); err != nil {
				return err
			}
		}
	}
	return nil
}

// charged is the record CPU charged so far, ns.
func (b *calBench) charged() float64 {
	mfs, _ := b.reg.Gather()
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

// dataRound is one round of each kind, TLS first in even rounds and plain first in odd
// ones.
func (b *calBench) dataRound(r int) (bulk, small dataRound, err error) {
	b.pauseCPU = 0
	for _, kind := range []string{"bulk", "small"} {
		// A collection that falls in one batch of a pair and not the other moves
		// that round's difference by more than TLS adds to a small exchange:
		// collect now, outside the measured batches.
		runtime.GC()
		p := processCPU()
		time.Sleep(dataFactorPause)
		b.pauseCPU = max(b.pauseCPU, processCPU()-p)
		c0, n0 := b.charged(), b.a.appReads.Load()
		dExtra := 0.0
		for _, useTLS := range []bool{r%2 == 0, r%2 == 1} {
			p0 := processCPU()
			if err := b.child.exchanges(kind, useTLS); err != nil {
				return bulk, small, err
			}
			d := float64(processCPU() - p0)
			if !useTLS {
				d = -d
			}
			dExtra += d
		}
		dCharged := b.charged() - c0
		if dCharged <= 0 {
			return bulk, small, errors.New("no record CPU charged")
		}
		round := dataRound{Extra: dExtra, Charged: dCharged, Reads: float64(b.a.appReads.Load() - n0)}
		if kind == "bulk" {
			bulk = round
		} else {
			small = round
		}
	}
	return bulk, small, nil
}

// solveDataCosts solves extra = DataFactor × charged + PerRead × reads (nanoseconds) for
// the bulk and the small exchanges, PerRead returned in seconds. The small exchanges'
// extra CPU is a few µs each out of tens, so the per-read cost is the noisier of the two:
// in one start-up in five on a loaded machine it came out negative. TLS does add a cost
// per read, so a negative one is replaced by the provisional per-read cost
// (ProvisionalCosts), and the factor is solved from the bulk exchanges with it.
func solveDataCosts(bulk, small dataRound) (dataFactor, perRead float64) {
	det := bulk.Charged*small.Reads - small.Charged*bulk.Reads
	r := -1.0
	if det != 0 {
		r = (bulk.Charged*small.Extra - small.Charged*bulk.Extra) / det
	}
	if r < 0 {
		r = ProvisionalCosts().PerRead * 1e9
	}
	d := (bulk.Extra - r*bulk.Reads) / bulk.Charged
	if d <= 0 { // the bulk exchanges' extra CPU is all per read: not credible
		return bulk.Extra / bulk.Charged, 0
	}
	return d, r / 1e9
}

// dataRound is what TLS added to the process CPU in one round of kept-alive exchanges,
// the record-layer CPU charged for them (ns) and the reads that returned data.
type dataRound struct {
	Extra   float64 `json:"extra_ns"`
	Charged float64 `json:"charged_ns"`
	Reads   float64 `json:"reads"`
}

// trimmedSums are the sums over the rounds, leaving out the eighth with the highest
// extra/charged and the eighth with the lowest.
func trimmedSums(rounds []dataRound) dataRound {
	s := slices.Clone(rounds)
	slices.SortFunc(s, func(a, b dataRound) int { return cmp.Compare(a.Extra/a.Charged, b.Extra/b.Charged) })
	cut := len(s) / 8
	var sum dataRound
	for _, r := range s[cut : len(s)-cut] {
		sum.Extra, sum.Charged, sum.Reads = sum.Extra+r.Extra, sum.Charged+r.Charged, sum.Reads+r.Reads
	}
	return sum
}

// Calibration exchanges. A connection's first byte says which: 'x' is one byte in, one
// byte out, close (after a handshake, or not); 'b' starts a bulk connection, kept alive:
// requests of bulkRequest bytes, each answered with bulkResponse bytes, forwarded as
// edgeproxy's fast path forwards a response (serveCalibration); 's' a small one: the same
// requests, each answered with smallResponse bytes.
const (
	bulkRequest   = 128
	bulkResponse  = 64 << 10
	bulkPiece     = 16 << 10
	smallResponse = 256

	// smallExchanges are the small exchanges per worker in a round: about half the
	// process CPU of a round of bulk ones.
	smallExchanges = 80
)

// exchangeKinds are the kept-alive exchanges: first byte, response size, exchanges per
// worker in a round.
var exchangeKinds = map[string]struct {
	first     byte
	size, per int
}{
	"bulk":  {'b', bulkResponse, dataFactorExchanges},
	"small": {'s', smallResponse, smallExchanges},
}

// calibrationConnLife is the deadline of a calibration connection and of its target
// connection: a start-up calibration is done well within it, and refinement starts a new
// client process before it (refineBenchLife).
const calibrationConnLife = 30 * time.Second

// serveCalibration is the calibration server's side of a connection. A kept-alive one is
// served as edgeproxy's fast path serves a request: the request is forwarded to a target
// (served by the child process, as a backend is another process, on the CPUs the
// child runs on: placeChild), and the response is read from it as the fast path reads
// one: a first read of up to 16 KiB written to the client as it is, then the rest of a
// longer body read into 64 KiB and written in one batch (internal/writebatch). In a tight
// loop of the record layer alone, its code and tables stay in the caches; between a
// target's reads and writes, as in a proxy, they do not, and that is part of what TLS
// costs a proxied request. (A target in this process shared a pinned edge's core and read
// the data factor 0.79 where the edge's 64 KiB responses needed ~1.1; calibrated on 16 KiB
// pieces each written on its own after the fast path had begun to batch, the data factor
// charged 1.5–1.8 times what TLS added to 16 KiB–1 MiB responses.)
func serveCalibration(c net.Conn, target *string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(calibrationConnLife))
	var b [bulkRequest]byte
	if _, err := io.ReadFull(c, b[:1]); err != nil {
		return
	}
	size := bulkResponse
	switch b[0] {
	case 'b':
	case 's':
		size = smallResponse
	default:
		_, _ = c.Write(b[:1])
		return
	}
	if _, err := io.ReadFull(c, b[1:]); err != nil {
		return
	}
	if target == nil {
		return
	}
	up, err := net.DialTimeout("tcp", *target, 5*time.Second)
	if err != nil {
		return
	}
	up = sysconn.Wrap(up) // as the fast path's target connections
	defer up.Close()
	_ = up.SetDeadline(time.Now().Add(calibrationConnLife))
	head := make([]byte, bulkPiece)
	var rest []byte // the rest of a long body, read at once (fastpath: bodyBuf)
	batch := writebatch.Under(c)
	for {
		if _, err := up.Write(b[:]); err != nil {
			return
		}
		// As the fast path: the first read, up to 16 KiB (with a response head there),
		// goes out as it is; the rest of a longer body is read into 64 KiB and written
		// in one batch.
		left := size
		n, err := up.Read(head[:min(left, len(head))])
		if n > 0 {
			if _, werr := c.Write(head[:n]); werr != nil {
				return
			}
			left -= n
		}
		if left > 0 && rest == nil {
			rest = make([]byte, bulkResponse)
		}
		for left > 0 && err == nil {
			n, err = up.Read(rest[:min(left, len(rest))])
			if n > 0 {
				if werr := writebatch.Write(c, batch, rest[:n]); werr != nil {
					return
				}
				left -= n
			}
		}
		if err != nil && left > 0 {
			return
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
	}
}

// serveTarget is the calibration's target: it answers each request of bulkRequest bytes
// (the first byte says which kind) with the kind's response, in one write, as most
// backends write a body they have whole.
func serveTarget(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(calibrationConnLife))
	var b [bulkRequest]byte
	resp := make([]byte, bulkResponse)
	for {
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		size := bulkResponse
		if b[0] == 's' {
			size = smallResponse
		}
		if _, err := c.Write(resp[:size]); err != nil {
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
