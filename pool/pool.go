// Package pool is a named set of targets that requests are balanced over, as Caddy splits
// an Upstream (what is configured) from a Host (what is live): a Config says which
// addresses the pool has and how they are checked, and each address has one Target
// holding everything live about it. Update applies a new Config and keeps the Target of
// every address that stays, so a reload loses no health, no passive ejection, no count of
// requests in flight and no rotation position.
//
// Health state is kept once. The health package judges (probes, and the ALB threshold
// state machine in health.Target) but keeps no targets; each pool Target owns the one
// health.Target of its address, and the pool runs a health.Checker loop on it. The
// balancing snapshot is derived from those states when one changes; nothing else stores
// whether a target is healthy.
//
// What the pool does with them:
//   - Round robin over the healthy targets, lock-free and allocation-free (Next): an
//     immutable snapshot published through an atomic pointer, one atomic load and one
//     atomic add per pick. With no healthy target it fails open to all targets, as an
//     ALB does, and logs entering and leaving fail-open once, with the pool's name.
//   - Passive outlier detection (ReportFailure), as Envoy's: consecutive failed requests
//     eject a target for a while; active checks passing healthy_threshold times in a row
//     since the ejection restore it earlier.
//   - Draining: a target an Update removed gets no new requests; it is retired when its
//     requests in flight reach zero or its deregistration delay ends, whichever is first.
//     At the delay's end, requests still running are cancelled through Target.Retired
//     with cause ErrDeregistered, and Options.OnRetire lets the data path break its own
//     connections.
//
// A pool is the unit routing rules point at: it has a Name, and several can run side by
// side (edge's HTTP pool, one per passthrough entry).
package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"edgeproxy/balance"
	"edgeproxy/health"
)

// ErrDeregistered is the cause of a Target's Retired context when the target's
// deregistration delay ended with requests still in flight: they are cut off because the
// target left the pool, not because their client went away.
var ErrDeregistered = errors.New("pool: target deregistered: deregistration delay ended")

// Config is a pool as configured. Update applies a new one.
type Config struct {
	// Name names the pool in logs and, later, in routing rules. A pool keeps the name it
	// was made with; Update does not rename it.
	Name string
	// Targets are the "host:port" addresses, in order.
	Targets []string
	// Health holds the active checks' settings (its Observer and Logger are the pool's
	// Options'). A zero Interval means no active checks: every target counts as healthy,
	// and only passive detection takes one out.
	Health health.Options
	// Passive configures outlier detection; the zero value turns it off.
	Passive Passive
	// DeregistrationDelay bounds how long a removed target's requests may run on.
	DeregistrationDelay time.Duration
	// Balance is the selection policy; "" means round robin.
	Balance balance.Name
	// Weights are the targets' weights by address for the weighted policy (and the least
	// outstanding one); an address not listed weighs 1.
	Weights map[string]int
	// SlowStart ramps the share of a target that joins or comes back healthy; the zero
	// value is off.
	SlowStart balance.SlowStart
}

// Passive configures outlier detection from real traffic, as Envoy's does: after
// ConsecutiveFailures failed requests in a row a target is ejected for EjectionTime, times
// the number of ejections in a row (at most 10×), unless restored earlier.
type Passive struct {
	ConsecutiveFailures int
	EjectionTime        time.Duration
}

// Observer receives a pool's events for metrics: every health check and transition, and
// every passive ejection.
type Observer interface {
	health.Observer
	// PassiveEjection is called when passive outlier detection ejects target.
	PassiveEjection(target string)
}

// Options are what a pool is wired to; they do not change with Update.
type Options struct {
	// Observer receives metrics; nil means none.
	Observer Observer
	// Logger receives health transitions, fail-open and draining; nil means none.
	Logger *slog.Logger
	// OnRetire is called with the address of a removed target once it is retired, after
	// its Retired context is cancelled: the place to break the data path's own
	// connections to it and forget its metrics. It is not called when the address is
	// back in the pool by then. It may be called from Update itself (a target with
	// nothing in flight retires at once), so it must not wait for the caller of Update.
	// Nil means none.
	OnRetire func(addr string)
}

// Pool is a named, balanced, checked set of targets. Use New, then Start.
type Pool struct {
	name     string
	log      *slog.Logger
	obs      Observer
	onRetire func(addr string)
	checker  *health.Checker

	snap    atomic.Pointer[snapshot]
	picker  atomic.Pointer[policy]
	passive atomic.Pointer[Passive] // nil when off

	// mu serialises writers (Start, Update, health changes, retirements); the request
	// path never takes it.
	mu          sync.Mutex
	cfg         Config
	targets     []*Target // as configured, in order
	draining    []*Target // removed, not yet retired
	ctx         context.Context
	failingOpen bool
	wg          sync.WaitGroup // check loops and drains
}

