// Package testutil holds the helpers that edgeproxy's tests share: finding
// the real tools the tests drive (pebble, wrk, nginx, ...), free and dead
// loopback addresses, throw-away certificates and their PEM files, a log
// buffer to search, a real Django site served by gunicorn, the edgeproxy
// binary built once per test process, and child processes whose output is
// captured. The parts the benchmark commands need too live in its
// subpackage fixture, which does not import testing.
//
// Policy for missing tools: when the environment variable CI is "true" a
// missing tool fails the test (CI must install everything it needs), and the
// failure names the package or command that installs it; elsewhere the test is
// skipped.
//
// Every wait here is bounded in time, and every address is a loopback address
// (127.0.0.0/8 or ::1): helpers refuse anything else.
//
// A typical integration test:
//
//	django := testutil.StartDjango(t, testutil.LoopbackAddr(t, "127.0.0.2"),
//		testutil.DjangoOptions{Instance: "a"})
//	bin := testutil.BuildEdgeproxy(t)
//	edge := testutil.StartProc(t, bin, "run", "-config", cfgPath)
//	testutil.WaitHTTP(t, "https://127.0.0.1:PORT/", client, 200, 10*time.Second)
//	django.Kill() // a backend crash
//
// The Django site (internal/testutil/djangosite, see its README.md) serves
// /, /whoami, /slow, /mixed, /static-marker.js, /post and the admin; it
// needs Debian's python3-django and gunicorn, run by /usr/bin/python3.
package testutil

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil/fixture"
)

// installHints maps a program name to how to install it on Debian.
var installHints = map[string]string{
	"pebble":                   "go install " + PebbleModule + "/cmd/pebble@" + PebbleVersion,
	"pebble-challtestsrv":      "go install " + PebbleModule + "/cmd/pebble-challtestsrv@" + PebbleVersion,
	"wrk":                      "apt-get install -y wrk",
	"h2load":                   "apt-get install -y nghttp2-client",
	"nghttp":                   "apt-get install -y nghttp2-client",
	"hey":                      "apt-get install -y hey",
	"testssl.sh":               "apt-get install -y testssl.sh",
	"testssl":                  "apt-get install -y testssl.sh",
	"nginx":                    "apt-get install -y nginx",
	"haproxy":                  "apt-get install -y haproxy",
	"promtool":                 "apt-get install -y prometheus",
	"prometheus":               "apt-get install -y prometheus",
	"prometheus-node-exporter": "apt-get install -y prometheus-node-exporter",
	"redis-server":             "apt-get install -y redis-server",
	"caddy":                    "go install github.com/caddyserver/caddy/v2/cmd/caddy@v2.11.9",
	"gunicorn":                 "apt-get install -y gunicorn",
	"curl":                     "apt-get install -y curl",
	"openssl":                  "apt-get install -y openssl",
	"chromium":                 "apt-get install -y chromium",
	"systemd-analyze":          "apt-get install -y systemd",
	"docker":                   "apt-get install -y docker.io",
	"podman":                   "apt-get install -y podman",
	"runc":                     "apt-get install -y runc",
	"podman-compose":           "apt-get install -y podman-compose",
	"catatonit":                "apt-get install -y catatonit",
	"dnsname":                  "apt-get install -y golang-github-containernetworking-plugin-dnsname",
	"h2spec":                   "cd .ci/h2spec && go install tool (h2spec pinned with its dependencies)",
	"go":                       "the Go toolchain (see go.mod for the version)",
}

// InCI reports whether the tests run in CI, that is whether the environment
// variable CI is "true" (or another value strconv.ParseBool takes as true).
func InCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// missing fails the test in CI and skips it elsewhere.
func missing(t testing.TB, what, hint string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s is required in CI but missing; install it with: %s", what, hint)
	}
	t.Skipf("%s not available (install with: %s)", what, hint)
}

// InstallHint returns how to install the program name on Debian, as printed
// by RequireTool.
func InstallHint(name string) string {
	if h, ok := installHints[filepath.Base(name)]; ok {
		return h
	}
	return "apt-get install -y " + filepath.Base(name) + " (or the package that ships it: apt-file search bin/" + filepath.Base(name) + ")"
}

