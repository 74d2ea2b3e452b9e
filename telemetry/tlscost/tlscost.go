// Package tlscost measures what TLS termination costs this process in CPU, per handshake and
// per byte, and exports it as Prometheus metrics (the edgeproxy_tls_* rows of DESIGN.md).
//
// Handshakes are measured: Handshake runs the handshake of a connection wrapped by
// Accountant.Conn in the goroutine that serves it and reads the CPU clock of the thread
// that runs it (CLOCK_THREAD_CPUTIME_ID). The goroutine is locked to its thread only between
// blocking reads — locked when a read returns, unlocked before the next — and the
// segments are added up, so a silent client holds a parked goroutine, never an OS thread.
// Every handshake has a deadline: Options.HandshakeTimeout, or the caller's (proxy.Server
// sets read_header_timeout). The tail of a handshake, after the server's first flight, is
// measured on a sample of handshakes and estimated on the others (see tailSampleEvery):
// each reading of the clock costs more than the tail is worth measuring every time.
//
// A handshake is charged its thread-clock segments times HandshakeFactor: the process CPU
// a handshake costs per second of those segments, measured at start-up against a client
// in a child process (hscal.go): the handshake's read system calls and its wake-ups
// happen outside the segments.
//
// Records are costed: a record's CPU cannot be timed from below crypto/tls (encryption
// happens inside tls.Conn.Write, which the proxy calls directly), so each record seen on
// the wire is charged what the record layer (tls.Conn.Write / Read: AEAD, copies,
// framing, locking) costs per record and per byte on this machine, measured at start-up
// (recordcal.go), times DataFactor: the process CPU TLS adds to moving data per second of
// record-layer CPU, measured at start-up against a client in a child process (hscal.go).
// Each read that returns data after the handshake is charged PerRead on top of its
// records: what TLS adds per read (crypto/tls's own buffer, the wake-up around it), fitted
// with DataFactor at start-up on small and bulk exchanges; a small request costs it once.
// Each read that a deadline ends is charged InterruptedRead: net/http's HTTP/1.1 server
// makes one per request on a goroutine of its own, whose stack grows through crypto/tls
// (waitcal.go).
// The start-up calibration is kept per build and machine (cache.go), so that a restarted
// edge charges calibrated costs at once; a first start charges ProvisionalCosts until its
// calibration is done.
// When TLS made a write that plain HTTP would not have made, the record is also charged
// the cost of a write(2), measured on a sample of the real writes. The garbage
// collector's work for the handshakes' allocations is charged as its share of the
// collector's CPU (gc.go).
//
// Servers still receive a real *tls.Conn from Accept (net/http type-asserts one for ALPN,
// h2 and Request.TLS); the measuring happens in a net.Conn wrapper underneath it. The
// listener, its certificate choice and its session tickets are tlsserve's; this package
// only measures. The calibration re-executes the program as a client process: main calls
// RunChild first (see hschild.go).
package tlscost

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"io/fs"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options configure an Accountant. The zero value is usable.
type Options struct {
	// Registerer receives the metrics; nil means a private registry that nothing scrapes
	// (for tests).
	Registerer prometheus.Registerer
	// HandshakeTimeout, if set, bounds a handshake from accept to its end: Handshake
	// sets the connection's deadline. Zero leaves the deadline to the caller, as
	// edgeproxy does: proxy.Server sets limits.read_header_timeout before it calls
	// Handshake (setting it twice would cost two more timer updates per connection). A
	// client that stops sending must not hold a connection for ever; it cannot hold a
	// thread (see the package comment).
	HandshakeTimeout time.Duration
	// MaxAppWrite is the largest single write the layers above TLS make: a run of full
	// records longer than this is counted as more than one write of the application.
	// Zero means DefaultMaxAppWrite, which fits edgeproxy's HTTP/1.1 fast path (a response
	// goes out as read from the target, the first piece with the response head; a piece
	// longer than a record, up to 64 KiB, in one batch of tlsserve's, so that its records
	// reach this wrapper as one write and none is an extra write) and HTTP/2 (DATA frames
	// of at most 16 KiB plus a frame header).
	// HTTP/1.1 served by net/http (proxy.fast_path: false) writes through the proxy's
	// 32 KiB copy buffer: 32 KiB there.
	MaxAppWrite int
	// Costs are the record and write costs to charge; nil means Calibrate().
	Costs *Costs
	// CacheDir keeps the start-up calibration for the next start of the same build on
	// the same machine (cache.go); "" means DefaultCacheDir(). Unused when Costs is set.
	CacheDir string
	// Logger receives failed handshakes at debug level and calibration problems; nil
	// means none.
	Logger *slog.Logger
}

