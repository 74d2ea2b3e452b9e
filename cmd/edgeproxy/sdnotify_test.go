package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// Under systemd (Type=notify) `edgeproxy run` sends READY=1 once its listeners are bound,
// so that `systemctl start` returns when the edge serves, and STOPPING=1 when SIGTERM
// starts the drain.
func TestRun_NotifiesSystemd(t *testing.T) {
	bin := testutil.BuildEdgeproxy(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// next returns the next notification other than a STATUS= line.
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no notification: %v", err)
			}
			if msg := string(buf[:n]); !strings.HasPrefix(msg, "STATUS=") {
				return msg
			}
		}
	}

	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(backend.Close)
	https := testutil.LoopbackAddr(t, "127.0.0.1")
	file := filepath.Join(t.TempDir(), "edge.yaml")
	writeHealthcheckConfig(t, file, "listen: {https: \""+https+"\"}\n"+
		"tls: {self_signed: true}\n"+
		"pool: {targets: [\""+backend.Listener.Addr().String()+"\"]}\n"+
		"limits: {shutdown_timeout: 5s}\n")
	edge := testutil.StartProcWith(t, testutil.ProcOptions{Env: []string{"NOTIFY_SOCKET=" + sock}}, bin, "run", "-config", file)

	if got := next(); got != "READY=1" {
		t.Fatalf("first notification: got %q; want READY=1", got)
	}
	// READY means bound: a connection made now is accepted.
	c, err := net.DialTimeout("tcp", https, 2*time.Second)
	if err != nil {
		t.Fatalf("after READY=1: %v", err)
	}
	c.Close()

	if err := edge.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "STOPPING=1" {
		t.Errorf("after SIGTERM: got %q; want STOPPING=1", got)
	}
	if code, err := edge.Wait(15 * time.Second); err != nil || code != 0 {
		t.Errorf("edge after SIGTERM: exit code %d, %v; want 0", code, err)
	}
}
