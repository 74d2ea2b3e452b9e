package pool

import (
	"context"
	"sync/atomic"
	"time"

	"edgeproxy/health"
)

// Target is one backend of a pool and its live state: health (the one copy, see the
// package doc), requests in flight, passive-ejection counters and its retirement. A pool
// keeps the same Target for an address across every Update that keeps the address.
// Target values must not be copied.
type Target struct {
	// Addr is the dial address, "host:port".
	Addr string

	// health is the target's health state; nil only for a Target made outside a pool.
	health *health.Target

	inFlight atomic.Int64
	weight   atomic.Int32 // the configured weight; 0 outside a pool means 1
	since    atomic.Int64 // unix nanoseconds when it last became healthy; 0 unknown

	// Passive outlier detection (see Pool.ReportFailure).
	passiveFails atomic.Int32 // consecutive failed requests
	ejections    atomic.Int32 // ejections in a row without a restore; scales the backoff
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when not ejected

	// retired is done when the target, removed by an Update, has drained or used up its
	// deregistration delay; its cause is ErrDeregistered.
	retired context.Context
	retire  context.CancelCauseFunc

	// stopChecks ends the target's health checks; nil while none run. Guarded by the
	// pool's mu.
	stopChecks context.CancelFunc
}

func newTarget(addr string, checked bool) *Target {
	ctx, cancel := context.WithCancelCause(context.Background())
	h := health.NewTarget(addr)
	if !checked {
		h.Set(health.Healthy) // no active checks: healthy unless passive detection ejects it
	}
	return &Target{Addr: addr, health: h, retired: ctx, retire: cancel}
}

// Healthy reports whether the target's health state is healthy.
func (t *Target) Healthy() bool { return t.health != nil && t.health.Healthy() }

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

// Weight is the target's configured weight (1 unless the pool is weighted).
func (t *Target) Weight() int { return max(int(t.weight.Load()), 1) }

// Since is when the target last became healthy (joined, or came back): slow start ramps
// its share from then. Zero when unknown.
func (t *Target) Since() time.Time {
	if n := t.since.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// status is t's Status at now, with slow start lasting slow.
func (t *Target) status(now time.Time, slow time.Duration) Status {
	b := &Balancing{Weight: t.Weight(), InFlight: t.InFlight()}
	if since := t.Since(); slow > 0 && !since.IsZero() && t.Healthy() && now.Before(since.Add(slow)) {
		end := since.Add(slow).UTC()
		b.SlowStartUntil = &end
	}
	if until := t.ejectedUntil.Load(); until != 0 && now.UnixNano() < until {
		end := time.Unix(0, until).UTC()
		b.EjectedUntil = &end
	}
	return Status{Status: t.health.Status(), Balancing: b}
}

// Retired is done once the target was removed from its pool and retired: its requests
// drained, or its deregistration delay ended (then requests still running to it are to be
// cancelled). Its context.Cause is then ErrDeregistered, which tells such a cancellation
// from a client that left. For a Target not made by a Pool it is never done.
func (t *Target) Retired() context.Context {
	if t.retired == nil {
		return context.Background()
	}
	return t.retired
}