// DefaultMaxAppWrite is the application write bound when Options.MaxAppWrite is zero.
const DefaultMaxAppWrite = 17 << 10

// Accountant owns the TLS cost metrics and measures the connections it wraps (Conn). A nil
// *Accountant is valid and measures nothing (tls.tls_cost: false).
type Accountant struct {
	timeout     time.Duration
	maxAppWrite int
	costs       atomic.Pointer[Costs] // replaced once, by the background calibration
	log         *slog.Logger

	handshakes     *prometheus.CounterVec
	handshakeCPU   *prometheus.HistogramVec
	handshakeWall  prometheus.Histogram
	handshakeBytes *prometheus.CounterVec
	recordBytesIn  prometheus.Counter
	recordBytesOut prometheus.Counter
	recordCPUIn    prometheus.Counter
	recordCPUOut   prometheus.Counter
	extraWrites    prometheus.Counter
	cpuTotal       prometheus.Counter
	gcCPU          prometheus.Counter
	okHandshakes   atomic.Int64 // for the bytes they allocated
	hsBytesIn      prometheus.Counter
	hsBytesOut     prometheus.Counter
	hsSeries       sync.Map // hsLabels → *hsSeries: the label lookups, once per combination
	hsTails        sync.Map // hsLabels without the cipher → *tailStats
	cipherNames    map[uint16]string
	readAhead      sync.Pool // *[]byte of readAheadSize: the handshakes' read-ahead buffers

	writeFixed atomic.Uint64 // float64 bits: the fixed CPU of one write(2), seconds
	writeN     atomic.Int64  // samples so far
	hsNanos    atomic.Int64  // thread-clock CPU of all handshakes so far (calibration)
	appReads   atomic.Int64  // reads after handshakes that returned data, as flushed (calibration)

	hsStarted  atomic.Int64 // measured handshakes begun, counted up to tailWarmup
	tailWarmup int64        // tailWarmup, but for tests
	tailEvery  uint32       // tailSampleEvery, but for tests

	// Record costs as charged: Costs.Seal/Open times Costs.DataFactor, by aeadIndex.
	rec           atomic.Pointer[recordCosts]
	perByte       *prometheus.GaugeVec
	perRecord     *prometheus.GaugeVec
	perReadGauge  prometheus.Gauge
	waitReadGauge prometheus.Gauge
	calibrated    chan struct{} // closed when the background calibration is applied; nil: none ran
	roundsGauge   prometheus.Gauge
	refineMu      sync.Mutex // guards refine; one Refine at a time
	refine        refineState
}

// hsLabels are the labels of the handshake metrics.
type hsLabels struct{ result, version, resumed, key, cipher string }

// hsSeries are the handshake metrics of one label combination, and the tails measured for
// it and the other cipher suites of its combination.
type hsSeries struct {
	count prometheus.Counter
	cpu   prometheus.Observer
	tail  *tailStats
}

// tailStats are the tails measured for the handshakes of one label combination but the
// cipher suite, which shares them: a tail is the check of the client's Finished (and in
// TLS 1.2 the key exchange), whose cost does not depend on the record cipher, and a
// combination seen rarely would otherwise go long without a measured tail of its own.
type tailStats struct{ nanos, n atomic.Int64 }

func (t *tailStats) add(nanos int64) {
	t.nanos.Add(nanos)
	t.n.Add(1)
}

// mean is the mean CPU (ns) of the tails measured; zero before the first.
func (t *tailStats) mean() int64 {
	n := t.n.Load()
	if n == 0 {
		return 0
	}
	return t.nanos.Load() / n
}

// A handshake reads the thread clock when its first segment begins and ends, and, when
// the client's second flight has arrived, around the tail: four readings, each a system
// call that on the benchmark VM cost, with its side effects on scheduling and caches,
// ~0.5–1% of the CPU of a new connection. The tail (TLS 1.3: checking the client's
// Finished, ~4 µs of ~340; TLS 1.2: also the key exchange and the server's Finished,
// ~85 µs of ~255) is measured on every tailSampleEvery-th handshake, at random, and on the
// first tailWarmup handshakes; the others are charged the mean of the tails measured for
// their label combination. The sum is unbiased; a single handshake's figure carries the
// mean instead of its own tail.
const (
	tailSampleEvery = 8
	tailWarmup      = 64
)

