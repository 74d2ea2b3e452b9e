package pool

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"edgeproxy/health"
)

func addrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("127.0.0.%d:8000", i+1)
	}
	return out
}

// checkedConfig is a pool of addrs with active checks configured; tests that do not
// Start the pool set the health themselves (setHealthy).
func checkedConfig(addrs []string) Config {
	return Config{Name: "test", Targets: addrs, Health: health.Options{Interval: time.Hour, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 2}}
}

// unchecked returns a pool over addrs, not started: every target is initial.
func unchecked(addrs []string) *Pool { return New(checkedConfig(addrs), Options{}) }

// setHealthy puts addr's target in state healthy or unhealthy, as checks would, and
// republishes.
func setHealthy(p *Pool, addr string, healthy bool) {
	s := health.Unhealthy
	if healthy {
		s = health.Healthy
	}
	p.Lookup(addr).health.Set(s)
	p.healthChanged()
}

func healthyBalancer(n int) *Pool {
	b := unchecked(addrs(n))
	for _, a := range addrs(n) {
		setHealthy(b, a, true)
	}
	return b
}

// Over M requests and N healthy targets each gets M/N ± 1, also with concurrent callers.
func TestRoundRobin_SpreadsEvenly(t *testing.T) {
	for _, tc := range []struct{ n, m, workers int }{{3, 3000, 1}, {3, 3001, 8}, {5, 997, 4}, {1, 10, 2}} {
		t.Run(fmt.Sprintf("N=%d,M=%d,workers=%d", tc.n, tc.m, tc.workers), func(t *testing.T) {
			b := healthyBalancer(tc.n)
			var mu sync.Mutex
			counts := map[string]int{}
			var wg sync.WaitGroup
			per := tc.m / tc.workers
			for w := 0; w < tc.workers; w++ {
				calls := per
				if w == 0 {
					calls += tc.m % tc.workers
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					local := map[string]int{}
					for i := 0; i < calls; i++ {
						local[b.Next().Target.Addr]++
					}
					mu.Lock()
					for k, v := range local {
						counts[k] += v
					}
					mu.Unlock()
				}()
			}
			wg.Wait()
			lo, hi := tc.m/tc.n, (tc.m+tc.n-1)/tc.n
			for _, a := range addrs(tc.n) {
				if c := counts[a]; c < lo || c > hi {
					t.Errorf("target %s got %d picks; want %d..%d (counts %v)", a, c, lo, hi, counts)
				}
			}
		})
	}
}

func TestRoundRobin_SkipsUnhealthy(t *testing.T) {
	b := healthyBalancer(3)
	setHealthy(b, "127.0.0.2:8000", false)
	for i := 0; i < 100; i++ {
		p := b.Next()
		if p.Target.Addr == "127.0.0.2:8000" || p.FailOpen {
			t.Fatalf("got %+v; want a healthy target, not fail-open", p)
		}
	}
}

// With no healthy target, traffic goes to all targets, as an ALB fails open.
func TestRoundRobin_FailsOpenWhenNoneHealthy(t *testing.T) {
	b := unchecked(addrs(2))
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		p := b.Next()
		if !p.FailOpen {
			t.Fatalf("pick %d: FailOpen false; want true", i)
		}
		seen[p.Target.Addr] = true
	}
	if len(seen) != 2 {
		t.Errorf("fail-open picked %v; want both targets", seen)
	}
}

func TestNext_EmptyPool(t *testing.T) {
	if p := unchecked(nil).Next(); p.Target != nil {
		t.Errorf("got %v; want no target", p.Target)
	}
}

// A reload keeps the health of targets that stay; new ones start unhealthy.
func TestUpdate_KeepsHealthOfRemainingTargets(t *testing.T) {
	b := healthyBalancer(2)
	b.Update(checkedConfig([]string{"127.0.0.2:8000", "127.0.0.9:8000"}))
	ts := b.Targets()
	if !ts[0].Healthy() || ts[1].Healthy() {
		t.Errorf("got healthy %v,%v; want true,false", ts[0].Healthy(), ts[1].Healthy())
	}
	if p := b.Next(); p.Target.Addr != "127.0.0.2:8000" {
		t.Errorf("got %s; want the only healthy target", p.Target.Addr)
	}
}

func BenchmarkNext(b *testing.B) {
	bal := healthyBalancer(3)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = bal.Next()
		}
	})
}

// A target that becomes healthy while another is gets slow start, and keeps its ramp's
// end across a reload; the first target healthy in a pool has no one to share with and
// gets none, as on an ALB, so it is not held back when the second joins.
func TestSlowStart_OnlyBesideAHealthyTargetAndKeptAcrossUpdate(t *testing.T) {
	cfg := checkedConfig(addrs(2))
	cfg.SlowStart.Duration = time.Minute
	p := New(cfg, Options{})
	a, b := addrs(2)[0], addrs(2)[1]
	slowUntil := func(addr string) *time.Time {
		for _, s := range p.Statuses() {
			if s.Address == addr {
				return s.SlowStartUntil
			}
		}
		t.Fatalf("%s not in Statuses", addr)
		return nil
	}
	setHealthy(p, a, true)
	if u := slowUntil(a); u != nil {
		t.Errorf("first healthy target in slow start until %v; want none", u)
	}
	joined := time.Now()
	setHealthy(p, b, true)
	u := slowUntil(b)
	if u == nil || u.Before(joined.Add(time.Minute-time.Second)) || u.After(time.Now().Add(time.Minute)) {
		t.Fatalf("second target slow start until %v; want about a minute from %v", u, joined)
	}
	p.Update(cfg)
	if got := slowUntil(b); got == nil || !got.Equal(*u) {
		t.Errorf("after Update slow start until %v; want %v kept", got, *u)
	}
	// Its share ramps from the floor: far fewer picks than a's at first.
	n := map[string]int{}
	for range 1000 {
		n[p.Next().Target.Addr]++
	}
	if n[b] > 200 {
		t.Errorf("picks %v; want b (just joined) near 10%% of a's", n)
	}
}
