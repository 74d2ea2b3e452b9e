// Package sdnotify tells systemd about the service's state with the sd_notify protocol:
// one datagram of newline-separated VAR=VALUE assignments sent to the unix datagram socket
// named by $NOTIFY_SOCKET. The unit's Type=notify (or Type=notify-reload, systemd >= 253)
// makes systemd wait for READY=1 before it counts the service as started.
//
// Without $NOTIFY_SOCKET (not under systemd, or a unit of another Type) every function
// does nothing and returns nil, so callers need not check where they run.
//
// See sd_notify(3) and systemd.service(5).
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Notify sends state, one or more newline-separated VAR=VALUE assignments, to
// $NOTIFY_SOCKET. A socket name starting with '@' is a Linux abstract socket (Go's net
// package maps the '@' to the leading NUL byte). It returns nil without the variable.
func Notify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] != '/' && name[0] != '@' {
		// systemd also allows vsock:CID:PORT (for VMs); edgeproxy runs on the host.
		return fmt.Errorf("sdnotify: NOTIFY_SOCKET %q is neither a path nor an abstract socket name", name)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	n, err := conn.Write([]byte(state))
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	if n != len(state) {
		return errors.New("sdnotify: short write to NOTIFY_SOCKET")
	}
	return nil
}

// Ready tells systemd that start-up is complete (READY=1): the listeners are bound and
// requests are served. After a reload it also ends the "reloading" state.
func Ready() error { return Notify("READY=1") }

// Reloading tells systemd that a configuration reload has begun (RELOADING=1), with the
// CLOCK_MONOTONIC time in microseconds (MONOTONIC_USEC) that Type=notify-reload requires
// to match the message to the SIGHUP it sent. Call Ready when the reload has finished,
// whether the new configuration was applied or rejected.
func Reloading() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fmt.Errorf("sdnotify: clock_gettime: %w", err)
	}
	usec := ts.Nano() / 1000
	return Notify("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(usec, 10))
}

// Stopping tells systemd that the service is shutting down (STOPPING=1), so that
// `systemctl status` shows "deactivating" while in-flight requests drain.
func Stopping() error { return Notify("STOPPING=1") }

// Status sets the free-form status line `systemctl status` shows (STATUS=...). Newlines
// would start a new assignment, so they are replaced by spaces.
func Status(s string) error {
	return Notify("STATUS=" + strings.ReplaceAll(s, "\n", " "))
}
