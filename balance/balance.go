// Package balance holds the target-selection policies of a pool, kept apart from health
// state (package pool) and from transport: round robin, smooth weighted round robin, and
// least outstanding requests (power of two choices), each aware of slow start. A policy
// sees only the targets eligible now (healthy and not ejected, or all of them when the
// pool fails open) and returns the index of the one to use.
package balance

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Target is what a policy needs to know of a target.
type Target interface {
	// InFlight is the number of requests in flight to the target.
	InFlight() int64
	// Weight is the configured weight (1 unless the pool is weighted).
	Weight() int
	// Since is when the target joined or last came back healthy: slow start ramps its
	// share from then.
	Since() time.Time
}

// Name says which policy a pool uses; the config key pools.NAME.balance.
type Name string

// The policies, by their config names (ALB's for least outstanding requests).
const (
	RoundRobin       Name = "round_robin"
	LeastOutstanding Name = "least_outstanding_requests"
	Weighted         Name = "weighted"
)

// SlowStart ramps the share of a target that joins or comes back healthy, as an ALB
// target group's slow_start.duration_seconds does: linearly from Floor to full over
// Duration. The zero value is off.
type SlowStart struct {
	Duration time.Duration
	// Floor is the share at the start, as a fraction of full; 0 means DefaultFloor.
	Floor float64
}

// DefaultFloor is the share a target starts slow start with: small, but never zero, so
// that a recovering target is probed by real traffic at once.
const DefaultFloor = 0.1

// factor is the share of a target that became eligible at since, at now: 1 when slow
// start is off or over.
func (s SlowStart) factor(since, now time.Time) float64 {
	if s.Duration <= 0 || since.IsZero() || now.IsZero() {
		return 1
	}
	el := now.Sub(since)
	if el >= s.Duration {
		return 1
	}
	if el < 0 {
		el = 0
	}
	floor := s.Floor
	if floor <= 0 {
		floor = DefaultFloor
	}
	return floor + (1-floor)*float64(el)/float64(s.Duration)
}

// Picker chooses among eligible targets. Pick is safe for concurrent use; targets must not
// be empty.
type Picker[T Target] interface {
	Pick(targets []T) T
}

// Comparable is a Target that can key a policy's state (a pointer, in practice).
type Comparable interface {
	Target
	comparable
}

// New returns the picker for a policy, with slow start s.
func New[T Comparable](name Name, s SlowStart) Picker[T] {
	switch name {
	case LeastOutstanding:
		return &leastOutstanding[T]{slow: s}
	case Weighted:
		return &smoothWeighted[T]{slow: s}
	}
	return &roundRobin[T]{slow: s, weighted: smoothWeighted[T]{slow: s}}
}

// roundRobin takes the targets in turn with one atomic add, as the single-pool edge always
// did. While some target is in slow start it defers to smooth weighted round robin over
// equal weights scaled by the ramp, so the share rises linearly.
type roundRobin[T Comparable] struct {
	next     atomic.Uint64
	slow     SlowStart
	weighted smoothWeighted[T]
}

func (r *roundRobin[T]) Pick(targets []T) T {
	if len(targets) > 1 && r.slow.Duration > 0 {
		now := time.Now()
		for _, t := range targets {
			if r.slow.factor(t.Since(), now) < 1 {
				return r.weighted.pick(targets, now, true)
			}
		}
	}
	n := r.next.Add(1) - 1
	return targets[n%uint64(len(targets))]
}

// smoothWeighted is nginx's smooth weighted round robin: each pick adds every target's
// effective weight to its running score, takes the highest, and subtracts the total from
// it; over a cycle each target gets its weight's share, spread evenly rather than in
// bursts. Effective weight is the configured weight times the slow-start ramp.
type smoothWeighted[T Comparable] struct {
	slow SlowStart
	mu   sync.Mutex
	// set is the eligible set of the last pick and score each one's running score, in
	// the same order; when the set changes, scores carry over by target.
	set   []T
	score []int64
}

func (w *smoothWeighted[T]) Pick(targets []T) T {
	var now time.Time
	if w.slow.Duration > 0 {
		now = time.Now()
	}
	return w.pick(targets, now, false)
}

// pick runs one round; equal treats every configured weight as 1 (round robin with slow
// start).
func (w *smoothWeighted[T]) pick(targets []T, now time.Time, equal bool) T {
	if len(targets) == 1 {
		return targets[0]
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.follow(targets)
	var total int64
	best := -1
	var bestScore int64
	for i, t := range targets {
		weight := 1
		if !equal {
			weight = max(t.Weight(), 1)
		}
		// Weights in thousandths, so that a slow-start ramp is smooth.
		eff := int64(weight * 1000)
		if w.slow.Duration > 0 {
			eff = max(int64(float64(eff)*w.slow.factor(t.Since(), now)), 1)
		}
		total += eff
		w.score[i] += eff
		if best < 0 || w.score[i] > bestScore {
			best, bestScore = i, w.score[i]
		}
	}
	w.score[best] -= total
	return targets[best]
}

// follow makes w.set the eligible set targets, carrying each staying target's score.
func (w *smoothWeighted[T]) follow(targets []T) {
	if len(targets) == len(w.set) {
		same := true
		for i := range targets {
			if targets[i] != w.set[i] {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	score := make([]int64, len(targets))
	for i, t := range targets {
		for j, old := range w.set {
			if old == t {
				score[i] = w.score[j]
				break
			}
		}
	}
	w.set, w.score = append(w.set[:0:0], targets...), score
}

// leastOutstanding is ALB's least outstanding requests as the power of two choices: two
// distinct targets at random, the one with fewer requests in flight (relative to its
// weight and slow-start ramp) wins. Lock-free; it never starves a healthy target, since
// every target is drawn at random, and a slow target's queue makes it lose its draws.
type leastOutstanding[T Comparable] struct {
	slow SlowStart
}

func (l *leastOutstanding[T]) Pick(targets []T) T {
	n := len(targets)
	if n == 1 {
		return targets[0]
	}
	r := rand.Uint64() // one draw for both choices
	i := int(uint32(r) % uint32(n))
	j := int(uint32(r>>32) % uint32(n-1))
	if j >= i {
		j++
	}
	a, b := targets[i], targets[j]
	var now time.Time
	if l.slow.Duration > 0 {
		now = time.Now()
	}
	if l.load(b, now) < l.load(a, now) {
		return b
	}
	return a
}

// load is a target's in-flight requests per unit of effective weight; one more than in
// flight, so that a ramping target with none in flight still weighs in.
func (l *leastOutstanding[T]) load(t T, now time.Time) float64 {
	eff := float64(max(t.Weight(), 1)) * l.slow.factor(t.Since(), now)
	return float64(t.InFlight()+1) / eff
}
