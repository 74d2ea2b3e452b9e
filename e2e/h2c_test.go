package e2e

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// With listen.h2c, an HTTP/2 client with prior knowledge (no TLS, no Upgrade) gets its
// response over HTTP/2 from the plain listener of the real binary, and HTTP/1.1 on the
// same listener is served as before, with the fast path on and off. (About 2 s.)
func TestH2C_PriorKnowledgeAndHTTP1OnThePlainListener(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		backend := namedBackend(t, "127.0.0.2", "backend")
		e := startEdge(t, fmt.Sprintf(`listen:
  https: ""
  http: "{{HTTP}}"
  http_mode: proxy
  h2c: true
  metrics: "{{METRICS}}"
pool:
  targets: [%q]
  health_check: {interval: 200ms, timeout: 150ms}
%slog:
  access: true
`, backend.Listener.Addr().String(), engine))
		e.waitState(t, backend.Listener.Addr().String(), "healthy", 5*time.Second)

		var h2c http.Protocols
		h2c.SetUnencryptedHTTP2(true)
		var h1 http.Protocols
		h1.SetHTTP1(true)
		for _, tt := range []struct {
			name      string
			protocols *http.Protocols
			proto     string
		}{
			{"h2c", &h2c, "HTTP/2.0"},
			{"http/1.1", &h1, "HTTP/1.1"},
		} {
			tr := &http.Transport{Protocols: tt.protocols}
			client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			resp, err := client.Get("http://" + e.HTTP + "/")
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			tr.CloseIdleConnections()
			if resp.StatusCode != 200 || resp.Proto != tt.proto || string(body) != "backend" {
				t.Errorf("%s: got %d %s %q; want 200 %s %q", tt.name, resp.StatusCode, resp.Proto, body, tt.proto, "backend")
			}
		}
		if !e.WaitForOutput("proto=HTTP/2.0", 2*time.Second) {
			t.Errorf("no access log line for the HTTP/2 request:\n%s", e.Output())
		}
	})
}
