// Package balancer picks the next target for a request: round robin over the healthy
// targets, never blocking and never taking a lock on the request path.
//
// The target set is an immutable snapshot published through an atomic pointer; a health
// change or a reload builds a new snapshot and swaps it in. A pick is one atomic load and one
// atomic add.
package balancer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Target is one backend. Its fields are read atomically; Target values must not be copied.
type Target struct {
	// Addr is the dial address, "host:port".
	Addr string

	healthy  atomic.Bool
	inFlight atomic.Int64

	// Passive outlier detection (see Balancer.ReportFailure).
	passiveFails atomic.Int32 // consecutive failed requests
	ejections    atomic.Int32 // ejections in a row without a restore; scales the backoff
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when not ejected

	// retired is done when the target, removed by a reload, has used up its
	// deregistration delay: requests still running to it are then cancelled.
	retired context.Context
	retire  context.CancelFunc
}

func newTarget(addr string) *Target {
	ctx, cancel := context.WithCancel(context.Background())
	return &Target{Addr: addr, retired: ctx, retire: cancel}
}

// Healthy reports whether the target's last published state is healthy.
func (t *Target) Healthy() bool { return t.healthy.Load() }

// Ejected reports whether passive outlier detection has taken the target out of rotation.
func (t *Target) Ejected() bool {
	until := t.ejectedUntil.Load()
	return until != 0 && time.Now().UnixNano() < until
}

// Begin counts a request in flight to the target; End ends it. The proxy calls both.
func (t *Target) Begin() { t.inFlight.Add(1) }

// End ends a request counted by Begin.
func (t *Target) End() { t.inFlight.Add(-1) }

// InFlight is the number of requests in flight to the target.
func (t *Target) InFlight() int64 { return t.inFlight.Load() }

// Retired is done once the target was removed and its deregistration delay is over. For a
// Target not made by a Balancer it is never done.
func (t *Target) Retired() context.Context {
	if t.retired == nil {
		return context.Background()
	}
	return t.retired
}

// Retire cancels the requests still in flight to a removed target.
func (t *Target) Retire() {
	if t.retire != nil {
		t.retire()
	}
}

// snapshot is an immutable view of the pool. Neither slice is modified once published.
type snapshot struct {
	all     []*Target
	healthy []*Target
}

// Balancer is a round-robin selector over a pool of targets. Use New.
type Balancer struct {
	snap  atomic.Pointer[snapshot]
	robin atomic.Uint32

	// passive holds the outlier-detection settings; nil means off.
	passive atomic.Pointer[Passive]

	// mu serialises writers (SetHealthy, SetTargets); readers never take it.
	mu      sync.Mutex
	targets []*Target
}

// New returns a balancer over addrs. Every target starts unhealthy, so until health checks
// pass, Next falls back to all targets (fail-open).
func New(addrs []string) *Balancer {
	b := &Balancer{}
	b.SetTargets(addrs)
	return b
}

// Pick is the result of Next.
type Pick struct {
	// Target is nil only when the pool is empty.
	Target *Target
	// FailOpen is true when no target was healthy and the pick was made among all targets,
	// as an ALB does when every target fails its health checks.
	FailOpen bool
}

// Next returns the next target in round-robin order among the healthy ones, skipping
// targets ejected by passive outlier detection (unless all are). If none is healthy it
// picks among all targets and says so in Pick.FailOpen. Over M calls with N healthy,
// non-ejected targets and no changes, each target is picked M/N rounded up or down.
func (b *Balancer) Next() Pick {
	s := b.snap.Load()
	n := b.robin.Add(1) - 1
	if k := uint32(len(s.healthy)); k > 0 {
		first := s.healthy[n%k]
		for i := uint32(0); i < k; i++ {
			// Skipping is Caddy's way: try the next one, at most len times.
			if t := s.healthy[(n+i)%k]; t.ejectedUntil.Load() == 0 || !t.Ejected() {
				return Pick{Target: t}
			}
		}
		return Pick{Target: first} // every healthy target ejected: ejection must not empty the pool
	}
	if len(s.all) == 0 {
		return Pick{}
	}
	return Pick{Target: s.all[n%uint32(len(s.all))], FailOpen: true}
}

