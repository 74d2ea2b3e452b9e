package tlscost

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Linear is a CPU cost model in seconds: PerCall for each operation plus PerByte for each
// byte it handles.
type Linear struct {
	PerCall float64
	PerByte float64
}

// At is the cost of one operation on n bytes.
func (l Linear) At(n int) float64 { return l.PerCall + l.PerByte*float64(n) }

func (l Linear) times(f float64) Linear {
	return Linear{PerCall: l.PerCall * f, PerByte: l.PerByte * f}
}

// AEAD names, as used in the aead label and in Costs.
const (
	AES128GCM        = "aes128gcm"
	AES256GCM        = "aes256gcm"
	ChaCha20Poly1305 = "chacha20poly1305"
)

var aeadNames = []string{AES128GCM, AES256GCM, ChaCha20Poly1305}

// Costs are what record protection costs on this machine. They are measured, not assumed:
// Calibrate times the AEADs crypto/tls uses and the write(2) of a loopback TCP socket with
// the thread CPU clock.
type Costs struct {
	// Seal and Open are the CPU cost of encrypting and decrypting one record, by AEAD name:
	// PerCall per record, PerByte per plaintext byte. A missing AEAD costs nothing.
	Seal, Open map[string]Linear
	// Write is the CPU cost of one write(2) of n bytes on a TCP socket. Its PerCall part is
	// what a write that TLS adds costs (one per extra record, one per close_notify).
	Write Linear
	// MinSyscall is the least a write(2) on a socket costs here (the 10th percentile of
	// small writes timed one by one): half of it is the shortest gap that two writes of
	// the application can have between them (conn.sameWrite).
	MinSyscall float64
	// HandshakeFactor is the process CPU one second of a handshake's thread-clock CPU
	// stands for (measureHandshakeFactor): what the handshake causes around its
	// segments. Values below 1 mean 1.
	HandshakeFactor float64
	// DataFactor is the process CPU one second of record-layer CPU (at the Seal and Open
	// costs) stands for on kept-alive connections carrying data (measureHandshakeFactor,
	// hscal.go): records are charged Seal and Open times it. It may be below 1 where
	// the start-up measurement of Seal and Open read high: the two are measured
	// together, and their product is what the measured exchanges cost. Zero means 1.
	DataFactor float64
	// PerRead is the process CPU TLS adds to each read that returns data on a kept-alive
	// connection beyond the records it brings (measureHandshakeFactor, fitted with
	// DataFactor on small and bulk exchanges): crypto/tls reading the record into its own
	// buffer before opening it and copying it out, and the wake-up around it. A small
	// request costs it once; a per-byte or per-record cost does not carry it. Charged per
	// read after the handshake (conn.Read).
	PerRead float64
	// InterruptedRead is the process CPU TLS adds to a read, on a goroutine of its own,
	// that a deadline ends before any data comes (measureInterruptedRead, waitcal.go):
	// net/http's HTTP/1.1 server makes one per request, to notice a client that leaves,
	// and on a TLS connection its goroutine's stack grows through crypto/tls. Charged
	// per such read after the handshake (conn.Read).
	InterruptedRead float64
	// HandshakeGCShare is the part of HandshakeFactor's extra CPU that the runtime
	// reported as garbage collection while it was measured (informational).
	HandshakeGCShare float64
	// HandshakeAllocBytes is what the server side of one handshake allocates, for the
	// share of the garbage collector's CPU that TLS causes; zero charges none.
	HandshakeAllocBytes int64
}

var (
	calibrateOnce     sync.Once
	calibrated        *Costs
	calibratedSamples *calSamples
	calibrationErr    error
)

// Calibrate measures the costs once per process and returns them; later calls return the
// same values (the machine does not change under a running process). It takes some tens of
// milliseconds of CPU. The error, if any, says what could not be measured; the returned
// Costs are still usable, with zero for that part.
func Calibrate() (*Costs, error) {
	c, _, err := calibrateWithSamples()
	return c, err
}

