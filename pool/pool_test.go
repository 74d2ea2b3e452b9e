package pool

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"edgeproxy/config"
	"edgeproxy/health"
	"edgeproxy/internal/testutil"
)

// matching returns the lines of logs that contain every one of parts.
func matching(logs *testutil.Buffer, parts ...string) []string {
	var out []string
next:
	for _, line := range strings.Split(logs.String(), "\n") {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		if line != "" {
			out = append(out, line)
		}
	}
	return out
}

type ejections struct{ n atomic.Int32 }

func (o *ejections) HealthCheck(string, bool, string) {}
func (o *ejections) TargetHealthy(string, bool)       {}
func (o *ejections) PassiveEjection(string)           { o.n.Add(1) }

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// start runs p's checks until the test ends.
func start(t *testing.T, p *Pool) {
	ctx, cancel := context.WithCancel(context.Background())
	p.Start(ctx)
	t.Cleanup(func() { cancel(); p.Wait() })
}

// backend is an HTTP target whose checks fail while failing is set.
func backend(t *testing.T, failing *atomic.Bool) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing != nil && failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// checked is a configuration with fast HTTP checks of addrs.
func checked(t *testing.T, addrs ...string) Config {
	m, err := config.ParseMatcher("200-399")
	if err != nil {
		t.Fatal(err)
	}
	return Config{Name: "web", Targets: addrs, Health: health.Options{
		Path: "/", Interval: 50 * time.Millisecond, Timeout: 500 * time.Millisecond,
		HealthyThreshold: 2, UnhealthyThreshold: 2, Matcher: m,
	}}
}

// An Update that keeps an address keeps its Target and everything live about it:
// health, count of passes, ejection, requests in flight and the rotation position.
func TestUpdate_KeepsStateByAddress(t *testing.T) {
	a, b, x, c := "127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"
	cfg := checkedConfig([]string{a, b, x})
	cfg.Passive = Passive{ConsecutiveFailures: 1, EjectionTime: time.Hour}
	p := New(cfg, Options{})
	for _, addr := range cfg.Targets {
		setHealthy(p, addr, true)
	}
	ta, tb, tx := p.Lookup(a), p.Lookup(b), p.Lookup(x)
	ta.Begin()
	if !p.ReportFailure(tx) {
		t.Fatal("one failure did not eject with consecutive_failures 1")
	}
	if got := p.Next().Target; got != ta {
		t.Fatalf("first pick %s; want %s", got.Addr, a)
	}

	cfg.Targets = []string{a, b, x, c}
	p.Update(cfg)
	if p.Lookup(a) != ta || p.Lookup(b) != tb || p.Lookup(x) != tx {
		t.Fatal("Update replaced the Target of an address that stays")
	}
	if !ta.Healthy() || !tx.Healthy() || !tx.Ejected() || ta.InFlight() != 1 {
		t.Errorf("after Update: a healthy %v in flight %d, x healthy %v ejected %v; want true 1, true true",
			ta.Healthy(), ta.InFlight(), tx.Healthy(), tx.Ejected())
	}
	if s := p.Lookup(c).health.Status().State; s != health.Initial {
		t.Errorf("new target in state %s; want initial", s)
	}
	// The rotation goes on where it was: b's turn, not a's again.
	if got := p.Next().Target; got != tb {
		t.Errorf("pick after Update %s; want %s (the rotation kept its position)", got.Addr, b)
	}
}

