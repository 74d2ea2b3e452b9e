//go:build !linux

package sysconn

import "net"

// Wrap returns c: raw system calls are used on Linux only.
func Wrap(c net.Conn) net.Conn { return c }

// Listener returns ln.
func Listener(ln net.Listener) net.Listener { return ln }