// policy is the pool's selection policy and the settings it was made for; Update makes a
// new one only when they change, so that rotation state survives other reloads.
type policy struct {
	name balance.Name
	slow balance.SlowStart
	pick balance.Picker[*Target]
}

// snapshot is an immutable view of the pool. Neither slice is modified once published.
type snapshot struct {
	all     []*Target
	healthy []*Target
}

// New returns the pool cfg describes. Its targets start in state initial (not healthy,
// so requests fail open to all of them until checks pass), or healthy when cfg has no
// active checks. Nothing is checked until Start.
func New(cfg Config, opts Options) *Pool {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{name: cfg.Name, log: log, obs: opts.Observer, onRetire: opts.OnRetire}
	h := cfg.Health
	h.Observer, h.Logger = nil, log.With("pool", cfg.Name)
	if opts.Observer != nil {
		h.Observer = opts.Observer
	}
	p.checker = health.New(h)
	if p.obs == nil {
		p.obs = nopObserver{}
	}
	p.Update(cfg)
	return p
}

// Config is the configuration in effect.
func (p *Pool) Config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Name is the pool's name.
func (p *Pool) Name() string { return p.name }

// Start begins the active checks; they stop, and drains still waiting end, when ctx is
// done. Wait then waits for them.
func (p *Pool) Start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ctx = ctx
	for _, t := range p.targets {
		p.startChecks(t)
	}
}

// Wait blocks until every check loop and drain has returned (after the Start context is
// done).
func (p *Pool) Wait() { p.wg.Wait() }

