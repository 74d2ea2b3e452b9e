package tlscost

import (
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// conn sits between crypto/tls and the TCP connection. During the handshake it cuts the
// handshake goroutine's thread CPU into segments around blocking reads; afterwards it charges
// each record it sees to the metrics.
//
// Its fields are touched by one goroutine at a time: the handshake fields by the goroutine
// that runs Accountant.Handshake; after it, the out fields under crypto/tls's output lock
// and the in fields under its input lock.
type conn struct {
	net.Conn
	a *Accountant

	// Handshake phase.
	accepted    time.Time
	started     bool // the handshake has begun
	unmeasured  bool // it began without Accountant.Handshake: nothing is measured
	inHandshake bool
	inSegment   bool  // a segment is open: the goroutine is locked to its thread
	segStart    int64 // thread CPU clock (ns) when the current segment began
	cpu         int64 // ns, the segments so far
	key         string
	hsIn, hsOut int   // raw bytes read and written during the handshake
	inRecs      []rec // records whose header was read during the handshake
	inRecsBuf   [6]rec
	clockReads  int // thread-clock readings so far (what the measurement costs)

	// The tail of a handshake — its segments after the server's first flight has been
	// written: processing the client's second flight — is measured when measureTail is
	// set (on a sample of handshakes, see Accountant.handshake) and estimated otherwise.
	measureTail bool
	tail        bool  // the server's first flight is out: this segment is in the tail
	tailCPU     int64 // ns, the tail's measured segments (included in cpu)

	// Read-ahead of the handshake: what one read from the socket brought in and crypto/tls
	// has not yet taken, so that a client's flight arriving at once costs one read and no
	// segment boundary, however small the buffer crypto/tls reads into. Taken back by
	// the pool when empty after the handshake.
	hsBuf  *[]byte
	hsData []byte // the unread part of *hsBuf

	// Set when the handshake succeeded, before the conn is handed on.
	aead         int // aeadIndex of the negotiated AEAD
	overhead     int // record body bytes beyond the plaintext
	boostPayload int // plaintext of the first record under dynamic record sizing
	tls13        bool

	// tallyMu guards inTally and outTally: Close flushes them, and a connection may be
	// closed by another goroutine than its reader's or writer's. Uncontended, it costs
	// tens of nanoseconds per read or write.
	tallyMu sync.Mutex

	// Output: crypto/tls's output lock.
	outTally     tally
	writes       uint32 // writes after the handshake, from a random start: every writeSampleEvery-th is timed
	out          scanner
	sent         int64 // all bytes written, as crypto/tls's bytesSent
	packets      int   // application data records costed under dynamic sizing, as packetsSent
	prevFull     bool  // the previous record was full, i.e. maybe cut from a larger write
	pending      int   // plaintext of the application write the previous record belonged to
	readsAtWrite uint64
	lastWrite    time.Duration // since epoch, when the previous write(2) returned
	gap          time.Duration // from the previous write's return to this write

	// Input: crypto/tls's input lock.
	inTally tally
	in      scanner

	reads atomic.Uint64 // reads that returned data, seen by the writer to tell flights apart
}

type rec struct {
	typ  byte
	body int
}

// tally is what a conn has charged in one direction and not yet added to the shared
// counters. Each update of a counter shared by every connection moves its cache line
// between CPUs; three or four per record were a measurable part of what the accounting
// cost on 64 KiB responses. So a conn adds up and flushes every flushRecords records, at
// an alert (close_notify: the connection is ending), when a read or write fails, and
// when it is closed.
type tally struct {
	records     int
	reads       int // reads that returned data, each charged the per-read cost
	waits       int // reads that a deadline ended, each charged the interrupted-read cost
	bytes, cpu  float64
	extraWrites int
	now         bool // flush at the end of this read or write
}

const flushRecords = 8

func (t *tally) add(bytes int, cpu float64) {
	t.records++
	t.bytes += float64(bytes)
	t.cpu += cpu
	t.now = t.now || t.records >= flushRecords
}

// read charges one read that returned data its fixed cost (Costs.PerRead, see conn.Read).
func (t *tally) read(cpu float64) {
	t.reads++
	t.cpu += cpu
}

// interrupted charges one read that its deadline ended its fixed cost
// (Costs.InterruptedRead, see conn.Read).
func (t *tally) interrupted(cpu float64) {
	t.waits++
	t.cpu += cpu
}

// flush adds t to the counters of one direction and to the total, and empties it.
func (t *tally) flush(a *Accountant, bytes, cpu prometheus.Counter) {
	if t.records == 0 && t.reads == 0 && t.waits == 0 {
		return
	}
	if t.reads > 0 {
		a.appReads.Add(int64(t.reads))
	}
	bytes.Add(t.bytes)
	cpu.Add(t.cpu)
	a.cpuTotal.Add(t.cpu)
	if t.extraWrites > 0 {
		a.extraWrites.Add(float64(t.extraWrites))
	}
	*t = tally{}
}

// endSegment closes the current CPU segment, if one is open, and frees the thread;
// startSegment locks the goroutine to its thread again and opens a new segment. Both run
// only in the handshake.
func (c *conn) endSegment() {
	if !c.inSegment {
		return
	}
	d := max(0, threadCPU()-c.segStart) // never negative on one thread; a counter must not fall
	c.cpu += d
	if c.tail {
		c.tailCPU += d
	}
	c.clockReads++
	c.inSegment = false
	runtime.UnlockOSThread()
}

func (c *conn) startSegment() {
	c.tail = c.hsOut > 0
	if c.tail && !c.measureTail {
		return // estimated: no thread to hold, no clock to read
	}
	runtime.LockOSThread()
	c.inSegment = true
	c.segStart = threadCPU()
	c.clockReads++
}

// Read charges, after the handshake, each read that returns data the fixed per-read cost
// (Costs.PerRead: what a read of a request costs over TLS beyond its records — crypto/tls
// reading into its own buffer, then opening and copying out, and the wake-up around it)
// and each record whose header it completes the record cost.
func (c *conn) Read(p []byte) (int, error) {
	if !c.started {
		c.started, c.unmeasured = true, true
	}
	if c.unmeasured {
		return c.Conn.Read(p)
	}
	if len(c.hsData) > 0 {
		return c.readAhead(p), nil
	}
	if c.inHandshake {
		return c.handshakeRead(p)
	}
	n, err := c.Conn.Read(p)
	if n > 0 || err != nil {
		c.tallyMu.Lock()
		if n > 0 {
			c.reads.Add(1)
			c.inTally.read(c.a.rec.Load().perRead)
			c.in.feed(p[:n], c.chargeIn)
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			c.inTally.interrupted(c.a.rec.Load().waitRead)
		}
		if c.inTally.now || err != nil {
			c.inTally.flush(c.a, c.a.recordBytesIn, c.a.recordCPUIn)
		}
		c.tallyMu.Unlock()
	}
	return n, err
}

// handshakeRead reads from the socket during the handshake, into the read-ahead buffer.
// It never holds the thread across the read, which may block: a client that sends nothing
// would pin one OS thread each. Each such read ends a CPU segment and starts the next,
// two readings of the thread clock; so it reads as much as has arrived (a ClientHello
// with a post-quantum key share is ~1.8 KiB, and crypto/tls asks for its 5-byte header
// first, then for the rest: two reads, and two more clock readings, without the buffer).
func (c *conn) handshakeRead(p []byte) (int, error) {
	if c.hsBuf == nil {
		c.hsBuf = c.a.readAhead.Get().(*[]byte)
	}
	buf := *c.hsBuf
	c.endSegment()
	n, err := c.Conn.Read(buf)
	c.startSegment()
	c.hsIn += n
	if c.inRecs == nil {
		c.inRecs = c.inRecsBuf[:0] // a handshake's few records need no allocation
	}
	c.in.feed(buf[:n], func(typ byte, body int) { c.inRecs = append(c.inRecs, rec{typ, body}) })
	c.hsData = buf[:n]
	return c.readAhead(p), err
}

// readAhead passes on what the handshake read ahead, and gives the buffer back once the
// handshake is over and it is empty.
func (c *conn) readAhead(p []byte) int {
	n := copy(p, c.hsData)
	c.hsData = c.hsData[n:]
	if len(c.hsData) == 0 && !c.inHandshake {
		c.releaseReadAhead()
	}
	return n
}

// readAheadSize holds a client's first flight (a ClientHello is 0.5–2 KiB) or its second
// (in TLS 1.2 with a client certificate chain, a few KiB); a larger one takes more reads.
// A handshake holds its buffer from its first read to its end, so one waiting for its
// ClientHello holds 4 KiB (a thousand stalled handshakes, 4 MiB, next to their goroutines'
// 8 MiB of stacks): waiting for readability before taking the buffer would cost a system
// call per connection (a peek: Go's poller forgets a readiness it has not read on).
const readAheadSize = 4 << 10

func (c *conn) releaseReadAhead() {
	if c.hsBuf != nil && len(c.hsData) == 0 {
		c.a.readAhead.Put(c.hsBuf)
		c.hsBuf, c.hsData = nil, nil
	}
}

// Close counts what the connection has charged and not yet counted, and closes it.
func (c *conn) Close() error {
	c.tallyMu.Lock()
	c.inTally.flush(c.a, c.a.recordBytesIn, c.a.recordCPUIn)
	c.outTally.flush(c.a, c.a.recordBytesOut, c.a.recordCPUOut)
	c.tallyMu.Unlock()
	return c.Conn.Close()
}

// Write stays on the locked thread during the handshake: the handshake's writes are a few
// KiB that the socket buffer takes without blocking, and their system call is part of what
// the handshake costs.
func (c *conn) Write(p []byte) (int, error) {
	if !c.started {
		c.started, c.unmeasured = true, true
	}
	if c.unmeasured {
		return c.Conn.Write(p)
	}
	if c.inHandshake {
		n, err := c.Conn.Write(p)
		c.sent += int64(n)
		c.hsOut += n
		return n, err
	}
	var n int
	var err error
	if c.prevFull {
		c.gap = time.Since(epoch) - c.lastWrite
	}
	// Only writes of one record are sampled: the fixed cost is what an extra write (a
	// record TLS sends on its own) costs, and a batch of several records (writebatch)
	// costs more per byte than the start-up's slope, which would read as fixed cost.
	if c.writes++; c.writes%writeSampleEvery == 0 && len(p) <= recordHeaderLen+maxPlaintext+256 {
		n, err = c.a.sampleWrite(c.Conn, p)
	} else {
		n, err = c.Conn.Write(p)
	}
	c.tallyMu.Lock()
	if n > 0 {
		first := true
		c.out.feed(p[:n], func(typ byte, body int) {
			c.chargeOut(typ, body, first)
			first = false
		})
		c.sent += int64(n)
	}
	if c.outTally.now || err != nil {
		c.outTally.flush(c.a, c.a.recordBytesOut, c.a.recordCPUOut)
	}
	c.tallyMu.Unlock()
	if c.prevFull { // only the write after a full record asks when this one returned
		c.lastWrite = time.Since(epoch)
	}
	return n, err
}

// epoch is the origin of the monotonic write times of conn.
var epoch = time.Now()

// SetDeadline, SetReadDeadline and SetWriteDeadline pass through: net/http sets and clears
// its own deadlines on the *tls.Conn, which calls these.
var _ net.Conn = (*conn)(nil)

// finishHandshake records what the handshake negotiated and sorts the records read during
// it: a client may send its first request in the same segment as its Finished message.
func (c *conn) finishHandshake(cs *tls.ConnectionState) {
	aead := aeadOf(cs.CipherSuite)
	c.aead = aeadIndex(aead)
	c.overhead = recordOverhead(cs.Version, aead)
	c.writes = rand.Uint32() // so that connections' sampled writes are not in step
	c.boostPayload = tcpMSSEstimate - recordHeaderLen - c.overhead
	c.tls13 = cs.Version >= tls.VersionTLS13
	hs := 0
	seenFinished := false
	for _, r := range c.inRecs {
		// Handshake records: in TLS 1.2 everything but application data; in TLS 1.3
		// (without client certificates) everything up to the first encrypted record,
		// the client's Finished.
		isHandshake := r.typ != typeApplicationData
		if c.tls13 {
			isHandshake = !seenFinished
			seenFinished = seenFinished || r.typ == typeApplicationData
		}
		if isHandshake {
			hs += recordHeaderLen + r.body
		} else {
			c.chargeIn(r.typ, r.body)
		}
	}
	c.a.hsBytesIn.Add(float64(hs))
	c.inRecs = nil
}

// chargeIn costs one record read after the handshake (or found after the client's Finished).
func (c *conn) chargeIn(typ byte, body int) {
	plain := max(0, body-c.overhead)
	c.inTally.add(recordHeaderLen+body, c.a.rec.Load().open[c.aead].At(plain))
	c.inTally.now = c.inTally.now || c.isAlert(typ, plain)
}

// isAlert tells an alert record (close_notify, mostly) by its type, or in TLS 1.3, where
// every protected record has the application data type, by its two-byte plaintext.
func (c *conn) isAlert(typ byte, plain int) bool {
	return typ == typeAlert || c.tls13 && typ == typeApplicationData && plain == 2
}

// chargeOut costs one record written after the handshake. first is whether it begins a
// write(2). crypto/tls writes each record with its own write(2), where the same bytes in
// plain HTTP would have gone out in one write per write of the layer above (net/http's
// bufio, the proxy's copy loop). So a record is an extra write when the record before it was
// full — cut short by the record size, with more to come — and belongs to the same
// application write: no read in between, and the two together no larger than MaxAppWrite.
// A close_notify alert is an extra write too: plain HTTP just closes.
func (c *conn) chargeOut(typ byte, body int, first bool) {
	plain := max(0, body-c.overhead)
	alert := c.isAlert(typ, plain)
	extra := false
	if alert {
		extra = first
		c.prevFull, c.pending = false, 0
	} else {
		limit := maxPlaintext
		if typ == typeApplicationData && c.sent < recordSizeBoostThreshold {
			// Replay crypto/tls's dynamic record sizing to know this record's limit.
			if c.packets <= 1000 {
				limit = min(c.boostPayload*(c.packets+1), maxPlaintext)
			}
			c.packets++
		}
		reads := c.reads.Load()
		if first && c.prevFull && reads == c.readsAtWrite && c.pending+plain <= c.a.maxAppWrite && c.sameWrite(plain) {
			extra = true
			c.pending += plain
		} else {
			c.pending = plain
		}
		c.readsAtWrite = reads
		c.prevFull = plain >= limit
	}
	cpu := c.a.rec.Load().seal[c.aead].At(plain)
	if extra {
		cpu += c.a.writeCost()
		c.outTally.extraWrites++
	}
	c.outTally.add(recordHeaderLen+body, cpu)
	c.outTally.now = c.outTally.now || alert
}

// sameWrite tells, for a record that follows a full one and could belong to the same
// application write, whether it does, by the time since the previous record's write(2)
// returned. Within one tls.Conn.Write, crypto/tls only seals the next record in between;
// between two writes of the application there is at least the system call that read what
// it forwards (on the fast path: a 16 KiB write of a response, then the read of the next
// piece from the target). So the record is the same write's when the gap is below twice
// its calibrated sealing cost plus half the least a system call costs here (the fastest,
// not the typical: a start-up on a busy machine must not widen the window). (Sizes alone cannot
// tell: a full record and a short one are a write of 16 KiB and a bit, or a 16 KiB piece
// and the last short piece of a body.) A preempted writer reads as two writes, an
// extra write missed.
func (c *conn) sameWrite(plain int) bool {
	costs := c.a.costs.Load()
	limit := 2*costs.Seal[aeadNames[c.aead]].At(plain) + costs.MinSyscall/2
	return c.gap.Seconds() < limit
}

// handshake runs tc's handshake under measurement within the deadline, reports it and
// returns its error.
func (a *Accountant) handshake(c *conn, tc *tls.Conn) error {
	start := c.accepted
	if start.IsZero() {
		start = time.Now()
	}
	if a.timeout > 0 {
		_ = c.Conn.SetDeadline(start.Add(a.timeout))
	}
	// The first segment opens when the ClientHello has been read: a server's handshake
	// begins with that read.
	c.inHandshake = true
	c.measureTail = a.sampleTail()
	err := tc.Handshake()
	c.endSegment()
	c.inHandshake = false
	c.releaseReadAhead()
	wall := time.Since(start)

	cs := tc.ConnectionState()
	result, resumed, key := "ok", "false", c.key
	if cs.DidResume {
		resumed = "true"
	}
	if err != nil {
		result = "error"
		c.a.hsBytesIn.Add(float64(c.hsIn))
		a.log.Debug("tlscost: TLS handshake error", "remote", c.RemoteAddr().String(), "err", err)
	} else {
		if a.timeout > 0 {
			_ = c.Conn.SetDeadline(time.Time{})
		}
		c.finishHandshake(&cs)
		a.okHandshakes.Add(1)
	}
	if key == "" || cs.DidResume {
		key = "none" // no certificate's key was used
	}
	s := a.series(hsLabels{result, versionLabel(cs.Version), resumed, key, a.cipherLabel(cs.CipherSuite)})
	cpu := c.cpu
	if c.measureTail {
		s.tail.add(c.tailCPU)
	} else {
		cpu += s.tail.mean()
	}
	sec := float64(cpu) / 1e9
	s.count.Inc()
	s.cpu.Observe(sec)
	a.hsBytesOut.Add(float64(c.hsOut))
	a.handshakeWall.Observe(wall.Seconds())
	a.hsNanos.Add(cpu)
	a.cpuTotal.Add(sec * max(1, a.costs.Load().HandshakeFactor))
	return err
}