// calibrateWithSamples is Calibrate with the measurements its fitted terms come from
// (nil when the data terms were not measured), for refinement (refine.go).
func calibrateWithSamples() (*Costs, *calSamples, error) {
	calibrateOnce.Do(func() { calibrated, calibratedSamples, calibrationErr = calibrate() })
	return calibrated, calibratedSamples, calibrationErr
}

func calibrate() (*Costs, *calSamples, error) {
	c := &Costs{Seal: map[string]Linear{}, Open: map[string]Linear{}}
	if !threadClockWorks() {
		return c, nil, errors.New("tlscost: no per-thread CPU clock on this system; record costs read as zero")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cert, err := calibrationCert()
	if err != nil {
		return c, nil, fmt.Errorf("tlscost: calibration certificate: %w", err)
	}
	for _, name := range aeadNames {
		rb, err := newRecordBench(cert, name)
		if err == nil {
			c.Seal[name], c.Open[name], err = rb.measure(7, 512)
		}
		if err != nil {
			// The AEAD alone, which is most of a large record's cost.
			aead, aerr := newAEAD(name)
			if aerr != nil {
				return c, nil, fmt.Errorf("tlscost: calibrating %s: %w", name, aerr)
			}
			c.Seal[name], c.Open[name] = measureAEAD(aead)
			return c, nil, fmt.Errorf("tlscost: calibrating the %s record layer: %w; charging its AEAD only, as measured at start-up", name, err)
		}
	}
	if c.HandshakeAllocBytes, err = handshakeAllocs(); err != nil {
		return c, nil, fmt.Errorf("tlscost: measuring handshake allocations: %w; no GC CPU is charged to TLS", err)
	}
	w, minSys, err := measureWrite()
	if err != nil {
		return c, nil, fmt.Errorf("tlscost: calibrating write(2) on loopback: %w; extra writes read as free", err)
	}
	c.Write, c.MinSyscall = w, minSys
	if c.InterruptedRead, err = measureInterruptedRead(cert, c); err != nil {
		return c, nil, fmt.Errorf("tlscost: measuring a read interrupted by its deadline: %w; charging none", err)
	}
	var samples *calSamples
	if c.HandshakeFactor, c.HandshakeGCShare, c.DataFactor, c.PerRead, samples, err = measureHandshakeFactor(cert, c); err != nil {
		return c, nil, fmt.Errorf("tlscost: measuring what handshakes and records cost around what is clocked: %w; charging what is clocked only", err)
	}
	if samples != nil {
		samples.Interrupted = []float64{c.InterruptedRead}
	}
	return c, samples, nil
}

func newAEAD(name string) (cipher.AEAD, error) {
	switch name {
	case AES128GCM, AES256GCM:
		n := 16
		if name == AES256GCM {
			n = 32
		}
		b, err := aes.NewCipher(make([]byte, n))
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	case ChaCha20Poly1305:
		return chacha20poly1305.New(make([]byte, chacha20poly1305.KeySize))
	}
	return nil, fmt.Errorf("unknown AEAD %q", name)
}

// Sizes between which the linear models are fitted: a small record (a response head, an
// alert) and a full one (maxPlaintext).
const (
	smallRecord = 64
	fullRecord  = 16384
)

// measureAEAD fits Seal and Open costs through a small and a full record. Each point is the
// fastest of several rounds: interruptions only ever add time.
func measureAEAD(aead cipher.AEAD) (seal, open Linear) {
	nonce := make([]byte, aead.NonceSize())
	ad := make([]byte, 13) // a TLS 1.2 record's additional data; TLS 1.3 uses 5 bytes
	src := make([]byte, fullRecord)
	dst := make([]byte, 0, fullRecord+aead.Overhead())
	out := make([]byte, 0, fullRecord)
	point := func(n, iters int) (sealSec, openSec float64) {
		sealed := aead.Seal(nil, nonce, src[:n], ad)
		sealSec = fastest(iters, func() { dst = aead.Seal(dst[:0], nonce, src[:n], ad) })
		openSec = fastest(iters, func() { out, _ = aead.Open(out[:0], nonce, sealed, ad) })
		return
	}
	s1, o1 := point(smallRecord, 2000)
	s2, o2 := point(fullRecord, 200)
	return fit(smallRecord, s1, fullRecord, s2), fit(smallRecord, o1, fullRecord, o2)
}

// fastest runs f iters times per round and returns the lowest per-call thread CPU seconds
// over the rounds. The caller is locked to its thread.
func fastest(iters int, f func()) float64 {
	best := math.Inf(1)
	for range 7 {
		t0 := threadCPU()
		for range iters {
			f()
		}
		if d := float64(threadCPU()-t0) / 1e9 / float64(iters); d < best {
			best = d
		}
	}
	return best
}

// fit returns the line through (n1, c1) and (n2, c2), with no negative part.
func fit(n1 int, c1 float64, n2 int, c2 float64) Linear {
	perByte := max(0, (c2-c1)/float64(n2-n1))
	return Linear{PerCall: max(0, c1-perByte*float64(n1)), PerByte: perByte}
}

// measureWrite fits the cost of write(2) on a loopback TCP connection whose other end is
// being drained, through small and full-record writes. Loopback is where it can be measured
// without sending anything anywhere; on loopback a write also pays for the receiving side's
// TCP processing, as it does in the accuracy benchmark. Each point is the median of rounds:
// unlike pure computation, a write's cost varies with what the receiver is doing, and the
// median is the typical cost rather than the luckiest.
//
// It also returns the least a small write costs here (Costs.MinSyscall), for telling
// writes apart.
func measureWrite() (Linear, float64, error) {
	peer, w, err := tcpPair() // both ends make raw system calls, as the edge's sockets do
	if err != nil {
		return Linear{}, 0, err
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		_, _ = io.Copy(io.Discard, peer)
		_ = peer.Close()
	}()
	defer func() {
		_ = w.Close()
		<-drained
	}()
	_ = w.SetWriteDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, fullRecord+64)
	point := func(n int) (float64, error) {
		var rounds []float64
		for range 9 {
			t0 := threadCPU()
			for range 40 {
				if _, err := w.Write(buf[:n]); err != nil {
					return 0, err
				}
			}
			rounds = append(rounds, float64(threadCPU()-t0)/1e9/40)
		}
		slices.Sort(rounds)
		return rounds[len(rounds)/2], nil
	}
	if _, err := point(smallRecord); err != nil { // warm up the connection
		return Linear{}, 0, err
	}
	small, err := point(smallRecord)
	if err != nil {
		return Linear{}, 0, err
	}
	full, err := point(fullRecord)
	if err != nil {
		return Linear{}, 0, err
	}
	least, err := measureLeastWrite()
	if err != nil {
		return Linear{}, 0, err
	}
	return fit(smallRecord, small, fullRecord, full), least, nil
}

// measureLeastWrite times small writes one by one on a connection whose peer does not
// read (the socket buffer takes them all), and returns the 10th percentile: a system call
// with its TCP processing but without waking a reader. With a reader, a write costs
// either ~2 µs or ~6.5 µs on a KVM guest, by whether the reader's wake-up had to
// interrupt the other vCPU, and which of the two a start-up saw varied.
func measureLeastWrite() (float64, error) {
	peer, w, err := tcpPair()
	if err != nil {
		return 0, err
	}
	defer w.Close()
	defer peer.Close()
	_ = w.SetWriteDeadline(time.Now().Add(5 * time.Second))
	var b [smallRecord]byte
	one := make([]float64, 0, 200) // 12.8 KB in all: within any socket buffer
	for range cap(one) {
		t0 := threadCPU()
		if _, err := w.Write(b[:]); err != nil {
			return 0, err
		}
		one = append(one, float64(threadCPU()-t0)/1e9)
	}
	slices.Sort(one)
	return one[len(one)/10], nil
}
