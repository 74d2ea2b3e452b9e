// Package e2e holds end-to-end tests: the real edgeproxy binary in front of real Django
// (under gunicorn), Pebble and Go test backends, all on loopback addresses.
package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// edgeProc is a running edgeproxy binary.
type edgeProc struct {
	*testutil.Proc
	HTTPS, HTTP, Metrics string // listener addresses
	ConfigFile           string
}

// startEdge writes config (with {{HTTPS}}, {{HTTP}} and {{METRICS}} replaced by free
// loopback addresses) and runs `edgeproxy run` with it until the edge is serving.
func startEdge(t *testing.T, config string) *edgeProc {
	t.Helper()
	return startEdgeWith(t, testutil.ProcOptions{}, config)
}

// startEdgeWith is startEdge with process options (environment variables, say).
func startEdgeWith(t *testing.T, opts testutil.ProcOptions, config string) *edgeProc {
	t.Helper()
	e := &edgeProc{
		HTTPS:   testutil.LoopbackAddr(t, "127.0.0.1"),
		HTTP:    testutil.LoopbackAddr(t, "127.0.0.1"),
		Metrics: testutil.LoopbackAddr(t, "127.0.0.1"),
	}
	config = strings.NewReplacer("{{HTTPS}}", e.HTTPS, "{{HTTP}}", e.HTTP, "{{METRICS}}", e.Metrics).Replace(config)
	e.ConfigFile = filepath.Join(t.TempDir(), "edgeproxy.yaml")
	if err := os.WriteFile(e.ConfigFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := testutil.BuildEdgeproxy(t)
	e.Proc = testutil.StartProcWith(t, opts, bin, "run", "-config", e.ConfigFile)
	if !e.WaitForOutput("edgeproxy serving", 15*time.Second) {
		code, _ := e.Wait(2 * time.Second)
		t.Fatalf("edgeproxy did not start (exited: %v, code %d):\n%s", e.Exited(), code, e.Output())
	}
	return e
}

// targetStatus is one entry of /targets.
type targetStatus struct {
	Pool                string    `json:"pool"` // the pool's name, or "passthrough"
	Address             string    `json:"address"`
	State               string    `json:"state"`
	LastCheck           time.Time `json:"last_check"`
	LastStatus          int       `json:"last_status"`
	Reason              string    `json:"reason"`
	ConsecutivePasses   int       `json:"consecutive_passes"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	// For pools' targets: when slow start and passive ejection end (nil: not now).
	SlowStartUntil *time.Time `json:"slow_start_until"`
	EjectedUntil   *time.Time `json:"ejected_until"`
}

// targets returns the pool's targets from /targets, by address.
func (e *edgeProc) targets(t *testing.T) map[string]targetStatus {
	t.Helper()
	return e.targetsOf(t, "pool")
}

// targetsOf returns the targets of one set ("pool" or "passthrough") from /targets, by
// address.
func (e *edgeProc) targetsOf(t *testing.T, pool string) map[string]targetStatus {
	t.Helper()
	resp, err := http.Get("http://" + e.Metrics + "/targets")
	if err != nil {
		t.Fatalf("GET /targets: %v", err)
	}
	defer resp.Body.Close()
	var list []targetStatus
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatalf("decoding /targets: %v", err)
	}
	out := map[string]targetStatus{}
	for _, s := range list {
		if s.Pool == pool {
			out[s.Address] = s
		}
	}
	return out
}

// waitState polls /targets until addr is in state and returns how long that took.
func (e *edgeProc) waitState(t *testing.T, addr, state string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if s := e.targets(t)[addr]; s.State == state {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("target %s not %s within %v: %+v\n%s", addr, state, timeout, e.targets(t)[addr], e.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *edgeProc) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + e.Metrics + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// httpsClient returns an HTTP/1.1 client (the fast path's protocol) that trusts roots
// and dials every name to the edge's address, as DNS pointing the site's name at the box
// would.
func httpsClient(roots *x509.CertPool, edgeAddr string) *http.Client {
	return newClient(roots, edgeAddr, false)
}

// h2Client is httpsClient speaking HTTP/2, which the edge serves through net/http.
func h2Client(roots *x509.CertPool, edgeAddr string) *http.Client {
	return newClient(roots, edgeAddr, true)
}

func newClient(roots *x509.CertPool, edgeAddr string, h2 bool) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	protos := []string{"http/1.1"}
	if h2 {
		protos = []string{"h2", "http/1.1"}
	}
	return &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots, NextProtos: protos},
			ForceAttemptHTTP2: h2,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, edgeAddr)
			},
			MaxIdleConnsPerHost: 16,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func quote(items ...string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// certPoolFromConfig trusts every certificate file named in an edge config's
// tls.certificates (the test certificates are their own roots).
func certPoolFromConfig(t *testing.T, configFile string) *x509.CertPool {
	t.Helper()
	data, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, m := range regexp.MustCompile(`cert: "([^"]+)"`).FindAllStringSubmatch(string(data), -1) {
		pem, err := os.ReadFile(m[1])
		if err != nil {
			t.Fatal(err)
		}
		pool.AppendCertsFromPEM(pem)
	}
	return pool
}

// loadStats counts the requests of a steadyLoad.
type loadStats struct{ sent, failed atomic.Int64 }

// steadyLoad starts workers that GET url in a loop, pausing between requests, until the
// returned stop is called (which waits for them; calling it again does nothing more); each worker sends at most 20,000
// requests. Errors and non-200 answers count as failed and are logged; onBody, if not nil,
// sees every 200 answer's body.
func steadyLoad(t *testing.T, c *http.Client, url string, workers int, pause time.Duration, onBody func([]byte)) (*loadStats, func()) {
	t.Helper()
	stats := &loadStats{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				select {
				case <-done:
					return
				default:
				}
				stats.sent.Add(1)
				resp, err := c.Get(url)
				if err != nil {
					stats.failed.Add(1)
					t.Logf("request failed: %v", err)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					stats.failed.Add(1)
					t.Logf("request failed: %d %s", resp.StatusCode, body)
					continue
				}
				if onBody != nil {
					onBody(body)
				}
				time.Sleep(pause)
			}
		}()
	}
	var once sync.Once
	return stats, func() { once.Do(func() { close(done) }); wg.Wait() }
}
