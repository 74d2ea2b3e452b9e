package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// reloadTLSConfig is a config serving app.test from certDir with the given tls and log
// keys, in front of one backend.
func reloadTLSConfig(certDir, backend, tlsKeys, logKeys string) string {
	return fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
%spool:
  targets: [%q]
  health_check: {interval: 1s, healthy_threshold: 1}
log:
%s`, certDir+"/app.test.crt", certDir+"/app.test.key", tlsKeys, backend, logKeys)
}

// get makes one request on a new connection with at most TLS maxVersion.
func getWithVersion(t *testing.T, c *http.Client, maxVersion uint16) error {
	t.Helper()
	tr := c.Transport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	tr.TLSClientConfig.MaxVersion = maxVersion
	resp, err := (&http.Client{Transport: tr, Timeout: c.Timeout}).Get("https://app.test/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// A reload to tls.min_version "1.3" turns TLS 1.2 clients away from then on (it used to
// be ignored until a restart), and a reload back lets them in again.
func TestReload_AppliesTLSMinVersion(t *testing.T) {
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	backend := namedBackend(t, "127.0.0.1", "app")
	config := func(v string) string {
		return reloadTLSConfig(dir, backend.Listener.Addr().String(), "  min_version: \""+v+"\"\n", "  format: text\n")
	}
	e := startEdge(t, config("1.2"))
	c := httpsClient(roots, e.HTTPS)
	if err := getWithVersion(t, c, tls.VersionTLS12); err != nil {
		t.Fatalf("TLS 1.2 client with min_version 1.2: %v", err)
	}

	e.rewriteConfig(t, config("1.3"))
	e.reload(t, "reload done")
	if err := getWithVersion(t, c, tls.VersionTLS12); err == nil {
		t.Errorf("a TLS 1.2 client connected after a reload to min_version 1.3; want it refused")
	}
	if err := getWithVersion(t, c, tls.VersionTLS13); err != nil {
		t.Errorf("TLS 1.3 client after the reload: %v", err)
	}
	if strings.Contains(e.Output(), "restart") {
		t.Errorf("the reload asked for a restart:\n%s", e.Output())
	}

	e.rewriteConfig(t, config("1.2"))
	e.reload(t, "reload done")
	if err := getWithVersion(t, c, tls.VersionTLS12); err != nil {
		t.Errorf("TLS 1.2 client after a reload back to min_version 1.2: %v", err)
	}
}

// A reload turns tls.tls_cost on (handshakes from then on are counted) and off again
// (they are not); it used to be ignored until a restart.
func TestReload_AppliesTLSCost(t *testing.T) {
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	backend := namedBackend(t, "127.0.0.1", "app")
	config := func(on bool) string {
		return reloadTLSConfig(dir, backend.Listener.Addr().String(), fmt.Sprintf("  tls_cost: %v\n", on), "  format: text\n")
	}
	handshakes := func(e *edgeProc) string {
		t.Helper()
		for _, line := range strings.Split(e.metrics(t), "\n") {
			if strings.HasPrefix(line, "edgeproxy_tls_handshakes_total{") && strings.Contains(line, `result="ok"`) {
				return line
			}
		}
		return ""
	}
	e := startEdge(t, config(false))
	c := httpsClient(roots, e.HTTPS)
	if err := getWithVersion(t, c, 0); err != nil {
		t.Fatal(err)
	}
	if got := handshakes(e); got != "" {
		t.Fatalf("tls_cost off: handshakes counted: %s", got)
	}

	e.rewriteConfig(t, config(true))
	e.reload(t, "reload done")
	if err := getWithVersion(t, c, 0); err != nil {
		t.Fatal(err)
	}
	on := handshakes(e)
	if !strings.HasSuffix(on, " 1") {
		t.Fatalf("after a reload to tls_cost true and one connection: %q; want one handshake counted", on)
	}

	e.rewriteConfig(t, config(false))
	e.reload(t, "reload done")
	if err := getWithVersion(t, c, 0); err != nil {
		t.Fatal(err)
	}
	if off := handshakes(e); off != on {
		t.Errorf("after a reload to tls_cost false: %q; want the count unchanged (%q)", off, on)
	}
}

// A reload to log.format json writes the lines after it as JSON, from every part (it used
// to be ignored until a restart).
func TestReload_AppliesLogFormat(t *testing.T) {
	dir := t.TempDir()
	_, _, roots := testutil.CertFiles(t, dir, "app.test")
	backend := namedBackend(t, "127.0.0.1", "app")
	config := func(format string) string {
		return reloadTLSConfig(dir, backend.Listener.Addr().String(), "", "  format: "+format+"\n  access: true\n")
	}
	e := startEdge(t, config("text"))
	e.rewriteConfig(t, config("json"))
	e.reload(t, `"msg":"reload done"`)
	c := httpsClient(roots, e.HTTPS)
	if err := getWithVersion(t, c, 0); err != nil {
		t.Fatal(err)
	}
	// The access log line is the proxy's logger, handed out at start.
	if !e.WaitForOutput(`"msg":"access"`, 5*time.Second) {
		t.Errorf("no JSON access log line after the reload to log.format json:\n%s", e.Output())
	}
}

// A reload that changes keys bound to the listeners keeps them, and the log names each
// key that needs a restart.
func TestReload_NamesEachKeyNeedingRestart(t *testing.T) {
	dir := t.TempDir()
	testutil.CertFiles(t, dir, "app.test")
	backend := namedBackend(t, "127.0.0.1", "app")
	config := func(rest string) string {
		return reloadTLSConfig(dir, backend.Listener.Addr().String(), "", "  format: text\n"+rest)
	}
	e := startEdge(t, config(""))
	e.rewriteConfig(t, config("limits:\n  idle_timeout: 1m\n  max_body_bytes: 1024\nproxy:\n  fast_path: false\n"))
	e.reload(t, "reload done")
	out := e.Output()
	for _, key := range []string{"limits.idle_timeout", "proxy.fast_path"} {
		if want := "reload: " + key + " changed; it takes effect only after a restart"; !strings.Contains(out, want) {
			t.Errorf("no %q in the log:\n%s", want, out)
		}
	}
	if strings.Contains(out, "limits.max_body_bytes changed") {
		t.Errorf("limits.max_body_bytes, applied on reload, was logged as needing a restart:\n%s", out)
	}
}