// A removed target with requests in flight drains: no new picks, its status is draining,
// and it retires as soon as the last request ends, long before the delay.
func TestUpdate_DrainEndsAtZeroInFlight(t *testing.T) {
	a, b := "127.0.0.1:8001", "127.0.0.1:8002"
	log, logs := testutil.NewLogger(t)
	var retired atomic.Value
	cfg := checkedConfig([]string{a, b})
	cfg.DeregistrationDelay = time.Hour
	p := New(cfg, Options{Logger: log, OnRetire: func(addr string) { retired.Store(addr) }})
	setHealthy(p, a, true)
	setHealthy(p, b, true)
	tb := p.Lookup(b)
	tb.Begin()
	cfg.Targets = []string{a}
	p.Update(cfg)
	for range 4 {
		if got := p.Next().Target; got.Addr != a {
			t.Fatalf("picked %s; want only %s", got.Addr, a)
		}
	}
	st := p.Statuses()
	if len(st) != 2 || st[1].Address != b || st[1].State != health.Draining {
		t.Fatalf("statuses %+v; want %s draining", st, b)
	}
	time.Sleep(100 * time.Millisecond) // two drain polls: still in flight
	if tb.Retired().Err() != nil || retired.Load() != nil {
		t.Fatal("retired with a request in flight before the delay ended")
	}
	tb.End()
	waitFor(t, "retirement", 2*time.Second, func() bool {
		return retired.Load() == b && len(matching(logs, "target "+b+" removed and drained")) == 1
	})
	if context.Cause(tb.Retired()) != ErrDeregistered {
		t.Errorf("Retired cause %v; want ErrDeregistered", context.Cause(tb.Retired()))
	}
	if len(p.Statuses()) != 1 {
		t.Errorf("statuses %+v; want the retired target gone", p.Statuses())
	}
	if l := matching(logs, "deregistration delay ended"); len(l) != 0 {
		t.Errorf("logged %q for a drain that ended in time", l)
	}
	if l := matching(logs, "target "+b+" removed and drained", "pool=test"); len(l) != 1 {
		t.Errorf("drain logged %q; want one line", matching(logs))
	}
}

// When the deregistration delay ends with requests in flight, they are cut off: the
// Retired context is cancelled with cause ErrDeregistered (not taken for a client that
// left), a warning says so with the target, pool and count, and OnRetire is called.
func TestUpdate_DrainCutOffAtDeregistrationDelay(t *testing.T) {
	a, b := "127.0.0.1:8001", "127.0.0.1:8002"
	const delay = 300 * time.Millisecond
	log, logs := testutil.NewLogger(t)
	var retired atomic.Value
	cfg := checkedConfig([]string{a, b})
	cfg.DeregistrationDelay = delay
	p := New(cfg, Options{Logger: log, OnRetire: func(addr string) { retired.Store(addr) }})
	start(t, p)
	tb := p.Lookup(b)
	tb.Begin()
	tb.Begin()
	defer tb.End()
	defer tb.End()
	removed := time.Now()
	cfg.Targets = []string{a}
	p.Update(cfg)
	select {
	case <-tb.Retired().Done():
	case <-time.After(delay + 2*time.Second): // slack for a loaded machine
		t.Fatal("Retired not done after the deregistration delay")
	}
	if d := time.Since(removed); d < delay {
		t.Errorf("cut off after %v; want not before the %v delay", d, delay)
	}
	if err := context.Cause(tb.Retired()); err != ErrDeregistered {
		t.Errorf("Retired cause %v; want ErrDeregistered", err)
	}
	waitFor(t, "OnRetire", time.Second, func() bool { return retired.Load() == b })
	if l := matching(logs, "deregistration delay ended", "target="+b, "pool=test", "in_flight=2"); len(l) != 1 {
		t.Errorf("log %q; want one \"deregistration delay ended\" warning with target, pool and count", matching(logs))
	}
}

// With no target healthy, picks go to all targets and the pool logs entering fail-open
// once, with its name; when a target passes again it logs leaving it.
func TestFailOpen_LoggedOnceEachWay(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	a, b := backend(t, &failing), backend(t, &failing)
	log, logs := testutil.NewLogger(t)
	p := New(checked(t, a, b), Options{Logger: log})
	start(t, p)
	waitFor(t, "fail-open", 5*time.Second, func() bool {
		st := p.Statuses()
		return st[0].State == health.Unhealthy && st[1].State == health.Unhealthy
	})
	if pk := p.Next(); !pk.FailOpen || pk.Target == nil {
		t.Errorf("pick %+v; want fail-open to a target", pk)
	}
	time.Sleep(150 * time.Millisecond) // more failed checks: still one line
	if l := matching(logs, "no healthy target: failing open, requests go to all targets", "pool=web"); len(l) != 1 {
		t.Errorf("fail-open logged %d times; want once with the pool name: %q", len(l), matching(logs))
	}
	failing.Store(false)
	waitFor(t, "fail-open over", 5*time.Second, func() bool {
		return len(matching(logs, "a target is healthy again: fail-open over", "pool=web")) == 1
	})
	if pk := p.Next(); pk.FailOpen {
		t.Errorf("pick %+v; want a healthy target", pk)
	}
}