// sampleTail tells whether the handshake starting now measures its tail. Past the
// warm-up it only reads the shared counter: an add per handshake would move its cache
// line between CPUs on every new connection.
func (a *Accountant) sampleTail() bool {
	if a.hsStarted.Load() < a.tailWarmup && a.hsStarted.Add(1) <= a.tailWarmup {
		return true
	}
	return a.tailEvery <= 1 || rand.Uint32N(a.tailEvery) == 0
}

// series returns the handshake metrics for l. There are a few dozen combinations at most;
// looking each up once saves hashing four label values twice per handshake.
func (a *Accountant) series(l hsLabels) *hsSeries {
	if s, ok := a.hsSeries.Load(l); ok {
		return s.(*hsSeries)
	}
	tailKey := l
	tailKey.cipher = ""
	tail, _ := a.hsTails.LoadOrStore(tailKey, &tailStats{})
	s := &hsSeries{
		count: a.handshakes.WithLabelValues(l.result, l.version, l.resumed, l.key, l.cipher),
		cpu:   a.handshakeCPU.WithLabelValues(l.result, l.version, l.resumed, l.key, l.cipher),
		tail:  tail.(*tailStats),
	}
	got, _ := a.hsSeries.LoadOrStore(l, s)
	return got.(*hsSeries)
}

// recordCosts are the per-record costs charged for each AEAD, by aeadIndex.
type recordCosts struct {
	seal, open [3]Linear
	perRead    float64 // Costs.PerRead
	waitRead   float64 // Costs.InterruptedRead
}

// HandshakeCPUBuckets are the edgeproxy_tls_handshake_cpu_seconds buckets: 10µs·2^k up to
// 40.96ms, which spans a TLS 1.2 ticket resumption (tens of µs) to RSA-4096 signing (milliseconds).
var HandshakeCPUBuckets = prometheus.ExponentialBuckets(10e-6, 2, 13)

