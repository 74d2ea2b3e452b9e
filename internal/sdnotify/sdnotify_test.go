package sdnotify

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listen opens a unixgram socket at name (a path, or "@..." for an abstract socket),
// points NOTIFY_SOCKET at it and returns a function that reads the next datagram.
func listen(t *testing.T, name string) func() string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("reading the notification: %v", err)
		}
		return string(buf[:n])
	}
}

func TestNotify(t *testing.T) {
	next := listen(t, filepath.Join(t.TempDir(), "notify.sock"))
	tests := []struct {
		name string
		send func() error
		want string
	}{
		{"Ready", Ready, "READY=1"},
		{"Stopping", Stopping, "STOPPING=1"},
		{"Status", func() error { return Status("serving 3 targets") }, "STATUS=serving 3 targets"},
		{"Status_Newline", func() error { return Status("reload failed:\nbad.yaml:3:1: x") }, "STATUS=reload failed: bad.yaml:3:1: x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.send(); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if got := next(); got != tt.want {
				t.Errorf("got %q; want %q", got, tt.want)
			}
		})
	}
}

// Type=notify-reload (systemd >= 253) rejects RELOADING=1 without MONOTONIC_USEC, and
// expects the time of CLOCK_MONOTONIC, the clock systemd itself uses.
func TestReloading(t *testing.T) {
	next := listen(t, filepath.Join(t.TempDir(), "notify.sock"))
	before := monotonicUsec(t)
	if err := Reloading(); err != nil {
		t.Fatal(err)
	}
	after := monotonicUsec(t)
	lines := strings.Split(next(), "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("got %q; want RELOADING=1 and MONOTONIC_USEC=N", lines)
	}
	usec, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC: %v", err)
	}
	if usec < before || usec > after {
		t.Errorf("got MONOTONIC_USEC=%d; want between %d and %d", usec, before, after)
	}
}

// systemd passes abstract socket names with a leading '@' (e.g. in containers).
func TestNotify_AbstractSocket(t *testing.T) {
	next := listen(t, fmt.Sprintf("@edgeproxy-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "READY=1" {
		t.Errorf("got %q; want %q", got, "READY=1")
	}
}

func TestNotify_NoSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	for name, f := range map[string]func() error{"Ready": Ready, "Reloading": Reloading, "Stopping": Stopping} {
		if err := f(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: got %v; want nil", name, err)
		}
	}
}

func TestNotify_Errors(t *testing.T) {
	tests := []struct{ name, socket string }{
		{"NoListener", filepath.Join(t.TempDir(), "absent.sock")},
		{"RelativeName", "notify.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NOTIFY_SOCKET", tt.socket)
			err := Ready()
			if err == nil || !strings.HasPrefix(err.Error(), "sdnotify: ") {
				t.Errorf("got %v; want an error starting with \"sdnotify: \"", err)
			}
		})
	}
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}