// NextExcept is Next, avoiding target t when another choice exists; for retries.
func (b *Balancer) NextExcept(t *Target) Pick {
	s := b.snap.Load()
	for i := 0; i <= len(s.all); i++ {
		p := b.Next()
		if p.Target != t {
			return p
		}
	}
	return b.Next()
}

// Passive configures outlier detection from real traffic, as Envoy's does: after
// ConsecutiveFailures failed requests in a row a target is ejected for EjectionTime, times
// the number of ejections in a row (at most 10×), unless restored earlier.
type Passive struct {
	ConsecutiveFailures int
	EjectionTime        time.Duration
}

// SetPassive turns outlier detection on with p, or off with nil.
func (b *Balancer) SetPassive(p *Passive) { b.passive.Store(p) }

// ReportSuccess records a request that got a response from t.
func (b *Balancer) ReportSuccess(t *Target) {
	if t.passiveFails.Load() != 0 {
		t.passiveFails.Store(0)
	}
}

// ReportFailure records a request to t that failed at the connection level (refused,
// reset, response-head timeout). It reports whether this failure ejected t.
func (b *Balancer) ReportFailure(t *Target) (ejected bool) {
	p := b.passive.Load()
	if p == nil || p.ConsecutiveFailures <= 0 {
		return false
	}
	if int(t.passiveFails.Add(1)) < p.ConsecutiveFailures || t.Ejected() {
		return false
	}
	t.passiveFails.Store(0)
	n := min(t.ejections.Add(1), 10)
	t.ejectedUntil.Store(time.Now().Add(time.Duration(n) * p.EjectionTime).UnixNano())
	return true
}

// Restore ends t's ejection, when active checks have shown it healthy again.
func (b *Balancer) Restore(t *Target) {
	t.ejectedUntil.Store(0)
	t.ejections.Store(0)
}

// Lookup returns the current target with address addr, or nil.
func (b *Balancer) Lookup(addr string) *Target {
	for _, t := range b.snap.Load().all {
		if t.Addr == addr {
			return t
		}
	}
	return nil
}

// Targets returns the current targets in configuration order. The slice must not be modified.
func (b *Balancer) Targets() []*Target { return b.snap.Load().all }

// SetHealthy publishes a target's health. Unknown addresses are ignored, since a reload may
// have removed the target while its last check was running.
func (b *Balancer) SetHealthy(addr string, healthy bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range b.targets {
		if t.Addr == addr {
			if t.healthy.Swap(healthy) != healthy {
				b.publish()
			}
			return
		}
	}
}

// SetTargets replaces the pool with addrs, in that order, and returns the targets it
// removed: they get no new requests, and the caller drains them. Targets that stay keep
// their health state; new ones start unhealthy until a check passes.
func (b *Balancer) SetTargets(addrs []string) (removed []*Target) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := map[string]*Target{}
	for _, t := range b.targets {
		old[t.Addr] = t
	}
	targets := make([]*Target, 0, len(addrs))
	for _, a := range addrs {
		t := old[a]
		if t == nil {
			t = newTarget(a)
		}
		delete(old, a)
		targets = append(targets, t)
	}
	for _, t := range b.targets {
		if old[t.Addr] != nil {
			removed = append(removed, t)
		}
	}
	b.targets = targets
	b.publish()
	return removed
}

// publish builds and swaps in a new snapshot; b.mu must be held.
func (b *Balancer) publish() {
	s := &snapshot{all: b.targets}
	for _, t := range b.targets {
		if t.healthy.Load() {
			s.healthy = append(s.healthy, t)
		}
	}
	b.snap.Store(s)
}