// New returns an Accountant with its metrics registered on opts.Registerer. It calibrates
// the record costs unless opts.Costs is set; a calibration problem is logged, not fatal.
func New(opts Options) (*Accountant, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !threadClockWorks() {
		log.Warn("tlscost: no per-thread CPU clock here: TLS CPU metrics read zero")
	}
	live := opts.Costs == nil
	var key cacheKey
	var samples *calSamples
	dir := opts.CacheDir
	if live {
		if dir == "" {
			dir = DefaultCacheDir()
		}
		key = currentCacheKey()
		if dir != "" {
			f, err := loadCachedCosts(dir, key)
			if err == nil {
				opts.Costs, samples, live = f.Costs, f.Samples, false
				logCalibration(log, f.Costs, "cache", key.path(dir), "measured", f.Measured, "rounds", f.Samples.rounds())
			} else if !errors.Is(err, fs.ErrNotExist) {
				log.Info("tlscost: calibrating again", "err", err.Error())
			}
		}
	}
	if live {
		// Calibration takes two to three seconds of CPU (tens of seconds on a loaded
		// machine): it must not hold up start-up. Until it is done, the provisional costs
		// are charged (ProvisionalCosts); Calibrated says when it is.
		opts.Costs = ProvisionalCosts()
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	a, err := newAccountant(opts, reg)
	if err != nil {
		return a, err
	}
	a.refine = refineState{dir: dir, key: key, samples: samples, idle: defaultIdle}
	a.roundsGauge.Set(float64(samples.rounds()))
	if !live {
		return a, nil
	}
	a.calibrated = make(chan struct{})
	go func() {
		defer close(a.calibrated)
		c, s, err := calibrateWithSamples()
		if err != nil {
			log.Warn(err.Error())
		}
		a.applyCosts(c)
		where := "none: no cache directory"
		if dir != "" && err == nil {
			where = key.path(dir)
			if err := storeCosts(dir, key, c, s); err != nil {
				where = "none: " + err.Error()
			}
		}
		if err == nil {
			a.refineMu.Lock()
			a.refine.samples = s
			a.refineMu.Unlock()
			a.roundsGauge.Set(float64(s.rounds()))
		}
		logCalibration(log, c, "cached_in", where)
	}()
	return a, nil
}

// logCalibration logs the costs in effect, and where they come from or went.
func logCalibration(log *slog.Logger, c *Costs, where ...any) {
	f := c.DataFactor
	if f <= 0 {
		f = 1 // as applyCosts
	}
	rc := c.Seal[AES128GCM].times(f)
	log.Info("tlscost: calibrated", append([]any{"handshake_factor", c.HandshakeFactor, "data_factor", c.DataFactor,
		"aes128gcm_write_ns_per_byte", c.Seal[AES128GCM].PerByte * 1e9, "aes128gcm_write_ns_per_record", c.Seal[AES128GCM].PerCall * 1e9,
		"aes128gcm_charged_ns_per_byte", rc.PerByte * 1e9, "per_read_us", c.PerRead * 1e6, "interrupted_read_us", c.InterruptedRead * 1e6,
		"write_syscall_us", c.Write.PerCall * 1e6, "min_syscall_us", c.MinSyscall * 1e6}, where...)...)
}

// ProvisionalCosts are charged by a fresh edge until its first calibration on a machine
// is done (a few seconds after start; later starts of the same build read it from the
// cache at once): the figures of the benchmark machine (bench/RESULTS.md), a 2-core KVM
// guest with AES-NI. Handshakes are measured on their thread all the same; what is
// provisional is the factors around them and the record, read and write costs, which a
// machine of another kind may see 2× apart. They are never cached.
func ProvisionalCosts() *Costs {
	aes := Linear{PerCall: 0.15e-6, PerByte: 0.2e-9}
	chacha := Linear{PerCall: 0.25e-6, PerByte: 0.45e-9}
	return &Costs{
		Seal:                map[string]Linear{AES128GCM: aes, AES256GCM: aes.times(1.1), ChaCha20Poly1305: chacha},
		Open:                map[string]Linear{AES128GCM: aes, AES256GCM: aes.times(1.1), ChaCha20Poly1305: chacha},
		Write:               Linear{PerCall: 5e-6},
		MinSyscall:          1.5e-6,
		HandshakeFactor:     1.6,
		DataFactor:          1.7,
		PerRead:             2e-6,
		InterruptedRead:     2e-6,
		HandshakeAllocBytes: 55 << 10,
	}
}

// Calibrated is closed once the start-up calibration has been applied (at once when the
// costs were given in Options). A nil Accountant is never calibrated.
func (a *Accountant) Calibrated() <-chan struct{} {
	if a.calibrated == nil {
		done := make(chan struct{})
		close(done)
		return done
	}
	return a.calibrated
}

// applyCosts makes c the costs charged from now on, and shows the record costs.
func (a *Accountant) applyCosts(c *Costs) {
	a.costs.Store(c)
	f := c.DataFactor
	if f <= 0 {
		f = 1 // not measured: the record layer alone
	}
	rc := &recordCosts{}
	for i, name := range aeadNames {
		rc.seal[i], rc.open[i] = c.Seal[name].times(f), c.Open[name].times(f)
		a.perByte.WithLabelValues(name, "out").Set(rc.seal[i].PerByte)
		a.perRecord.WithLabelValues(name, "out").Set(rc.seal[i].PerCall)
		a.perByte.WithLabelValues(name, "in").Set(rc.open[i].PerByte)
		a.perRecord.WithLabelValues(name, "in").Set(rc.open[i].PerCall)
	}
	rc.perRead, rc.waitRead = c.PerRead, c.InterruptedRead
	a.perReadGauge.Set(c.PerRead)
	a.waitReadGauge.Set(c.InterruptedRead)
	a.rec.Store(rc)
	a.writeFixed.Store(math.Float64bits(c.Write.PerCall))
}

// newAccountant is New with opts.Costs set (Calibrate uses it, for its own handshakes).
func newAccountant(opts Options, reg prometheus.Registerer) (*Accountant, error) {
	a := &Accountant{
		timeout:     opts.HandshakeTimeout,
		maxAppWrite: opts.MaxAppWrite,
		log:         opts.Logger,
	}
	a.readAhead.New = func() any { b := make([]byte, readAheadSize); return &b }
	a.cipherNames = cipherLabels()
	a.tailWarmup, a.tailEvery = tailWarmup, tailSampleEvery
	if a.maxAppWrite <= 0 {
		a.maxAppWrite = DefaultMaxAppWrite
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}

	a.handshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeproxy_tls_handshakes_total",
		Help: "TLS handshakes, by result (ok, error), version (1.2, 1.3, none), resumed (true, false), key type of the certificate used (ecdsa, rsa, ed25519, none: resumed or failed before a certificate was chosen) and cipher suite (its IANA name; none before one was chosen).",
	}, []string{"result", "version", "resumed", "key", "cipher"})
	a.handshakeCPU = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "edgeproxy_tls_handshake_cpu_seconds",
		Help:    "CPU time of each TLS handshake on the thread that ran it (CLOCK_THREAD_CPUTIME_ID), excluding time blocked on the network (the part after the client's second flight arrives is measured on one handshake in 8 and the mean of those is used on the others); labels as edgeproxy_tls_handshakes_total.",
		Buckets: HandshakeCPUBuckets,
	}, []string{"result", "version", "resumed", "key", "cipher"})
	a.handshakeWall = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "edgeproxy_tls_handshake_duration_seconds",
		Help:    "Wall time of each TLS handshake, from accept to its end (round trips and client think time included).",
		Buckets: prometheus.ExponentialBuckets(250e-6, 2, 16),
	})
	a.handshakeBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeproxy_tls_handshake_bytes_total",
		Help: "Bytes on the wire during TLS handshakes, by direction (in, out).",
	}, []string{"direction"})
	recordBytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeproxy_tls_record_bytes_total",
		Help: "Ciphertext bytes on the wire in TLS records after the handshake (headers included), by direction (in: decrypted, out: encrypted).",
	}, []string{"direction"})
	recordCPU := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeproxy_tls_record_cpu_seconds_total",
		Help: "CPU time charged to TLS records after the handshake: the calibrated cost of each record (edgeproxy_tls_record_cpu_seconds_per_byte and _per_record) plus the measured cost of each write(2) TLS added, by direction.",
	}, []string{"direction"})
	a.extraWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "edgeproxy_tls_extra_writes_total",
		Help: "write(2) calls TLS made that plain HTTP would not have: records cut from a larger write, close_notify alerts.",
	})
	a.cpuTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "edgeproxy_tls_cpu_seconds_total",
		Help: "CPU time this process spends because it terminates TLS: handshakes (measured, failed ones included), records (costed) and the garbage collector's share (edgeproxy_tls_gc_cpu_seconds_total).",
	})
	a.gcCPU = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "edgeproxy_tls_gc_cpu_seconds_total",
		Help: "Garbage collector CPU charged to TLS (part of edgeproxy_tls_cpu_seconds_total): the collector's CPU times the share of all bytes allocated that handshakes allocated.",
	})
	a.recordBytesIn, a.recordBytesOut = recordBytes.WithLabelValues("in"), recordBytes.WithLabelValues("out")
	a.recordCPUIn, a.recordCPUOut = recordCPU.WithLabelValues("in"), recordCPU.WithLabelValues("out")
	a.hsBytesIn, a.hsBytesOut = a.handshakeBytes.WithLabelValues("in"), a.handshakeBytes.WithLabelValues("out")

	a.perByte = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "edgeproxy_tls_record_cpu_seconds_per_byte",
		Help: "CPU charged per plaintext byte of a TLS record, by aead and direction (out: write, in: read): the record layer's cost (tls.Conn.Write: seal, copy, framing; tls.Conn.Read: open, copy out) measured on this machine at start-up, times what TLS adds to moving data around it, measured at start-up against a client process (the data factor logged at start-up).",
	}, []string{"aead", "direction"})
	a.perRecord = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "edgeproxy_tls_record_cpu_seconds_per_record",
		Help: "Fixed CPU charged per TLS record, measured as edgeproxy_tls_record_cpu_seconds_per_byte, by aead and direction.",
	}, []string{"aead", "direction"})
	a.perReadGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "edgeproxy_tls_read_cpu_seconds",
		Help: "Fixed CPU charged per read that returned data on a TLS connection after its handshake (a request, mostly): what TLS adds per read beyond its records, measured at start-up against a client process with small kept-alive exchanges.",
	})
	a.waitReadGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "edgeproxy_tls_interrupted_read_cpu_seconds",
		Help: "Fixed CPU charged per read on a TLS connection that its deadline ended before data came (net/http's HTTP/1.1 server makes one per request, on a goroutine whose stack grows through crypto/tls), measured at start-up against the same read on a plain connection.",
	})
	a.roundsGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "edgeproxy_tls_calibration_rounds",
		Help: "Rounds of kept-alive exchanges that edgeproxy_tls_record_cpu_seconds_per_byte and edgeproxy_tls_read_cpu_seconds are fitted from: those of the first start-up of this build on this machine, then more measured while the process is idle (Refine), kept in the calibration cache; 0 for costs not calibrated here.",
	})
	a.applyCosts(opts.Costs)
	writeCost := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgeproxy_tls_extra_write_cpu_seconds",
		Help: "CPU cost of one write(2) on the TLS connections (the fixed part, measured on a sample of real writes), charged for each extra write.",
	}, a.writeCost)

	for _, c := range []prometheus.Collector{a.handshakes, a.handshakeCPU, a.handshakeWall, a.handshakeBytes,
		recordBytes, recordCPU, a.extraWrites, newGCShare(a), a.perByte, a.perRecord, a.perReadGauge, a.waitReadGauge, a.roundsGauge, writeCost} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// writeSampleEvery: one write in this many after handshakes is timed on its thread (two
