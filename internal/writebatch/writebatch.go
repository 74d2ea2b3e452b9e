// Package writebatch gathers the writes made to a connection between two calls into one.
//
// It sits under a server's *tls.Conn (tlsserve's listener, and the TLS cost calibration's,
// which serves as the edge does). crypto/tls writes every record with a system call of its
// own, so a 64 KiB response written in one tls.Conn.Write costs four write(2) calls where
// plain HTTP makes one. Between BeginBatch and EndBatch the records are gathered and leave
// in one write; outside a batch, writes pass straight through (the handshake, alerts,
// small responses). The fast path batches the large body writes it makes (fastpath:
// writeBody).
package writebatch

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
)

// Conn is a connection whose writes can be batched. The zero value with Conn set is
// ready to use.
//
// One goroutine uses a connection's batch: the one that serves it, which both writes
// through the *tls.Conn and begins and ends the batch.
type Conn struct {
	net.Conn
	buf      *[]byte // the batch, from batchPool, while batching
	batching bool
}

// maxBatch bounds a batch: a longer one is written out as it fills. It holds a 64 KiB
// write of the application as four full records with their headers and AEAD overheads.
const maxBatch = 64<<10 + 4*(5+256)

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, maxBatch); return &b }}

// NetConn returns the connection underneath, as tls.Conn.NetConn does: the TLS cost
// accounting finds its own wrapper through it.
func (b *Conn) NetConn() net.Conn { return b.Conn }

// BeginBatch starts gathering writes.
func (b *Conn) BeginBatch() {
	b.batching = true
	if b.buf == nil {
		b.buf = batchPool.Get().(*[]byte)
	}
}

// EndBatch writes what was gathered in one write and stops gathering. Its error is the
// write's: the *tls.Conn above was told its writes succeeded.
func (b *Conn) EndBatch() error {
	b.batching = false
	if b.buf == nil {
		return nil
	}
	err := b.flush()
	batchPool.Put(b.buf)
	b.buf = nil
	return err
}

func (b *Conn) Write(p []byte) (int, error) {
	if !b.batching {
		return b.Conn.Write(p)
	}
	if len(*b.buf)+len(p) > maxBatch {
		if err := b.flush(); err != nil {
			return 0, err
		}
		if len(p) > maxBatch {
			return b.Conn.Write(p)
		}
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

func (b *Conn) flush() error {
	if len(*b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(*b.buf)
	*b.buf = (*b.buf)[:0]
	return err
}

// Under returns the batching under c, a server's *tls.Conn from a listener that puts a
// Conn there (tlsserve's, the TLS cost calibration's), and nil for any other connection.
func Under(c net.Conn) *Conn {
	if tc, ok := c.(*tls.Conn); ok {
		b, _ := tc.NetConn().(*Conn)
		return b
	}
	return nil
}

// maxRecordPlaintext is the most one TLS record carries.
const maxRecordPlaintext = 16 << 10

// Write writes p to w, the *tls.Conn above b: in one batch when p is longer than one
// record and b is not nil (Under), so that its records leave in one system call, as plain
// HTTP's bytes do; as an ordinary write otherwise.
func Write(w io.Writer, b *Conn, p []byte) error {
	if b == nil || len(p) <= maxRecordPlaintext {
		_, err := w.Write(p)
		return err
	}
	b.BeginBatch()
	_, err := w.Write(p)
	if berr := b.EndBatch(); err == nil {
		err = berr
	}
	return err
}
