//go:build linux

// Package sysconn makes a TCP connection's reads and writes with raw system calls, which
// the Go scheduler is not told about, instead of net's ordinary ones.
//
// Why: during an ordinary system call the goroutine's P (the scheduler's right to run Go
// code) is left where the runtime's monitor (sysmon) may take it. A read or write on a loopback TCP socket runs the
// receiver's TCP input inline and takes 10–30 µs on a KVM guest, longer than the monitor's
// 20 µs tick; with every P busy, the monitor then takes the P away, wakes another thread
// to run it, and keeps polling every 20 µs instead of backing off. A profile of the fast
// path serving 1 KiB keep-alive requests over TLS had the monitor (runtime.sysmon and
// its usleep) at 18% of the edge's CPU and the futex wake-ups of those hand-offs at 12%.
// A read or write on a non-blocking socket never blocks: it returns EAGAIN, and the
// connection then waits in the netpoller as net's own would (syscall.RawConn). So the
// P can stay with the goroutine for the call.
//
// The cost is that a P stays busy for the length of one call, and a stop-the-world of the
// garbage collector waits for it: tens of µs at most.
package sysconn

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Conn is a *net.TCPConn whose Read and Write use raw system calls. Everything else
// (deadlines, Close, CloseWrite, ReadFrom for splice(2) and sendfile(2)) is the
// TCPConn's own.
type Conn struct {
	*net.TCPConn
	raw syscall.RawConn

	// The operands and results of the call in progress, one set per direction, so that
	// the callbacks given to raw are method values made once per connection and a call
	// allocates nothing. A mutex per direction keeps concurrent Reads (or Writes) apart,
	// as net's own per-direction lock does.
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(fd uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

// Wrap returns c with raw reads and writes if it is a *net.TCPConn, and c itself
// otherwise.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	s := &Conn{TCPConn: tc, raw: raw}
	s.readFn, s.writeFn = s.read, s.write
	return s
}

// NetConn returns the *net.TCPConn underneath (passthrough unwraps connections this way
// for splice(2)).
func (c *Conn) NetConn() net.Conn { return c.TCPConn }

// Read reads as net.Conn.Read does: what has arrived, waiting in the netpoller (with the
// read deadline) while nothing has.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerr = p, 0, 0
	err := c.raw.Read(c.readFn)
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, err // closed, or the deadline passed: net's *OpError
	case c.rerr != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", c.rerr)}
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *Conn) read(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch errno {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // nothing yet: wait in the netpoller
		}
		c.rerr = errno
		return true
	}
}

// Write writes all of p as net.Conn.Write does, waiting in the netpoller (with the write
// deadline) while the socket's buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werr = p, 0, 0
	err := c.raw.Write(c.writeFn)
	n := c.wn
	c.wbuf = nil
	switch {
	case err != nil:
		return n, err
	case c.werr != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", c.werr)}
	}
	return n, nil
}

func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch errno {
		case 0:
			c.wn += int(n)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // the socket's buffer is full: wait until it drains
		}
		c.werr = errno
		return true
	}
	return true
}

// Listener returns ln with the connections it accepts wrapped (Wrap).
func Listener(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}