// reads of the thread clock, each a system call).
const writeSampleEvery = 64

// sampleWrite writes p to w and times the write(2) on the thread CPU clock; it feeds the
// fixed per-write cost: what the write cost less what copying its bytes costs (the
// per-byte slope from Calibrate, which is stable where the fixed part is not: on loopback
// the fixed part includes waking the receiver and running its TCP input, on a NIC the
// driver). An exponentially weighted mean follows the machine's current load.
func (a *Accountant) sampleWrite(w net.Conn, p []byte) (int, error) {
	runtime.LockOSThread()
	t0 := threadCPU()
	n, err := w.Write(p)
	d := float64(threadCPU()-t0) / 1e9
	runtime.UnlockOSThread()
	if err != nil || n == 0 || d <= 0 {
		return n, err
	}
	x := max(0, d-a.costs.Load().Write.PerByte*float64(n))
	k := a.writeN.Add(1)
	for {
		old := a.writeFixed.Load()
		cur := math.Float64frombits(old)
		next := cur + (x-cur)/float64(min(k, 256))
		if a.writeFixed.CompareAndSwap(old, math.Float64bits(next)) {
			return n, err
		}
	}
}

// writeCost is the current fixed CPU cost of one write(2), seconds.
func (a *Accountant) writeCost() float64 { return math.Float64frombits(a.writeFixed.Load()) }

