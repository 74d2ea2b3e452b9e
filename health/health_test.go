package health

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/config"
	"edgeproxy/internal/testutil"
)

func TestMachine_Thresholds(t *testing.T) {
	tests := []struct {
		name    string
		results string // p = pass, f = fail
		want    State
		changes int
	}{
		{"first pass makes a new target healthy", "p", Healthy, 1},
		{"initial stays initial below the unhealthy threshold", "f", Initial, 0},
		{"initial becomes unhealthy at the threshold", "ff", Unhealthy, 1},
		{"healthy survives one failure", "pf", Healthy, 1},
		{"healthy becomes unhealthy after 2 failures in a row", "pff", Unhealthy, 2},
		{"a pass resets the failure count", "pfpf", Healthy, 1},
		{"unhealthy needs 3 passes in a row", "ffpp", Unhealthy, 1},
		{"unhealthy becomes healthy at 3 passes", "ffppp", Healthy, 2},
		{"a failure resets the pass count", "ffppfpp", Unhealthy, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := machine{state: Initial}
			changes := 0
			for _, r := range tt.results {
				if m.observe(r == 'p', 3, 2) {
					changes++
				}
			}
			if m.state != tt.want || changes != tt.changes {
				t.Errorf("after %q: got %s with %d changes; want %s with %d", tt.results, m.state, changes, tt.want, tt.changes)
			}
		})
	}
}

type recordingObserver struct {
	mu     sync.Mutex
	checks []string
}

func (o *recordingObserver) HealthCheck(target string, pass bool, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.checks = append(o.checks, reason)
}
func (o *recordingObserver) TargetHealthy(string, bool) {}

func (o *recordingObserver) reasons() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.checks...)
}

func newChecker(t *testing.T, opts Options) (*Checker, *recordingObserver, *testutil.Buffer) {
	t.Helper()
	obs := &recordingObserver{}
	logs := &testutil.Buffer{}
	if opts.Matcher == nil {
		m, _ := config.ParseMatcher("200-399")
		opts.Matcher = m
	}
	if opts.Interval == 0 {
		opts.Interval = 100 * time.Millisecond
	}
	if opts.Timeout == 0 {
		opts.Timeout = 80 * time.Millisecond
	}
	if opts.HealthyThreshold == 0 {
		opts.HealthyThreshold = 2
	}
	if opts.UnhealthyThreshold == 0 {
		opts.UnhealthyThreshold = 2
	}
	if opts.Path == "" {
		opts.Path = "/"
	}
	opts.Observer = obs
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	return New(opts), obs, logs
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// start runs c's checks of addrs until the test ends, with hooks h, and returns their
// health, in the order of addrs.
func start(t *testing.T, c *Checker, h Hooks, addrs ...string) []*Target {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	targets := make([]*Target, len(addrs))
	for i, a := range addrs {
		targets[i] = NewTarget(a)
		wg.Go(func() { c.Run(ctx, a, targets[i], h) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return targets
}

func stateOf(target *Target) State { return target.Status().State }

// The classic ALB-and-Django trap: a check that sends the target address as Host gets 400
// from ALLOWED_HOSTS; with host set it passes. The log says which Host to set.
func TestChecker_HostHeaderAndAllowedHostsHint(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "app.test" {
			http.Error(w, "Bad Request (400)", http.StatusBadRequest)
			return
		}
		if r.URL.Path != "/admin/login/" {
			t.Errorf("check path %q; want /admin/login/", r.URL.Path)
		}
	}))
	defer backend.Close()
	addr := backend.Listener.Addr().String()

	c, obs, logs := newChecker(t, Options{Path: "/admin/login/"})
	target := start(t, c, Hooks{}, addr)[0]
	want := "target " + addr + " unhealthy: status 400 not in 200-399"
	// The transition is logged just after the state changes: wait for the line itself.
	waitFor(t, "the unhealthy transition logged", 2*time.Second, func() bool { return strings.Contains(logs.String(), want) })
	if stateOf(target) != Unhealthy || !strings.Contains(logs.String(), "ALLOWED_HOSTS") {
		t.Errorf("log lacks %q and the ALLOWED_HOSTS hint:\n%s", want, logs)
	}
	if r := obs.reasons(); r[0] != ReasonResponseCodeMismatch {
		t.Errorf("reason %q; want %q", r[0], ReasonResponseCodeMismatch)
	}

	fixed, _, _ := newChecker(t, Options{Path: "/admin/login/", Host: "app.test"})
	fixedTarget := start(t, fixed, Hooks{}, addr)[0]
	waitFor(t, "healthy", 2*time.Second, func() bool { return stateOf(fixedTarget) == Healthy })
}

// Redirects are results: Django's /admin/ answers 302, which 200-399 accepts and 200 does not.
func TestChecker_DoesNotFollowRedirects(t *testing.T) {
	var followed atomic.Bool
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			followed.Store(true)
		}
		http.Redirect(w, r, "/login", http.StatusFound)
	}))
	defer backend.Close()
	addr := backend.Listener.Addr().String()
	only200, _ := config.ParseMatcher("200")
	c, _, _ := newChecker(t, Options{Path: "/admin/", Matcher: only200})
	target := start(t, c, Hooks{}, addr)[0]
	waitFor(t, "unhealthy", 2*time.Second, func() bool { return stateOf(target) == Unhealthy })
	if followed.Load() {
		t.Error("the checker followed the redirect")
	}
	s := target.Status()
	if s.LastStatus != http.StatusFound || s.Reason != ReasonResponseCodeMismatch {
		t.Errorf("got status %d reason %s; want 302 %s", s.LastStatus, s.Reason, ReasonResponseCodeMismatch)
	}
}

