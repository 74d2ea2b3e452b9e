package tlscost

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A handshake allocates tens of KiB (key shares, certificate messages, transcripts, the
// tls.Conn and its buffers) that the garbage collector must then trace and sweep on other
// threads, after the handshake: CPU that plain HTTP would not spend, and that no clock on
// the handshake's thread sees. gcShare charges TLS the share of the collector's CPU that
// TLS allocations make up of all allocations: the collector runs a cycle per so many bytes
// allocated, so its work follows bytes allocated.

// measureHandshakeAllocs returns the bytes the server side of one full TLS handshake
// allocates (ECDSA P-256 certificate, Go's default key exchange), measured at start-up with
// the heap profiler recording every allocation, and the profile's stacks telling the
// server's allocations from the client's.
func measureHandshakeAllocs() (int64, error) {
	cert, err := calibrationCert()
	if err != nil {
		return 0, err
	}
	scfg := &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: true}
	ccfg := &tls.Config{InsecureSkipVerify: true}
	before := serverAllocs()
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1 // every allocation, from now on
	const n = 16
	for range n {
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = tls.Client(b, ccfg).Handshake()
		}()
		calibrationServer(a, scfg)
		<-done
		_, _ = a.Close(), b.Close()
	}
	runtime.MemProfileRate = old
	// The profile publishes allocations once the cycles after them have completed.
	runtime.GC()
	runtime.GC()
	got := serverAllocs() - before
	if got <= 0 {
		return 0, errors.New("tlscost: heap profile shows no handshake allocations")
	}
	return got / n, nil
}

// calibrationServer runs one server handshake; its name marks the allocations to count.
//
//go:noinline
func calibrationServer(c net.Conn, cfg *tls.Config) {
	tc := tls.Server(c, cfg)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	_ = tc.Handshake()
}

func serverAllocs() int64 {
	n, _ := runtime.MemProfile(nil, true)
	recs := make([]runtime.MemProfileRecord, n+64)
	n, ok := runtime.MemProfile(recs, true)
	if !ok {
		return 0
	}
	var sum int64
	for _, r := range recs[:n] {
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if strings.HasSuffix(f.Function, "tlscost.calibrationServer") {
				sum += r.AllocBytes
				break
			}
			if !more {
				break
			}
		}
	}
	return sum
}

func calibrationCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tlscost calibration"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// gcShare is a prometheus.Collector for edgeproxy_tls_cpu_seconds_total and
// edgeproxy_tls_gc_cpu_seconds_total: before each collection it charges TLS its share of
// the collector's CPU since the previous one.
type gcShare struct {
	a *Accountant

	// mu guards the readings of the previous update.
	mu          sync.Mutex
	lastGC      float64 // /cpu/classes/gc/total minus mark assists, seconds
	lastAllocs  uint64  // /gc/heap/allocs:bytes
	lastTLSByte float64
	samples     []metrics.Sample
}

func newGCShare(a *Accountant) *gcShare {
	g := &gcShare{a: a, samples: []metrics.Sample{
		{Name: "/cpu/classes/gc/total:cpu-seconds"},
		{Name: "/cpu/classes/gc/mark/assist:cpu-seconds"},
		{Name: "/cpu/classes/gc/pause:cpu-seconds"},
		{Name: "/gc/heap/allocs:bytes"},
	}}
	g.lastGC, g.lastAllocs = g.read()
	return g
}

// read returns the collector's background marking CPU and the bytes allocated so far. Mark
// assists are left out (an assist runs on the allocating goroutine: during a handshake it
// is already in the handshake's thread CPU), and so are pauses, which the runtime counts as
// GOMAXPROCS times their wall time: on a busy machine a descheduled stop-the-world would
// make that a large overestimate.
func (g *gcShare) read() (float64, uint64) {
	metrics.Read(g.samples)
	f := func(i int) float64 {
		if g.samples[i].Value.Kind() == metrics.KindFloat64 {
			return g.samples[i].Value.Float64()
		}
		return 0
	}
	var allocs uint64
	if g.samples[3].Value.Kind() == metrics.KindUint64 {
		allocs = g.samples[3].Value.Uint64()
	}
	return f(0) - f(1) - f(2), allocs
}

func (g *gcShare) update() {
	g.mu.Lock()
	defer g.mu.Unlock()
	gc, allocs := g.read()
	tlsBytes := g.a.tlsAllocBytes()
	dGC, dAllocs, dTLS := gc-g.lastGC, float64(allocs-g.lastAllocs), tlsBytes-g.lastTLSByte
	if dAllocs <= 0 || dGC <= 0 {
		return // no cycle finished since: wait for one, keeping the TLS bytes counted
	}
	g.lastGC, g.lastAllocs, g.lastTLSByte = gc, allocs, tlsBytes
	cpu := dGC * min(1, dTLS/dAllocs)
	g.a.gcCPU.Add(cpu)
	g.a.cpuTotal.Add(cpu)
}

func (g *gcShare) Describe(ch chan<- *prometheus.Desc) {
	g.a.cpuTotal.Describe(ch)
	g.a.gcCPU.Describe(ch)
}

func (g *gcShare) Collect(ch chan<- prometheus.Metric) {
	g.update()
	g.a.cpuTotal.Collect(ch)
	g.a.gcCPU.Collect(ch)
}