// tlsAllocBytes is what the handshakes so far have allocated, as calibrated.
func (a *Accountant) tlsAllocBytes() float64 {
	return float64(a.okHandshakes.Load()) * float64(a.costs.Load().HandshakeAllocBytes)
}

// versionLabel is the version label value of a negotiated version (0: none).
func versionLabel(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS13:
		return "1.3"
	case 0:
		return "none"
	}
	return "other"
}

// cipherLabels maps each cipher suite crypto/tls knows to its cipher label value, its
// IANA name (tls.CipherSuiteName builds the list of suites anew on every call: an
// allocation per handshake). The values seen are the suites the server's configuration
// allows: a handful.
func cipherLabels() map[uint16]string {
	names := map[uint16]string{0: "none"} // no suite chosen yet
	for _, s := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		names[s.ID] = s.Name
	}
	return names
}

// cipherLabel is the cipher label value of a negotiated suite.
func (a *Accountant) cipherLabel(id uint16) string {
	if name, ok := a.cipherNames[id]; ok {
		return name
	}
	return "other"
}

// keyType is the key label value of a certificate.
func keyType(cert *tls.Certificate) string {
	var pub crypto.PublicKey
	switch k := cert.PrivateKey.(type) {
	case *ecdsa.PrivateKey:
		return "ecdsa"
	case *rsa.PrivateKey:
		return "rsa"
	case ed25519.PrivateKey:
		return "ed25519"
	case crypto.Signer:
		pub = k.Public()
	}
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return "ecdsa"
	case *rsa.PublicKey:
		return "rsa"
	case ed25519.PublicKey:
		return "ed25519"
	}
	return "other"
}
