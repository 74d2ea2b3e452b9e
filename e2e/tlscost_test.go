package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// The TLS cost metrics count what goes through the edge, on both data paths: every
// handshake (new HTTP/1.1 connections and an HTTP/2 one), its CPU, its records and the
// total. The measuring happens where proxy.Server runs the handshake, so this pins down
// the wiring as well as the accounting.
func TestTLSCost_MetricsCountTheEdgesConnections(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		e, c := limitsEdge(t, engine, "  max_header_bytes: 65536\n")
		c.Transport.(*http.Transport).DisableKeepAlives = true // a handshake per request
		const newConns, h2Requests = 10, 10
		get := func(c *http.Client) {
			t.Helper()
			resp, err := c.Get("https://app.test/")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		for range newConns {
			get(c)
		}
		h2 := h2Client(certPoolFromConfig(t, e.ConfigFile), e.HTTPS)
		for range h2Requests {
			get(h2)
		}
		h2.CloseIdleConnections()

		m := e.metrics(t)
		sum := func(series string) float64 {
			re := regexp.MustCompile(`(?m)^` + series + `(?:\{[^}]*\})? ([0-9.e+-]+)$`)
			total := 0.0
			for _, match := range re.FindAllStringSubmatch(m, -1) {
				v, _ := strconv.ParseFloat(match[1], 64)
				total += v
			}
			return total
		}
		if got, want := sum(`edgeproxy_tls_handshakes_total\{[^}]*result="ok"[^}]*\}`), float64(newConns+1); got != want {
			t.Errorf("ok handshakes: got %v; want %v\n%s", got, want, m)
		}
		if got, want := sum(`edgeproxy_tls_handshake_cpu_seconds_count\{[^}]*result="ok"[^}]*\}`), float64(newConns+1); got != want {
			t.Errorf("handshake CPU observations: got %v; want %v", got, want)
		}
		for _, series := range []string{
			`edgeproxy_tls_handshake_cpu_seconds_sum`,
			`edgeproxy_tls_record_bytes_total\{direction="in"\}`,
			`edgeproxy_tls_record_bytes_total\{direction="out"\}`,
			`edgeproxy_tls_cpu_seconds_total`,
		} {
			if got := sum(series); got <= 0 {
				t.Errorf("%s: got %v; want > 0", series, got)
			}
		}
	})
}

// A client resumes its TLS session after a reload (SIGHUP, as `systemctl reload` sends):
// the ticket keys live outside the state a reload rebuilds. Both TLS versions; the
// metrics count the resumed handshakes apart.
func TestTLSCost_SessionsResumeAcrossAReload(t *testing.T) {
	e, c := limitsEdge(t, "", "  max_header_bytes: 65536\n")
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		name := map[uint16]string{tls.VersionTLS12: "1.2", tls.VersionTLS13: "1.3"}[version]
		tr := c.Transport.(*http.Transport).Clone()
		tr.DisableKeepAlives = true // a handshake per request
		tr.TLSClientConfig.MinVersion, tr.TLSClientConfig.MaxVersion = version, version
		tr.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		client := &http.Client{Transport: tr}
		resumed := func() bool {
			t.Helper()
			resp, err := client.Get("https://app.test/")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body) // in TLS 1.3 the ticket comes after the handshake
			resp.Body.Close()
			return resp.TLS.DidResume
		}
		if resumed() {
			t.Fatalf("TLS %s: the first connection resumed", name)
		}
		if !resumed() {
			t.Fatalf("TLS %s: the second connection did not resume before any reload", name)
		}
		e.reload(t, "reload done")
		if !resumed() {
			t.Errorf("TLS %s: the session did not resume after a reload", name)
		}
		m := e.metrics(t)
		series := `edgeproxy_tls_handshakes_total{cipher="[^"]+",key="none",result="ok",resumed="true",version="` + regexp.QuoteMeta(name) + `"} 2`
		if !regexp.MustCompile(`(?m)^` + series + `$`).MatchString(m) {
			t.Errorf("TLS %s: no %s in the metrics:\n%s", name, series, m)
		}
	}
}

// The metric agrees with what TLS costs the edge's process — its extra CPU over TLS
// against plain HTTP, same edge, same requests, interleaved — on two cells of
// `bench/tlscost matrix`, run as a command of its own (its load generator must not be
// slowed down by this test binary's race detector, and it is the matrix's own code): new
// connections (full TLS 1.3 handshakes) and kept-alive 64 KiB responses. The tolerance
// is wide (0.6–1.6) for CI's noise, on the median of 3 runs; the full matrix is the
// judge. The edge calibrates at start into a cache of its own, and the cells run on that
// start-up's fit (-settle 0: refinement waits for an idle machine, which CI's parallel
// tests are not; tlscost's own tests refine against a real client process); the test
// takes ~20–45 s (the build of the command included).
func TestTLSCost_AgreesWithTheExtraCPUOfTLS(t *testing.T) {
	edge := testutil.BuildEdgeproxy(t)
	bench := filepath.Join(t.TempDir(), "tlscost-bench")
	build := exec.Command(testutil.GoTool(), "build", "-o", bench, "edgeproxy/bench/tlscost")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building bench/tlscost: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bench, "-bin", edge, "-runs", "3", "-chunks", "4", "-scale", "0.25", "-c", "2",
		"-overhead=false", "-gate", "0.6,1.6", "-settle", "0", "-only", "=new connection 1 KiB, full handshake|=keep-alive 64 KiB", "matrix")
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("bench/tlscost matrix:\n%s", stdout.String())
	if err != nil {
		t.Errorf("bench/tlscost matrix (tolerance 0.6–1.6; the full matrix is the judge): %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "| keep-alive 64 KiB |") || !strings.Contains(stdout.String(), "| new connection 1 KiB, full handshake |") {
		t.Errorf("the two cells are not in the table")
	}
}
