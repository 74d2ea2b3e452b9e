//go:build linux

package sysconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// pair returns a wrapped connection and the plain other end of a loopback TCP connection.
func pair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	w, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatal("Wrap did not wrap a *net.TCPConn")
	}
	t.Cleanup(func() { _, _ = w.Close(), peer.Close() })
	return w, peer
}

// Bytes go both ways intact, a write larger than the socket's buffers waits for the
// reader and completes, and the peer's close reads as io.EOF.
func TestConn_CarriesBytesBothWaysAndReadsEOF(t *testing.T) {
	c, peer := pair(t)
	big := bytes.Repeat([]byte("edgeproxy"), 1<<20) // 9 MiB: more than any socket buffer
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(big))))
		got <- b
	}()
	if n, err := c.Write(big); err != nil || n != len(big) {
		t.Fatalf("Write: %d, %v; want %d, nil", n, err, len(big))
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("peer read %d bytes, not what was written", len(b))
	}
	if _, err := peer.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("read %q, %v", buf, err)
	}
	_ = peer.Close()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after the peer closed: %d, %v; want 0, io.EOF", n, err)
	}
}

// A read waits in the netpoller and ends with a timeout at its deadline, as net's does;
// the connection reads on afterwards.
func TestConn_ReadEndsAtItsDeadline(t *testing.T) {
	c, peer := pair(t)
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v; want a deadline error", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("read error %v is not a net.Error timeout", err)
	}
	if d := time.Since(start); d < 15*time.Millisecond {
		t.Errorf("read returned after %v, before its deadline", d)
	}
	_ = c.SetReadDeadline(time.Time{})
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Fatalf("read after the deadline was cleared: %d, %v", n, err)
	}
}

// A write to a peer that does not read fills the buffers and ends at the write deadline,
// having written part of it.
func TestConn_WriteEndsAtItsDeadline(t *testing.T) {
	c, _ := pair(t)
	_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := c.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write: %v; want a deadline error", err)
	}
	if n <= 0 || n >= 64<<20 {
		t.Errorf("wrote %d bytes before the deadline; want part of it", n)
	}
}

// Reading or writing a closed connection fails with net.ErrClosed, without a hang.
func TestConn_ClosedConnectionFails(t *testing.T) {
	c, _ := pair(t)
	_ = c.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v; want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v; want net.ErrClosed", err)
	}
}

// A connection that is not a *net.TCPConn is returned as it is.
func TestWrap_LeavesOtherConnectionsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Wrap(a); got != a {
		t.Errorf("Wrap(net.Pipe end) = %T; want it unchanged", got)
	}
}

// A read and a write that succeed allocate nothing: the fast path's guard of zero
// allocations per request covers the connections under it.
func TestConn_ReadAndWriteAllocateNothing(t *testing.T) {
	c, peer := pair(t)
	msg := []byte("0123456789")
	buf := make([]byte, len(msg))
	pbuf := make([]byte, len(msg))
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(peer, pbuf); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.Write(pbuf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per write and read; want 0", allocs)
	}
}

// A connection the peer resets reads as net's would: an error that is
// syscall.ECONNRESET underneath, inside a *net.OpError.
func TestConn_ResetByPeerIsNetsError(t *testing.T) {
	c, peer := pair(t)
	if err := peer.(*net.TCPConn).SetLinger(0); err != nil { // close with RST
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = peer.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var oe *net.OpError
	if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &oe) {
		t.Errorf("read after a reset: %v (%T); want ECONNRESET in a *net.OpError", err, err)
	}
}
