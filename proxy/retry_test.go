package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
	"edgeproxy/pool"
)

// pool returns a balancer over addrs, all healthy, with passive detection after 3 failures.
// healthyPool returns a pool over addrs, all healthy, with passive detection after 3
// failures.
func healthyPool(addrs ...string) *pool.Pool {
	return pool.New(pool.Config{Name: "test", Targets: addrs, Passive: pool.Passive{ConsecutiveFailures: 3, EjectionTime: time.Minute}}, pool.Options{})
}

func do(t *testing.T, h http.Handler, method, body string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest(method, srv.URL+"/", strings.NewReader(body))
	if body == "" {
		req.Body = nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A connection refused before any byte was sent is retried on another target, even for
// a POST with a body: the body never left the edge.
func TestRetry_RefusedConnectionGoesToAnotherTarget(t *testing.T) {
	var hits atomic.Int64
	live := testutil.EchoBackend(t, &hits)
	b := healthyPool(testutil.DeadAddr(t), live.Listener.Addr().String())
	h := New(Options{Picker: b, Passive: b, Retries: 1})
	for i := 0; i < 4; i++ {
		if code, body := do(t, h, "POST", "payload"); code != 200 || body != "ok:payload" {
			t.Fatalf("request %d: got %d %q; want 200 ok:payload", i, code, body)
		}
	}
}

// A POST whose body reached a target is never replayed, even if the target then dies.
func TestRetry_NeverReplaysNonIdempotentBody(t *testing.T) {
	var resetHits, liveHits atomic.Int64
	dying := testutil.ResettingBackend(t, &resetHits)
	live := testutil.EchoBackend(t, &liveHits)
	b := healthyPool(dying.Listener.Addr().String(), live.Listener.Addr().String())
	b.Next() // so that the next pick is the dying target
	b.Next()
	h := New(Options{Picker: b, Passive: b, Retries: 1})
	code, _ := do(t, h, "POST", "charge the card once")
	if code != http.StatusBadGateway || resetHits.Load() != 1 || liveHits.Load() != 0 {
		t.Errorf("got %d with %d hits on the dying and %d on the live target; want 502, 1, 0", code, resetHits.Load(), liveHits.Load())
	}
}

// A GET reset before its response began is retried on another target.
func TestRetry_IdempotentResetIsRetried(t *testing.T) {
	var resetHits, liveHits atomic.Int64
	dying := testutil.ResettingBackend(t, &resetHits)
	live := testutil.EchoBackend(t, &liveHits)
	b := healthyPool(dying.Listener.Addr().String(), live.Listener.Addr().String())
	b.Next()
	b.Next()
	h := New(Options{Picker: b, Passive: b, Retries: 1})
	if code, body := do(t, h, "GET", ""); code != 200 || body != "ok:" {
		t.Errorf("got %d %q; want 200 from the other target", code, body)
	}
	if resetHits.Load() == 0 || liveHits.Load() != 1 {
		t.Errorf("hits: dying %d, live %d; want at least 1 and exactly 1", resetHits.Load(), liveHits.Load())
	}
}

func TestRetry_OffWhenZero(t *testing.T) {
	var hits atomic.Int64
	live := testutil.EchoBackend(t, &hits)
	b := healthyPool(testutil.DeadAddr(t), live.Listener.Addr().String())
	b.Next()
	b.Next()
	h := New(Options{Picker: b, Retries: 0})
	if code, _ := do(t, h, "GET", ""); code != http.StatusBadGateway {
		t.Errorf("got %d; want 502 without retries", code)
	}
}

// Retries stay within 20% of requests plus a burst of 10, so a failing pool does not get
// twice the load.
func TestRetryBudget_BoundsRetries(t *testing.T) {
	var b retryBudget
	b.tokens.Store(budgetCap)
	const requests = 1000
	retries := 0
	for i := 0; i < requests; i++ {
		b.deposit()
		if b.take() {
			retries++
		}
	}
	if max := requests/5 + 10; retries > max || retries < requests/5 {
		t.Errorf("%d retries for %d requests; want %d..%d", retries, requests, requests/5, max)
	}
}

// Three refused connections in a row eject a target; picks then skip it.
func TestPassive_EjectsAfterConsecutiveFailures(t *testing.T) {
	var hits atomic.Int64
	live := testutil.EchoBackend(t, &hits)
	dead := testutil.DeadAddr(t)
	b := healthyPool(dead, live.Listener.Addr().String())
	h := New(Options{Picker: b, Passive: b, Retries: 1})
	for i := 0; i < 6; i++ {
		do(t, h, "GET", "")
	}
	if !b.Lookup(dead).Ejected() {
		t.Fatal("dead target not ejected after 3 refused connections")
	}
	for i := 0; i < 10; i++ {
		if p := b.Next(); p.Target.Addr == dead {
			t.Fatal("ejected target picked")
		}
	}
	b.Restore(b.Lookup(dead))
	if b.Lookup(dead).Ejected() {
		t.Error("restored target still ejected")
	}
}
