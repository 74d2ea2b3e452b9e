package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// doctor's flags: a bad -public-ip is a usage error (2); a missing configuration is a
// failed check (1); a set-up whose checks pass exits 0 with one line per check.
func TestDoctorCmd(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer backend.Close()
	good := filepath.Join(t.TempDir(), "good.yaml")
	config := fmt.Sprintf("listen: {https: \"127.0.0.1:0\"}\ntls: {self_signed: true}\npool: {targets: [%q]}\n", backend.Listener.Addr().String())
	if err := os.WriteFile(good, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr string
	}{
		{"bad public IP", []string{"-config", good, "-public-ip", "ec2-host"}, 2, nil, `-public-ip "ec2-host" is not an IP address`},
		{"missing config", []string{"-config", filepath.Join(t.TempDir(), "none.yaml")}, 1,
			[]string{"fail  config                    config: open "}, "0 ok, 0 warn, 1 fail"},
		{"all ok", []string{"-config", good, "-public-ip", "203.0.113.7"}, 0,
			[]string{"ok    config  ", "ok    listen.https  ", "ok    target:" + backend.Listener.Addr().String() + "  "}, "3 ok, 0 warn, 0 fail"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := mainArgs(append([]string{"doctor"}, tt.args...), &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit %d; want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			for _, w := range tt.wantStdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}
