package tlscost

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// The record layer is calibrated whole, not just its AEAD: a record written through
// tls.Conn.Write also costs the copy of its plaintext into crypto/tls's output buffer, the
// record header, nonce and sequence bookkeeping, the output lock and the call down to the
// net.Conn; a record read costs the header parse, the copy out of the input buffer and the
// input lock, on top of the AEAD's open. measureRecordLayer times exactly that on this
// machine: a real tls.Conn whose net.Conn, once the handshake is done, discards what it is
// given (writes) or replays records sealed by the peer from memory (reads), so that only
// what TLS adds is on the clock, not the system call that plain HTTP makes as well.

// memConn is a net.Conn that runs the handshake over inner and then, once mem is set,
// discards writes and serves reads from src.
type memConn struct {
	net.Conn
	mem  bool
	src  []byte // reads in memory mode
	sink []byte // writes in memory mode, when keep is set
	keep bool
}

func (m *memConn) Read(p []byte) (int, error) {
	if !m.mem {
		return m.Conn.Read(p)
	}
	if len(m.src) == 0 {
		return 0, io.EOF
	}
	n := copy(p, m.src)
	m.src = m.src[n:]
	return n, nil
}

func (m *memConn) Write(p []byte) (int, error) {
	if !m.mem {
		return m.Conn.Write(p)
	}
	if m.keep {
		m.sink = append(m.sink, p...)
	}
	return len(p), nil
}

// recordSuites are the TLS 1.2 suites calibrated for each AEAD. TLS 1.3 does not let a
// server choose among its AEADs (crypto/tls picks by hardware support), and its record
// layer does the same work per record (one more byte of content type, no explicit nonce).
var recordSuites = map[string]uint16{
	AES128GCM:        tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	AES256GCM:        tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	ChaCha20Poly1305: tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
}

// recordBench is a server tls.Conn over a memConn, with a client to seal records for it
// to read. One goroutine uses it at a time.
type recordBench struct {
	srv, cli *tls.Conn
	sc, cc   *memConn
	buf      []byte
}

// newRecordBench handshakes a pair of connections for aead and takes both past dynamic
// record sizing, as on a connection that has carried a response or two: the records
// measured are as large as asked.
func newRecordBench(cert tls.Certificate, aead string) (*recordBench, error) {
	a, b := net.Pipe()
	sc, cc := &memConn{Conn: a}, &memConn{Conn: b}
	suite := []uint16{recordSuites[aead]}
	srv := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS12,
		CipherSuites: suite, SessionTicketsDisabled: true})
	cli := tls.Client(cc, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, CipherSuites: suite})
	_ = a.SetDeadline(time.Now().Add(5 * time.Second))
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	done := make(chan error, 1)
	go func() { done <- cli.Handshake() }()
	err := srv.Handshake()
	if cerr := <-done; err == nil {
		err = cerr
	}
	_, _ = a.Close(), b.Close()
	if err != nil {
		return nil, err
	}
	if srv.ConnectionState().CipherSuite != suite[0] {
		return nil, errors.New("suite not negotiated")
	}
	sc.mem, cc.mem, cc.keep = true, true, true
	rb := &recordBench{srv: srv, cli: cli, sc: sc, cc: cc, buf: make([]byte, recordSizeBoostThreshold+fullRecord)}
	if _, err := srv.Write(rb.buf); err != nil {
		return nil, err
	}
	if _, err := cli.Write(rb.buf); err != nil {
		return nil, err
	}
	sc.src, cc.sink = cc.sink, nil
	for len(sc.src) > 0 {
		if _, err := srv.Read(rb.buf); err != nil {
			return nil, err
		}
	}
	return rb, nil
}

// measure fits the cost per record of tls.Conn.Write (seal) and tls.Conn.Read (open)
// through records of smallRecord and fullRecord plaintext bytes: each point is the
// median over rounds of the mean cost per record in a round, the typical cost under
// what the machine is doing now rather than the luckiest. A round writes (and reads)
// iters records of the small size and iters/8 full ones. The caller is locked to its
// thread.
func (rb *recordBench) measure(rounds, iters int) (seal, open Linear, err error) {
	writeAt := func(n, iters int) float64 {
		return medianRound(rounds, iters, func() { _, _ = rb.srv.Write(rb.buf[:n]) })
	}
	// readAt has the client seal the records of each round into memory, out of the
	// clock, and times the server reading them back in order.
	readAt := func(n, iters int) (float64, error) {
		var per []float64
		for range rounds {
			rb.cc.sink = rb.cc.sink[:0]
			for range iters {
				if _, err := rb.cli.Write(rb.buf[:n]); err != nil {
					return 0, err
				}
			}
			rb.sc.src = rb.cc.sink
			t0 := threadCPU()
			for range iters {
				if _, err := io.ReadFull(rb.srv, rb.buf[:n]); err != nil {
					return 0, err
				}
			}
			per = append(per, float64(threadCPU()-t0)/1e9/float64(iters))
		}
		if len(rb.sc.src) != 0 {
			return 0, fmt.Errorf("%d bytes of records left unread", len(rb.sc.src))
		}
		return median(per), nil
	}
	full := max(1, iters/8)
	s1, s2 := writeAt(smallRecord, iters), writeAt(fullRecord, full)
	o1, err := readAt(smallRecord, iters)
	if err != nil {
		return seal, open, err
	}
	o2, err := readAt(fullRecord, full)
	if err != nil {
		return seal, open, err
	}
	return fit(smallRecord, s1, fullRecord, s2), fit(smallRecord, o1, fullRecord, o2), nil
}

// medianRound runs f iters times per round and returns the median over rounds of the
// thread CPU seconds per call. The caller is locked to its thread.
func medianRound(rounds, iters int, f func()) float64 {
	per := make([]float64, 0, rounds)
	for range rounds {
		t0 := threadCPU()
		for range iters {
			f()
		}
		per = append(per, float64(threadCPU()-t0)/1e9/float64(iters))
	}
	return median(per)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
