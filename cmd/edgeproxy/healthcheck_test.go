package main

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

func TestHealthzURL(t *testing.T) {
	tests := []struct {
		addr, want, wantErr string
	}{
		{addr: "127.0.0.1:9180", want: "http://127.0.0.1:9180/healthz"},
		{addr: ":9180", want: "http://127.0.0.1:9180/healthz"},
		{addr: "0.0.0.0:9180", want: "http://127.0.0.1:9180/healthz"},
		{addr: "[::]:9180", want: "http://127.0.0.1:9180/healthz"},
		{addr: "[::1]:9180", want: "http://[::1]:9180/healthz"},
		{addr: "localhost:9180", want: "http://localhost:9180/healthz"},
		{addr: "", wantErr: "listen.metrics is empty"},
		{addr: "127.0.0.1:0", wantErr: "port 0"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got, err := healthzURL(tt.addr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("got %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// Without listen.metrics there is nothing to ask; the message says what to set.
func TestHealthcheck_NoMetricsListener(t *testing.T) {
	file := filepath.Join(t.TempDir(), "edge.yaml")
	writeHealthcheckConfig(t, file, "tls: {self_signed: true}\npool: {targets: [\"127.0.0.1:8000\"]}\n")
	var stdout, stderr bytes.Buffer
	if code := mainArgs([]string{"healthcheck", "-config", file}, &stdout, &stderr); code != 1 {
		t.Errorf("got exit code %d; want 1", code)
	}
	if !strings.Contains(stderr.String(), "listen.metrics is empty") {
		t.Errorf("got stderr %q; want it to name listen.metrics", stderr.String())
	}
}

// The Docker HEALTHCHECK: exit 0 while the edge serves, non-zero once it has stopped.
func TestHealthcheck_RunningAndStopped(t *testing.T) {
	bin := testutil.BuildEdgeproxy(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(backend.Close)
	metrics := testutil.LoopbackAddr(t, "127.0.0.1")
	file := filepath.Join(t.TempDir(), "edge.yaml")
	writeHealthcheckConfig(t, file, "listen:\n"+
		"  https: \""+testutil.LoopbackAddr(t, "127.0.0.1")+"\"\n"+
		"  metrics: \""+metrics+"\"\n"+
		"tls: {self_signed: true}\n"+
		"pool:\n  targets: [\""+backend.Listener.Addr().String()+"\"]\n"+
		"limits: {shutdown_timeout: 5s}\n")

	edge := testutil.StartProc(t, bin, "run", "-config", file)
	testutil.WaitTCP(t, metrics, 10*time.Second)

	code, out := runHealthcheck(t, bin, file)
	if code != 0 {
		t.Fatalf("against a running edge: got exit code %d; want 0\n%s", code, out)
	}
	if !strings.Contains(out, "ok: GET http://"+metrics+"/healthz: 200 OK") {
		t.Errorf("got output %q; want the URL and 200 OK", out)
	}

	if err := edge.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := edge.Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("edge after SIGTERM: exit code %d, %v; want 0", code, err)
	}
	code, out = runHealthcheck(t, bin, file)
	if code == 0 {
		t.Fatalf("against a stopped edge: got exit code 0; want non-zero\n%s", out)
	}
	if !strings.Contains(out, "connection refused") {
		t.Errorf("got output %q; want the reason (connection refused)", out)
	}
}

func runHealthcheck(t *testing.T, bin, file string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, "healthcheck", "-config", file, "-timeout", "5s")
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &exitErr):
		return exitErr.ExitCode(), string(out)
	}
	t.Fatalf("running %s healthcheck: %v", bin, err)
	return -1, ""
}

func writeHealthcheckConfig(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
