package edge

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"edgeproxy/config"
)

// getPath returns the body of a request for path on e.
func getPath(t *testing.T, e *Edge, path string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true,
	}}
	resp, err := client.Get("https://" + e.Addrs()["https"] + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func parseConfig(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A reload turns the one pool into named pools with routes, keeps the state of a target
// that stays (the pool "pool" and its target survive under the same name), and removes a
// pool again: requests follow each configuration.
func TestReload_AddsAndRemovesPoolsAndRoutes(t *testing.T) {
	a, b := namedBackend(t, "a"), namedBackend(t, "b")
	head := "listen: {https: \"127.0.0.1:0\"}\ntls: {self_signed: true, tls_cost: false}\n"
	single := parseConfig(t, head+fmt.Sprintf("pool: {targets: [%q], health_check: {interval: 100ms, timeout: 80ms}}\n", a))
	e, err := New(single, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	waitHealthy(t, e, "pool", a)
	target := e.poolNamed("pool").Lookup(a)
	if got := getPath(t, e, "/x"); got != "a" {
		t.Fatalf("single pool: %q; want a", got)
	}

	routed := parseConfig(t, head+fmt.Sprintf(`pools:
  pool: {targets: [%q], health_check: {interval: 100ms, timeout: 80ms}}
  api: {targets: [%q], health_check: {interval: 100ms, timeout: 80ms}}
routes:
  - {name: api, path_prefix: /api/, pool: api}
  - {name: default, pool: pool}
`, a, b))
	if err := e.Reload(routed); err != nil {
		t.Fatal(err)
	}
	if e.poolNamed("pool").Lookup(a) != target {
		t.Error("the target of pool \"pool\" lost its state across the reload")
	}
	waitHealthy(t, e, "api", b)
	if got := getPath(t, e, "/api/v1"); got != "b" {
		t.Errorf("/api/v1 after adding the api pool: %q; want b", got)
	}
	if got := getPath(t, e, "/x"); got != "a" {
		t.Errorf("/x after adding the api pool: %q; want a", got)
	}
	// /targets lists every target with its pool; ?group=pool groups them, pools in name
	// order.
	flat := e.targetsView(httptest.NewRequest("GET", "/targets", nil)).([]targetStatus)
	if len(flat) != 2 || flat[0].Pool != "api" || flat[0].Address != b || flat[1].Pool != "pool" || flat[1].Address != a {
		t.Errorf("/targets: %+v; want api's %s, then pool's %s", flat, b, a)
	}
	groups := e.targetsView(httptest.NewRequest("GET", "/targets?group=pool", nil)).([]poolTargets)
	if len(groups) != 2 || groups[0].Pool != "api" || len(groups[0].Targets) != 1 || groups[1].Pool != "pool" || groups[1].Targets[0].Address != a {
		t.Errorf("/targets?group=pool: %+v; want groups api and pool", groups)
	}

	if err := e.Reload(single); err != nil {
		t.Fatal(err)
	}
	if e.poolNamed("api") != nil {
		t.Error("pool api still running after the reload removed it")
	}
	if got := getPath(t, e, "/api/v1"); got != "a" {
		t.Errorf("/api/v1 after removing the api pool: %q; want a", got)
	}
}

func waitHealthy(t *testing.T, e *Edge, pool, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if p := e.poolNamed(pool); p != nil {
			if tg := p.Lookup(addr); tg != nil && tg.Healthy() {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %s: %s not healthy within 5s", pool, addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