// extraBinDirs are searched after PATH.
func extraBinDirs() []string {
	dirs := []string{"/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/sbin", "/bin"}
	if gp := os.Getenv("GOPATH"); gp != "" {
		for _, p := range filepath.SplitList(gp) {
			dirs = append(dirs, filepath.Join(p, "bin"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	return dirs
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// LookTool returns the absolute path of the program name, looked up in PATH
// and then in /usr/bin, /usr/sbin, /usr/local/bin, $GOPATH/bin and ~/go/bin,
// or "" when it is nowhere. A name containing a slash is taken as a path.
func LookTool(name string) string {
	if strings.ContainsRune(name, '/') {
		if abs, err := filepath.Abs(name); err == nil && isExecutable(abs) {
			return abs
		}
		return ""
	}
	if p, err := exec.LookPath(name); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	for _, d := range extraBinDirs() {
		if p := filepath.Join(d, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

// RequireTool returns the absolute path of the program name (see LookTool).
// When the program is missing it fails the test in CI (naming the package or
// command that installs it) and skips the test elsewhere.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	if p := LookTool(name); p != "" {
		return p
	}
	missing(t, "program "+strconv.Quote(name), InstallHint(name))
	return ""
}

// checkLoopback fails the test unless ip is a loopback IP address.
func checkLoopback(t testing.TB, ip string) net.IP {
	t.Helper()
	parsed := net.ParseIP(strings.Trim(ip, "[]"))
	if parsed == nil || !parsed.IsLoopback() {
		t.Fatalf("testutil: %q is not a loopback IP address; tests use only 127.0.0.0/8 and ::1", ip)
	}
	return parsed
}

// FreePort returns a TCP port that is free on the loopback IP ip (such as
// "127.0.0.1", "127.0.0.2" or "::1"), found by listening on port 0 and
// closing the listener. Another process may take the port in between; tests
// that start servers on it should fail clearly when binding fails.
func FreePort(t testing.TB, ip string) int {
	t.Helper()
	addr, _ := netip.AddrFromSlice(checkLoopback(t, ip))
	port, err := fixture.FreePort(addr.Unmap())
	if err != nil {
		t.Fatalf("testutil: %v", err)
	}
	return port
}

// LoopbackAddr returns "ip:port" (or "[ip]:port" for IPv6) with a free port
// on the loopback IP ip; see FreePort.
func LoopbackAddr(t testing.TB, ip string) string {
	t.Helper()
	parsed := checkLoopback(t, ip)
	return net.JoinHostPort(parsed.String(), strconv.Itoa(FreePort(t, ip)))
}

// DeadAddr returns a 127.0.0.1 address where nothing listens, so that a
// connection to it is refused at once: a target that is down. The port was
// free a moment ago (see FreePort).
func DeadAddr(t testing.TB) string {
	t.Helper()
	return LoopbackAddr(t, "127.0.0.1")
}

// WaitTCP waits until addr accepts TCP connections, polling every 25 ms, and
// fails the test after timeout.
func WaitTCP(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	if err := waitTCP(addr, timeout, nil); err != nil {
		t.Fatalf("testutil: %v", err)
	}
}

// waitTCP polls addr until it accepts a connection, the timeout passes, or
// abort (if not nil) is closed.
func waitTCP(addr string, timeout time.Duration, abort <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		lastErr = err
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not accept connections within %v: %v", addr, timeout, lastErr)
		}
		select {
		case <-abort:
			return fmt.Errorf("process exited before %s accepted connections (last dial error: %v)", addr, lastErr)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// WaitHTTP polls GET url with client (nil means a plain client with a 2 s
// timeout per request) every 50 ms until the response status is want, and
// fails the test if that has not happened within timeout. Bodies are drained
// and closed.
func WaitHTTP(t testing.TB, url string, client *http.Client, want int, timeout time.Duration) {
	t.Helper()
	WaitHTTPHost(t, url, "", client, want, timeout)
}

// WaitHTTPHost is WaitHTTP with the request's Host header set to host (when
// not empty), for servers such as Django that check it.
func WaitHTTPHost(t testing.TB, url, host string, client *http.Client, want int, timeout time.Duration) {
	t.Helper()
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	deadline := time.Now().Add(timeout)
	last := "no attempt"
	for {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			t.Fatalf("testutil: GET %s (Host %q) did not answer %d within %v; last: %s", url, host, want, timeout, last)
		}
		ctx, cancel := context.WithTimeout(context.Background(), min(remaining, 5*time.Second))
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			cancel()
			t.Fatalf("testutil: bad URL %q: %v", url, err)
		}
		if host != "" {
			req.Host = host
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			cancel()
			if resp.StatusCode == want {
				return
			}
			last = "status " + resp.Status
		} else {
			cancel()
			last = "error " + err.Error()
		}
		time.Sleep(min(50*time.Millisecond, max(time.Until(deadline), 0)))
	}
}
