package loadgen

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// server answers /bytes?n=N with N bytes and counts connections and full handshakes.
func server(t *testing.T, useTLS bool) (addr string, conns, resumed *atomic.Int64) {
	t.Helper()
	conns, resumed = &atomic.Int64{}, &atomic.Int64{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && r.TLS.DidResume {
			resumed.Add(1)
		}
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Write([]byte(strings.Repeat("x", n)))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	if useTLS {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), conns, resumed
}

func TestRun_CountBounded(t *testing.T) {
	tests := []struct {
		name             string
		tls, keepAlive   bool
		resume           bool
		wantConns        int64
		wantResumedAbove int64
	}{
		{"keep-alive over TLS", true, true, false, 2, -1},
		{"a full handshake per request", true, false, false, 20, -1},
		{"new connections resuming", true, false, true, 20, 10},
		{"plain HTTP, new connections", false, false, false, 20, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, conns, resumed := server(t, tt.tls)
			res, err := Run(context.Background(), Options{Addr: addr, TLS: tt.tls, Path: "/bytes?n=100", BodyBytes: 100,
				KeepAlive: tt.keepAlive, Resume: tt.resume, Connections: 2, Requests: 20, Latencies: true})
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests != 20 || res.P50 <= 0 || res.P99 < res.P50 {
				t.Errorf("got %+v; want 20 requests with latencies", res)
			}
			if got := conns.Load(); got != tt.wantConns {
				t.Errorf("server saw %d connections; want %d", got, tt.wantConns)
			}
			if tt.wantResumedAbove < 0 && resumed.Load() != 0 {
				t.Errorf("%d resumed handshakes; want none (no session cache)", resumed.Load())
			} else if tt.wantResumedAbove >= 0 && resumed.Load() <= tt.wantResumedAbove {
				t.Errorf("%d resumed handshakes; want more than %d", resumed.Load(), tt.wantResumedAbove)
			}
		})
	}
}

// A time-bounded run warms up first, calls OnStart once when the window opens, and counts
// only the window.
func TestRun_WarmupAndWindow(t *testing.T) {
	addr, _, _ := server(t, false)
	var started atomic.Int64
	var at time.Time
	begin := time.Now()
	res, err := Run(context.Background(), Options{Addr: addr, KeepAlive: true, Connections: 2, BodyBytes: -1,
		Warmup: 200 * time.Millisecond, Duration: 300 * time.Millisecond,
		OnStart: func() { started.Add(1); at = time.Now() }})
	if err != nil {
		t.Fatal(err)
	}
	if started.Load() != 1 || at.Sub(begin) < 200*time.Millisecond {
		t.Errorf("OnStart called %d times, %v after the start; want once, after the 200ms warm-up", started.Load(), at.Sub(begin))
	}
	if res.Requests == 0 || res.Elapsed < 250*time.Millisecond || res.Elapsed > 400*time.Millisecond {
		t.Errorf("got %d requests in %v; want some, in a window of about 300ms", res.Requests, res.Elapsed)
	}
}

func TestRun_WrongBodyFails(t *testing.T) {
	addr, _, _ := server(t, false)
	_, err := Run(context.Background(), Options{Addr: addr, Path: "/bytes?n=5", BodyBytes: 6, KeepAlive: true, Requests: 1})
	if err == nil || !strings.Contains(err.Error(), "5 bytes") {
		t.Errorf("got %v; want an error about the 5-byte body", err)
	}
}