func TestChecker_ReasonCodes(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	closed := testutil.DeadAddr(t)

	for _, tc := range []struct {
		name, addr, reason string
	}{
		{"timeout", slow.Listener.Addr().String(), ReasonTimeout},
		{"connection refused", closed, ReasonFailedHealthChecks},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, obs, _ := newChecker(t, Options{})
			start(t, c, Hooks{}, tc.addr)
			waitFor(t, "a failed check", 2*time.Second, func() bool { return len(obs.reasons()) > 0 })
			if got := obs.reasons()[0]; got != tc.reason {
				t.Errorf("reason %q; want %q", got, tc.reason)
			}
		})
	}
}

// A target that starts failing leaves within interval × unhealthy_threshold + timeout (plus
// jitter and scheduling slack), and comes back after healthy_threshold passes.
func TestChecker_TransitionsWithinThresholdTime(t *testing.T) {
	var failing atomic.Bool
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer backend.Close()
	addr := backend.Listener.Addr().String()
	var mu sync.Mutex
	var changes []bool
	c, _, _ := newChecker(t, Options{})
	target := start(t, c, Hooks{OnChange: func(healthy bool) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, healthy)
	}}, addr)[0]
	waitFor(t, "healthy", time.Second, func() bool { return stateOf(target) == Healthy })

	failing.Store(true)
	t0 := time.Now()
	waitFor(t, "unhealthy", time.Second, func() bool { return stateOf(target) == Unhealthy })
	bound := 2*105*time.Millisecond + 80*time.Millisecond + 150*time.Millisecond // slack
	if d := time.Since(t0); d > bound {
		t.Errorf("unhealthy after %v; want within %v", d, bound)
	}
	failing.Store(false)
	waitFor(t, "healthy again", time.Second, func() bool { return stateOf(target) == Healthy })
	// The hook runs after the state is stored: wait for its third call, not only the state.
	waitFor(t, "the third OnChange call", time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(changes) >= 3
	})
	mu.Lock()
	defer mu.Unlock()
	if len(changes) != 3 || !changes[0] || changes[1] || !changes[2] {
		t.Errorf("OnChange calls %v; want [true false true]", changes)
	}
}

// Checks of many targets are spread out, never aligned: the first check of each comes at a
// random point of the first 250ms, later ones every interval ±5%.
func TestSchedule_JittersChecks(t *testing.T) {
	const n = 200
	interval := 30 * time.Second
	firsts, nexts := map[time.Duration]bool{}, map[time.Duration]bool{}
	lo, hi := interval, time.Duration(0)
	for i := 0; i < n; i++ {
		f := firstCheckDelay(interval)
		if f < 0 || f > 250*time.Millisecond {
			t.Fatalf("first delay %v; want within 0..250ms", f)
		}
		firsts[f] = true
		d := nextCheckDelay(interval)
		if d < interval*95/100 || d > interval*105/100 {
			t.Fatalf("next delay %v; want interval ±5%%", d)
		}
		nexts[d] = true
		lo, hi = min(lo, d), max(hi, d)
	}
	if len(firsts) < n/2 || len(nexts) < n/2 {
		t.Errorf("%d distinct first delays and %d distinct intervals in %d draws; want spread", len(firsts), len(nexts), n)
	}
	if hi-lo < interval/20 {
		t.Errorf("intervals span only %v; want at least %v", hi-lo, interval/20)
	}
}
