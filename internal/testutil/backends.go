package testutil

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// EchoBackend is a target that answers "ok:" and the request body, counting requests in
// hits.
func EchoBackend(t testing.TB, hits *atomic.Int64) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		w.Write([]byte("ok:" + string(b)))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// ResettingBackend reads the request (and its body), then resets the connection without
// a response, as a crashing worker does; it counts requests in hits.
func ResettingBackend(t testing.TB, hits *atomic.Int64) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.Copy(io.Discard, r.Body)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.SetLinger(0) // RST, not FIN
			}
			conn.Close()
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// WebSocketEchoBackend answers a WebSocket upgrade with 101 and then echoes one line
// ("echo " and the line); a request without Upgrade gets "plain".
func WebSocketEchoBackend(t testing.TB) *httptest.Server {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			fmt.Fprint(w, "plain")
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo " + line)
		brw.Flush()
	}))
	t.Cleanup(backend.Close)
	return backend
}
