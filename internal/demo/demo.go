// Package demo runs the three built-in loopback backends of `edgeproxy demo`, and the
// configuration that puts an edge in front of them.
package demo

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"edgeproxy/config"
)

// Backends starts three HTTP backends on 127.0.0.1 and returns their addresses. The third
// fails its health check for a few checks now and then (it answers /health with 503 in
// every other 20-second window), so health transitions show in the log. They stop when
// ctx is done.
func Backends(ctx context.Context) ([]string, error) {
	var addrs []string
	for i := 1; i <= 3; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		name := fmt.Sprintf("backend-%d", i)
		flaky := i == 3
		start := time.Now()
		var served atomic.Int64
		mux := http.NewServeMux()
		mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
			if flaky && int(time.Since(start)/(20*time.Second))%2 == 1 {
				http.Error(w, "demo: failing on purpose", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			n := served.Add(1)
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintf(w, "hello from %s (request %d)\nhost=%s proto=%s client=%s\n",
				name, n, r.Host, r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-For"))
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

// Config returns the demo edge's configuration: https on httpsAddr with a self-signed
// certificate, metrics on metricsAddr, health checks every second on /health.
func Config(httpsAddr, metricsAddr string, targets []string) (*config.Config, error) {
	yaml := fmt.Sprintf(`
listen:
  https: %q
  metrics: %q
tls:
  self_signed: true
pool:
  targets: %s
  health_check:
    path: /health
    interval: 1s
    timeout: 500ms
    healthy_threshold: 3
    unhealthy_threshold: 2
limits:
  shutdown_timeout: 5s
log:
  access: true
`, httpsAddr, metricsAddr, flowList(targets))
	return config.Parse("(demo)", []byte(yaml))
}

func flowList(items []string) string {
	s := "["
	for i, it := range items {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%q", it)
	}
	return s + "]"
}
