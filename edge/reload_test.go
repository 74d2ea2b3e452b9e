package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"edgeproxy/config"
	"edgeproxy/internal/testutil"
)

// namedBackend is a target that answers with its name.
func namedBackend(t *testing.T, name string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func testConfig(t *testing.T, target, hsts, minVersion string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, `listen:
  https: "127.0.0.1:0"
tls:
  self_signed: true
  tls_cost: false
  min_version: %q
pool:
  targets: [%q]
  health_check: {interval: 100ms, timeout: 80ms}
headers:
  hsts: %q
`, minVersion, target, hsts))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// get returns the body and the Strict-Transport-Security header of a request to e.
func get(t *testing.T, e *Edge) (body, hsts string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true,
	}}
	resp, err := client.Get("https://" + e.Addrs()["https"] + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.Header.Get("Strict-Transport-Security")
}

// awaitMessage is a slog.Handler that closes seen at the first record whose message is
// msg, and drops every record.
type awaitMessage struct {
	msg  string
	once sync.Once
	seen chan struct{}
}

func (h *awaitMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h *awaitMessage) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *awaitMessage) WithGroup(string) slog.Handler            { return h }
func (h *awaitMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.seen) })
	}
	return nil
}

// runEdge runs an edge for cfg until the test ends, and returns it once it serves: Run
// reads the configuration while it starts (without the reload lock), so tests reload
// after.
func runEdge(t *testing.T, cfg *config.Config) *Edge {
	t.Helper()
	serving := &awaitMessage{msg: "edgeproxy serving", seen: make(chan struct{})}
	e, err := New(cfg, slog.New(serving))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-serving.seen:
	case err := <-done:
		t.Fatalf("Run ended before serving: %v", err)
	}
	return e
}

// A reload whose last step fails changes nothing: the pool keeps its targets and their
// health, requests get the old headers, and the certificate source stays. The same
// configuration then applies once the step succeeds.
func TestReload_FailedLastStepChangesNothing(t *testing.T) {
	a, b := namedBackend(t, "a"), namedBackend(t, "b")
	oldCfg := testConfig(t, a, "max-age=100", "1.2")
	e := runEdge(t, oldCfg)
	waitHealthy(t, e, "pool", a)
	oldCerts, oldTLS, oldTarget := e.certSrc.Load(), e.tls.Current(), e.poolNamed("pool").Lookup(a)

	// A new target, new headers and new TLS settings (tls.min_version, swapped in by
	// tlsserve for the handshakes that follow).
	newCfg := testConfig(t, b, "max-age=200", "1.3")
	e.beforeCommit = func() error { return errors.New("injected failure") }
	if err := e.Reload(newCfg); err == nil {
		t.Fatal("Reload succeeded; want the injected failure")
	}
	if st := e.poolNamed("pool").Statuses(); len(st) != 1 || st[0].Address != a || e.poolNamed("pool").Lookup(a) != oldTarget || !oldTarget.Healthy() {
		t.Errorf("pool after a failed reload: %+v; want only %s, healthy, as before", st, a)
	}
	if body, hsts := get(t, e); body != "a" || hsts != "max-age=100" {
		t.Errorf("after a failed reload: body %q, HSTS %q; want the old target and header", body, hsts)
	}
	// Certificates and TLS settings: still the old ones.
	if e.certSrc.Load() != oldCerts || e.tls.Current() != oldTLS || e.cfg.Load() != oldCfg {
		t.Error("a failed reload replaced the certificate source, the TLS settings or the configuration in effect")
	}
	if v := e.tls.Current().MinVersion; v != tls.VersionTLS12 {
		t.Errorf("after a failed reload: min version %x; want TLS 1.2 still", v)
	}

	e.beforeCommit = nil
	if err := e.Reload(newCfg); err != nil {
		t.Fatal(err)
	}
	if body, hsts := get(t, e); body != "b" || hsts != "max-age=200" {
		t.Errorf("after the reload: body %q, HSTS %q; want the new target and header", body, hsts)
	}
	if v := e.tls.Current().MinVersion; v != tls.VersionTLS13 {
		t.Errorf("after the reload: min version %x; want TLS 1.3", v)
	}
}

// A reload with the same tls.certificates files, whose contents were replaced (certbot
// renewed them), serves the new certificate to the handshakes that follow.
func TestReload_ServesRenewedCertificateFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, oldRoots := testutil.CertFiles(t, dir, "app.test")
	file := filepath.Join(dir, "edge.yaml")
	yaml := fmt.Sprintf(`listen: {https: "127.0.0.1:0"}
tls: {certificates: [{cert: %q, key: %q}], tls_cost: false}
pool: {targets: [%q]}
`, certFile, keyFile, namedBackend(t, "a"))
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func() *config.Config {
		cfg, err := config.Load(file)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	e := runEdge(t, load())
	handshake := func(roots *x509.CertPool) error {
		c, err := tls.Dial("tcp", e.Addrs()["https"], &tls.Config{ServerName: "app.test", RootCAs: roots})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := handshake(oldRoots); err != nil {
		t.Fatalf("before the renewal: %v", err)
	}

	_, _, newRoots := testutil.CertFiles(t, dir, "app.test") // the same files, a new certificate
	if err := handshake(newRoots); err == nil {
		t.Fatal("the renewed certificate served before the reload")
	}
	if err := e.Reload(load()); err != nil {
		t.Fatal(err)
	}
	if err := handshake(newRoots); err != nil {
		t.Errorf("after the reload: %v; want the renewed certificate", err)
	}
	if err := handshake(oldRoots); err == nil {
		t.Error("after the reload the old certificate is still served")
	}
}