// Consecutive failures eject a target (counted, and its passing checks start again
// from zero); healthy_threshold passing checks since then restore it.
func TestPassive_EjectionAndRestoreByChecks(t *testing.T) {
	a, b := backend(t, nil), backend(t, nil)
	obs := &ejections{}
	log, logs := testutil.NewLogger(t)
	cfg := checked(t, a, b)
	cfg.Passive = Passive{ConsecutiveFailures: 2, EjectionTime: time.Hour}
	p := New(cfg, Options{Observer: obs, Logger: log})
	start(t, p)
	waitFor(t, "both healthy", 5*time.Second, func() bool { return p.Lookup(a).Healthy() && p.Lookup(b).Healthy() })
	ta := p.Lookup(a)
	waitFor(t, "passes in a row", 5*time.Second, func() bool { return ta.health.Status().ConsecutivePasses >= 2 })

	if p.ReportFailure(ta) {
		t.Fatal("ejected after one failure; want two")
	}
	if !p.ReportFailure(ta) || !ta.Ejected() || obs.n.Load() != 1 {
		t.Fatalf("after two failures: ejected %v, ejections counted %d; want true, 1", ta.Ejected(), obs.n.Load())
	}
	if n := ta.health.Status().ConsecutivePasses; n >= 2 {
		t.Errorf("passes in a row after ejection: %d; want restarted", n)
	}
	waitFor(t, "restore by active checks", 5*time.Second, func() bool { return !ta.Ejected() })
	if l := matching(logs, "target "+a+" back from passive ejection: active checks pass"); len(l) != 1 {
		t.Errorf("restore logged %q; want once", matching(logs))
	}
	seen := map[string]bool{}
	for range 4 {
		seen[p.Next().Target.Addr] = true
	}
	if !seen[a] {
		t.Errorf("picks %v after restore; want %s back in rotation", seen, a)
	}
}

// A target with no active checks configured is healthy; passive detection alone takes
// it out.
func TestNoActiveChecks_TargetsHealthy(t *testing.T) {
	p := New(Config{Name: "plain", Targets: addrs(2), Passive: Passive{ConsecutiveFailures: 1, EjectionTime: time.Hour}}, Options{})
	start(t, p)
	for i := range 4 {
		pk := p.Next()
		if pk.FailOpen || !pk.Target.Healthy() {
			t.Fatalf("pick %d: %+v; want a healthy target", i, pk)
		}
	}
	p.ReportFailure(p.Lookup(addrs(2)[0]))
	for range 4 {
		if got := p.Next().Target.Addr; got != addrs(2)[1] {
			t.Errorf("picked %s; want only the target not ejected", got)
		}
	}
}

// An address removed and added back while it drains is a new target; the drain of the
// old one ends without OnRetire, which would break the new one's connections.
func TestUpdate_AddressBackWhileDraining(t *testing.T) {
	a, b := "127.0.0.1:8001", "127.0.0.1:8002"
	var retired atomic.Int32
	log, logs := testutil.NewLogger(t)
	cfg := checkedConfig([]string{a, b})
	cfg.DeregistrationDelay = 50 * time.Millisecond
	p := New(cfg, Options{Logger: log, OnRetire: func(string) { retired.Add(1) }})
	old := p.Lookup(b)
	old.Begin()
	defer old.End()
	cfg.Targets = []string{a}
	p.Update(cfg)
	cfg.Targets = []string{a, b}
	p.Update(cfg)
	if p.Lookup(b) == old {
		t.Fatal("the draining target came back; want a new one")
	}
	if st := p.Statuses(); len(st) != 2 || st[1].State != health.Initial {
		t.Errorf("statuses %+v; want %s once, as the new target", st, b)
	}
	waitFor(t, "the old target cut off at the delay", 5*time.Second, func() bool {
		return len(matching(logs, "target "+b+" removed and drained")) == 1
	})
	if n := retired.Load(); n != 0 {
		t.Errorf("OnRetire called %d times; want none while the address is back", n)
	}
}