// Update applies cfg (a reload): addresses that stay keep their Target and all its state,
// new ones are checked at once and join after their first passing check, removed ones
// drain (see the package doc). The health-check, passive and deregistration settings
// apply from now on.
func (p *Pool) Update(cfg Config) {
	var retireNow []*Target
	defer func() {
		for _, t := range retireNow {
			p.retire(t, 0)
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	cfg.Name = p.name
	p.cfg = cfg
	if p.snap.Load() != nil { // not the first configuration: New built the checker with it
		p.checker.Reconfigure(cfg.Health)
	}
	if pc := cfg.Passive; pc.ConsecutiveFailures > 0 {
		p.passive.Store(&pc)
	} else {
		p.passive.Store(nil)
	}
	if cur := p.picker.Load(); cur == nil || cur.name != cfg.Balance || cur.slow != cfg.SlowStart {
		p.picker.Store(&policy{name: cfg.Balance, slow: cfg.SlowStart, pick: balance.New[*Target](cfg.Balance, cfg.SlowStart)})
	}

	prev := p.targets
	old := make(map[string]*Target, len(prev))
	for _, t := range prev {
		old[t.Addr] = t
	}
	targets := make([]*Target, 0, len(cfg.Targets))
	for _, a := range cfg.Targets {
		t := old[a]
		if t == nil {
			t = newTarget(a, p.checked())
		}
		delete(old, a)
		w := 1
		if cw, ok := cfg.Weights[a]; ok && cw > 0 {
			w = cw
		}
		t.weight.Store(int32(w))
		targets = append(targets, t)
		if !p.checked() && t.stopChecks != nil { // checks turned off
			t.stopChecks()
			t.stopChecks = nil
			t.health.Set(health.Healthy)
		}
		p.startChecks(t)
	}
	p.targets = targets
	for _, t := range prev {
		if old[t.Addr] == t && p.drain(t) {
			retireNow = append(retireNow, t)
		}
	}
	p.publish()
}

// checked reports whether the configuration has active checks; p.mu must be held.
func (p *Pool) checked() bool { return p.cfg.Health.Interval > 0 }

// startChecks starts t's check loop if checks are on, the pool started and none runs;
// p.mu must be held.
func (p *Pool) startChecks(t *Target) {
	if p.ctx == nil || p.ctx.Err() != nil || !p.checked() || t.stopChecks != nil {
		return
	}
	ctx, cancel := context.WithCancel(p.ctx)
	t.stopChecks = cancel
	hooks := health.Hooks{
		OnChange: func(bool) { p.healthChanged() },
		OnProven: func() { p.proven(t) },
	}
	p.wg.Go(func() { p.checker.Run(ctx, t.Addr, t.health, hooks) })
}

// healthChanged republishes the snapshot after a target's health changed.
func (p *Pool) healthChanged() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.publish()
}

// proven ends t's passive ejection once active checks have passed healthy_threshold times
// in a row since it began.
func (p *Pool) proven(t *Target) {
	if t.Ejected() {
		p.Restore(t)
		p.log.Info("target "+t.Addr+" back from passive ejection: active checks pass", "target", t.Addr, "pool", p.name)
	}
}

// publish builds and swaps in a new snapshot, and logs entering or leaving fail-open;
// p.mu must be held.
func (p *Pool) publish() {
	s := &snapshot{all: p.targets}
	unhealthy := false
	wasHealthy := map[*Target]bool{}
	if prev := p.snap.Load(); prev != nil {
		for _, t := range prev.healthy {
			wasHealthy[t] = true
		}
	}
	// Joined, or back: slow start ramps from now, unless no other target was healthy, as on
	// an ALB: such a target takes all the traffic at once, and must not be held back when
	// others join later. 0 means no slow start.
	now := time.Now().UnixNano()
	if len(wasHealthy) == 0 {
		now = 0
	}
	for _, t := range p.targets {
		if t.Healthy() {
			if !wasHealthy[t] {
				t.since.Store(now)
			}
			s.healthy = append(s.healthy, t)
		} else if t.health.Status().State == health.Unhealthy {
			unhealthy = true
		}
	}
	p.snap.Store(s)
	// Targets not checked yet are no news: fail-open is entered when checks found no
	// target healthy.
	switch {
	case len(s.healthy) == 0 && unhealthy && !p.failingOpen:
		p.failingOpen = true
		p.log.Warn("no healthy target: failing open, requests go to all targets", "pool", p.name)
	case len(s.healthy) > 0 && p.failingOpen:
		p.failingOpen = false
		p.log.Info("a target is healthy again: fail-open over", "pool", p.name)
	}
}

// Pick is the result of Next.
type Pick struct {
	// Target is nil only when the pool is empty.
	Target *Target
	// FailOpen is true when no target was healthy and the pick was made among all targets,
	// as an ALB does when every target fails its health checks.
	FailOpen bool
}

// Next returns the target the pool's policy picks among the healthy ones, leaving out
// targets ejected by passive outlier detection (unless all are). If none is healthy it
// picks among all targets and says so in Pick.FailOpen. With round robin, over M calls
// with N healthy, non-ejected targets and no changes, each target is picked M/N rounded up
// or down.
func (p *Pool) Next() Pick {
	s := p.snap.Load()
	pick := p.picker.Load().pick
	if len(s.healthy) > 0 {
		eligible := s.healthy
		for i, t := range s.healthy {
			if t.ejectedUntil.Load() != 0 && t.Ejected() {
				eligible = withoutEjected(s.healthy, i)
				break
			}
		}
		if len(eligible) == 0 {
			eligible = s.healthy // every healthy target ejected: ejection must not empty the pool
		}
		return Pick{Target: pick.Pick(eligible)}
	}
	if len(s.all) == 0 {
		return Pick{}
	}
	return Pick{Target: pick.Pick(s.all), FailOpen: true}
}

// withoutEjected returns the targets of ts not ejected now, knowing ts[first] is the
// first ejected one. It allocates: ejections are rare, and the common case (none) never
// gets here.
func withoutEjected(ts []*Target, first int) []*Target {
	out := make([]*Target, 0, len(ts)-1)
	out = append(out, ts[:first]...)
	for _, t := range ts[first+1:] {
		if !t.Ejected() {
			out = append(out, t)
		}
	}
	return out
}

// NextExcept is Next, avoiding target t when another choice exists; for retries.
func (p *Pool) NextExcept(t *Target) Pick {
	s := p.snap.Load()
	for i := 0; i <= len(s.all); i++ {
		pk := p.Next()
		if pk.Target != t {
			return pk
		}
	}
	return p.Next()
}

// ReportSuccess records a request that got a response from t.
func (p *Pool) ReportSuccess(t *Target) {
	if t.passiveFails.Load() != 0 {
		t.passiveFails.Store(0)
	}
}

// ReportFailure records a request to t that failed at the connection level (refused,
// reset, response-head timeout). It reports whether this failure ejected t; an ejection
// is counted by the Observer and restarts t's count of passing checks, so that only
// checks from then on can restore it.
func (p *Pool) ReportFailure(t *Target) (ejected bool) {
	pc := p.passive.Load()
	if pc == nil || pc.ConsecutiveFailures <= 0 {
		return false
	}
	if int(t.passiveFails.Add(1)) < pc.ConsecutiveFailures || t.Ejected() {
		return false
	}
	t.passiveFails.Store(0)
	n := min(t.ejections.Add(1), 10)
	t.ejectedUntil.Store(time.Now().Add(time.Duration(n) * pc.EjectionTime).UnixNano())
	p.obs.PassiveEjection(t.Addr)
	if t.health != nil {
		t.health.ResetPasses()
	}
	return true
}

// Restore ends t's ejection, as active checks do when they show it healthy again.
func (p *Pool) Restore(t *Target) {
	t.ejectedUntil.Store(0)
	t.ejections.Store(0)
}

// Lookup returns the current target with address addr, or nil.
func (p *Pool) Lookup(addr string) *Target {
	for _, t := range p.snap.Load().all {
		if t.Addr == addr {
			return t
		}
	}
	return nil
}

// Targets returns the current targets in configuration order. The slice must not be
// modified.
func (p *Pool) Targets() []*Target { return p.snap.Load().all }

// Status is a target's health and its live balancing state, as /targets shows them.
type Status struct {
	health.Status
	// Balancing is nil for a status that is only health (passthrough's targets).
	*Balancing
}

// Balancing is what a pool's balancing knows of a target now.
type Balancing struct {
	// Weight is the configured weight (1 unless the pool is weighted).
	Weight int `json:"weight"`
	// InFlight is the number of requests in flight to the target.
	InFlight int64 `json:"in_flight"`
	// SlowStartUntil is when the target's slow start ends, while its share ramps; nil
	// otherwise.
	SlowStartUntil *time.Time `json:"slow_start_until,omitempty"`
	// EjectedUntil is when the target's passive ejection ends at the latest (passing
	// active checks end it earlier); nil when it is not ejected.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
}

// Statuses returns the health and balancing state of every target, draining ones
// included (state draining), sorted by address.
func (p *Pool) Statuses() []Status {
	now := time.Now()
	p.mu.Lock()
	slow := p.cfg.SlowStart.Duration
	out := make([]Status, 0, len(p.targets)+len(p.draining))
	live := make(map[string]bool, len(p.targets))
	for _, t := range p.targets {
		live[t.Addr] = true
		out = append(out, t.status(now, slow))
	}
	for _, t := range p.draining {
		if !live[t.Addr] { // removed, then added back: the new target stands for it
			out = append(out, t.status(now, slow))
		}
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// nopObserver is the Observer of a pool given none.
type nopObserver struct{}

func (nopObserver) HealthCheck(string, bool, string) {}
func (nopObserver) TargetHealthy(string, bool)       {}
func (nopObserver) PassiveEjection(string)           {}

// drain takes t, just removed, out of checking and starts its drain. It reports whether t
// has nothing in flight and is to be retired at once; p.mu must be held.
func (p *Pool) drain(t *Target) (now bool) {
	if t.stopChecks != nil {
		t.stopChecks()
		t.stopChecks = nil
	}
	t.health.Set(health.Draining)
	p.draining = append(p.draining, t)
	if t.InFlight() == 0 {
		return true
	}
	ctx := p.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	delay := p.cfg.DeregistrationDelay
	p.wg.Go(func() { p.waitDrained(ctx, t, delay) })
	return false
}

// waitDrained waits until t has no request in flight or its deregistration delay ends
// (then logs the requests it cuts off), or ctx is done, and retires t.
func (p *Pool) waitDrained(ctx context.Context, t *Target, delay time.Duration) {
	start := time.Now()
	deadline := time.NewTimer(delay)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for t.InFlight() > 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			n := t.InFlight()
			p.log.Warn(fmt.Sprintf("target %s removed from pool %s: deregistration delay ended after %v with %d request(s) in flight; cancelling them", t.Addr, p.name, delay, n),
				"target", t.Addr, "pool", p.name, "in_flight", n)
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	p.retire(t, time.Since(start))
}

// retire cancels what still runs to t, forgets it and tells OnRetire, unless its
// address is back in the pool.
func (p *Pool) retire(t *Target, after time.Duration) {
	t.retire(ErrDeregistered)
	p.mu.Lock()
	for i, d := range p.draining {
		if d == t {
			p.draining = append(p.draining[:i:i], p.draining[i+1:]...)
			break
		}
	}
	back := false
	for _, u := range p.targets {
		back = back || u.Addr == t.Addr
	}
	p.mu.Unlock()
	if !back && p.onRetire != nil {
		p.onRetire(t.Addr)
	}
	p.log.Info(fmt.Sprintf("target %s removed and drained after %v", t.Addr, after.Round(time.Millisecond)), "target", t.Addr, "pool", p.name)
}
