package e2e

// Mixed content, as a browser sees it: a real Django page served over https through the
// edge loads a script over http://app.test:<edge port>/. Headless Chromium (Debian
// chromium) blocks it, unless the edge adds "Content-Security-Policy:
// upgrade-insecure-requests", in which case Chromium fetches it over https from the edge
// itself. Chromium resolves every name to 127.0.0.1 and never leaves loopback.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// chromiumTimeout bounds one page load; Chromium's own --timeout stops it earlier.
const chromiumTimeout = 60 * time.Second

// runChromium loads url in a fresh headless Chromium and returns the DOM it dumps and its
// log (which has the console's messages, such as mixed-content blocks).
func runChromium(t *testing.T, url string) (dom, log string) {
	t.Helper()
	bin := testutil.RequireTool(t, "chromium")
	ctx, cancel := context.WithTimeout(context.Background(), chromiumTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
		"--no-first-run", "--no-pings", "--no-proxy-server",
		"--user-data-dir="+t.TempDir(),
		// Every name is this machine: nothing the page references leaves loopback.
		"--host-resolver-rules=MAP * 127.0.0.1",
		// The edge's test certificate is its own root, unknown to Chromium. A page loaded
		// despite certificate errors still counts as https for mixed content (checked:
		// the console says the http:// script is blocked).
		"--ignore-certificate-errors",
		"--enable-logging=stderr", "--v=0",
		"--timeout=15000",
		"--dump-dom", url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Kill Chromium's whole process group (renderers, GPU and network services) on timeout.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers left behind, if any
	}
	t.Logf("chromium --dump-dom %s: %v in %v", url, err, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("chromium: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), tail(stderr.String(), 8000))
	}
	return stdout.String(), stderr.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func TestMixedContent_Chromium(t *testing.T) {
	testutil.RequireTool(t, "chromium")
	django := testutil.StartDjango(t, testutil.LoopbackAddr(t, "127.0.0.1"), testutil.DjangoOptions{
		AllowedHosts: []string{"app.test"}, Instance: "mixed",
	})
	cert, key, roots := testutil.CertFiles(t, t.TempDir(), "app.test")

	for _, upgrade := range []bool{false, true} {
		t.Run(fmt.Sprintf("upgrade_insecure_requests=%v", upgrade), func(t *testing.T) {
			e := startEdge(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: [%q]
  health_check: {path: /admin/login/, host: app.test, interval: 200ms, healthy_threshold: 1}
headers:
  upgrade_insecure_requests: %v
  mixed_content_report: true
  mixed_content_sample: 1
`, cert, key, django.Addr, upgrade))
			e.waitState(t, django.Addr, "healthy", 10*time.Second)
			_, port, _ := net.SplitHostPort(e.HTTPS)
			page := fmt.Sprintf("https://app.test:%s/mixed?port=%s", port, port)

			// The header, as any client sees it, and the page counted.
			resp, err := httpsClient(roots, e.HTTPS).Get(page)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			script := fmt.Sprintf(`<script src="http://app.test:%s/static-marker.js">`, port)
			if resp.StatusCode != 200 || !strings.Contains(string(body), script) {
				t.Fatalf("GET %s: %s, body %q; want 200 with %s", page, resp.Status, body, script)
			}
			wantCSP := ""
			if upgrade {
				wantCSP = "upgrade-insecure-requests"
			}
			if got := resp.Header.Get("Content-Security-Policy"); got != wantCSP {
				t.Errorf("Content-Security-Policy %q; want %q", got, wantCSP)
			}
			if got := mixedPages(t, e); got != 1 {
				t.Errorf("edgeproxy_mixed_content_pages_total = %d after one page; want 1", got)
			}

			dom, log := runChromium(t, page)
			loaded := strings.Contains(dom, "MARKER-LOADED")
			switch {
			case !strings.Contains(dom, "mixed content test"):
				t.Fatalf("Chromium did not load the page:\n%s\n%s", dom, tail(log, 8000))
			case upgrade && !loaded:
				t.Errorf("with upgrade-insecure-requests the script did not run (marker absent):\n%s\n%s", dom, tail(log, 8000))
			case !upgrade && loaded:
				t.Errorf("without upgrade-insecure-requests the http:// script ran; want it blocked as mixed content:\n%s", dom)
			case !upgrade && !regexp.MustCompile(`Mixed Content: .*requested an insecure script 'http://app\.test:`+port+`/static-marker\.js'\. This request has been blocked`).MatchString(log):
				t.Errorf("Chromium's console does not say the script was blocked as mixed content:\n%s", tail(log, 8000))
			}
			if upgrade && !e.WaitForOutput("mixed content: an HTML page loads a script or stylesheet over http://", 5*time.Second) {
				t.Errorf("no mixed-content log line:\n%s", e.Output())
			}
			if got := mixedPages(t, e); got < 2 {
				t.Errorf("edgeproxy_mixed_content_pages_total = %d after Chromium's visit; want 2", got)
			}
			if n := strings.Count(e.Output(), "mixed content: an HTML page"); n != 1 {
				t.Errorf("the page was logged %d times; want once per path\n%s", n, e.Output())
			}
		})
	}
}

// mixedPages reads edgeproxy_mixed_content_pages_total.
func mixedPages(t *testing.T, e *edgeProc) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^edgeproxy_mixed_content_pages_total (\d+)$`).FindStringSubmatch(e.metrics(t))
	if m == nil {
		t.Fatal("/metrics lacks edgeproxy_mixed_content_pages_total")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
