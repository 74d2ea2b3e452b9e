package tlsserve

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener counts the writes made on the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, writes: &l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// The records of one 64 KiB write made in a batch leave in one system call, and arrive
// whole; outside a batch each record is a write of its own, as crypto/tls makes them.
func TestListener_BatchWritesTheRecordsOfAWriteAtOnce(t *testing.T) {
	srv := New(Settings{Template: selfSigned(t)})
	inner := &countingListener{Listener: listen(t)}
	ln := srv.Listener(inner)
	defer ln.Close()
	body := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB: four full records
	type result struct {
		batched, unbatched int64
		err                error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := Handshake(tc); err != nil {
			done <- result{err: err}
			return
		}
		b, ok := tc.NetConn().(interface {
			BeginBatch()
			EndBatch() error
		})
		if !ok {
			t.Error("the listener's connections have no write batching")
			done <- result{}
			return
		}
		var r result
		w0 := inner.writes.Load()
		b.BeginBatch()
		_, err = tc.Write(body)
		if berr := b.EndBatch(); err == nil {
			err = berr
		}
		r.batched = inner.writes.Load() - w0
		w0 = inner.writes.Load()
		if _, werr := tc.Write(body); err == nil {
			err = werr
		}
		r.unbatched = inner.writes.Load() - w0
		r.err = err
		done <- r
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", inner.Addr().String(), client(0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 2*len(body))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(body)], body) || !bytes.Equal(got[len(body):], body) {
		t.Error("the bytes arrived changed")
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.batched != 1 {
		t.Errorf("a batched 64 KiB write made %d writes; want 1", r.batched)
	}
	if r.unbatched < 4 {
		t.Errorf("an unbatched 64 KiB write made %d writes; want one per record, 4 or more", r.unbatched)
	}
}
