package testutil

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeTB records Fatalf and Skipf instead of ending the real test.
type fakeTB struct {
	testing.TB
	fatal, skip string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// runFake runs fn with a fakeTB in its own goroutine, so Goexit ends only it.
func runFake(t *testing.T, fn func(tb testing.TB)) *fakeTB {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}

func TestRequireTool(t *testing.T) {
	t.Setenv("CI", "")
	p := RequireTool(t, "sh")
	if !filepath.IsAbs(p) {
		t.Errorf("RequireTool(sh) = %q, want an absolute path", p)
	}

	const absent = "edgeproxy-no-such-tool"
	f := runFake(t, func(tb testing.TB) { RequireTool(tb, absent) })
	if f.skip == "" || f.fatal != "" {
		t.Errorf("outside CI: skip=%q fatal=%q, want a skip", f.skip, f.fatal)
	}

	t.Setenv("CI", "true")
	f = runFake(t, func(tb testing.TB) { RequireTool(tb, "h2load-but-not") })
	if f.fatal == "" || f.skip != "" {
		t.Errorf("in CI: skip=%q fatal=%q, want a fatal", f.skip, f.fatal)
	}
	f = runFake(t, func(tb testing.TB) {
		if LookTool("wrk") != "" {
			tb.Skipf("wrk installed")
		}
		RequireTool(tb, "wrk")
	})
	if f.skip == "" && !strings.Contains(f.fatal, "apt-get install -y wrk") {
		t.Errorf("fatal message %q does not name the package", f.fatal)
	}
	if h := InstallHint("h2load"); !strings.Contains(h, "nghttp2-client") {
		t.Errorf("InstallHint(h2load) = %q", h)
	}
}

func TestFreePortLoopbackOnly(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		addr := LoopbackAddr(t, ip)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen on LoopbackAddr(%s) = %s: %v", ip, addr, err)
		}
		ln.Close()
	}
	for _, ip := range []string{"10.0.0.1", "0.0.0.0", "example.test"} {
		f := runFake(t, func(tb testing.TB) { FreePort(tb, ip) })
		if f.fatal == "" {
			t.Errorf("FreePort(%q) did not fail", ip)
		}
	}
}

func TestProc(t *testing.T) {
	sh := RequireTool(t, "sh")
	p := StartProc(t, sh, "-c", "echo hello; sleep 0.2; echo ready >&2; exec sleep 30")
	if !p.WaitForOutput("ready", 5*time.Second) {
		t.Fatalf("no ready; output %q", p.Output())
	}
	if got := p.Output(); got != "hello\nready\n" {
		t.Errorf("Output() = %q", got)
	}
	if _, err := p.Wait(50 * time.Millisecond); err == nil {
		t.Errorf("Wait on a running process returned no error")
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(5 * time.Second)
	if err != nil || code != 128+int(syscall.SIGTERM) {
		t.Errorf("Wait after SIGTERM = %d, %v; want 143, nil", code, err)
	}
	if p.Signal(syscall.SIGTERM) == nil {
		t.Errorf("Signal after exit returned no error")
	}

	q := StartProcWith(t, ProcOptions{Env: []string{"EDGE_TEST=x7"}, Dir: t.TempDir()}, sh, "-c", `echo "$EDGE_TEST"; exit 3`)
	if q.WaitForOutput("never printed", 5*time.Second) {
		t.Errorf("WaitForOutput found text never printed")
	}
	code, err = q.Wait(5 * time.Second)
	if err != nil || code != 3 {
		t.Errorf("Wait = %d, %v; want 3, nil", code, err)
	}
	if q.Output() != "x7\n" {
		t.Errorf("Output() = %q", q.Output())
	}
}

func TestWaitHTTP(t *testing.T) {
	ready := time.Now().Add(200 * time.Millisecond)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "app.test" || time.Now().Before(ready) {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	WaitHTTPHost(t, srv.URL, "app.test", nil, http.StatusNoContent, 5*time.Second)
	WaitHTTP(t, srv.URL, srv.Client(), http.StatusServiceUnavailable, 5*time.Second)
	f := runFake(t, func(tb testing.TB) {
		WaitHTTP(tb, srv.URL, nil, http.StatusOK, 300*time.Millisecond)
	})
	if !strings.Contains(f.fatal, "503") {
		t.Errorf("fatal = %q, want the last status", f.fatal)
	}
}
