package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

func TestLock_Exclusive(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	ctx := context.Background()
	a := newTestStore(t, testOptions(r))
	b := newTestStore(t, testOptions(r))

	la, err := a.Lock(ctx, "order:a.test")
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	// Held past its TTL, because it is refreshed.
	time.Sleep(a.opts.LockTTL * 3 / 2)
	if _, err := b.TryLock(ctx, "order:a.test"); !errors.Is(err, ErrLockHeld) {
		t.Fatalf("TryLock of a held lock: got %v; want ErrLockHeld", err)
	}
	if la.Context().Err() != nil {
		t.Fatalf("the holder's context ended while it held the lock: %v", context.Cause(la.Context()))
	}
	other, err := b.TryLock(ctx, "order:b.test")
	if err != nil {
		t.Fatalf("TryLock of another name: %v", err)
	}
	defer other.Unlock(ctx)

	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := b.Lock(wctx, "order:a.test"); err == nil || !strings.Contains(err.Error(), "gave up waiting") {
		t.Fatalf("Lock bounded by a context: got %v; want it to give up", err)
	}
	if err := la.Unlock(ctx); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if la.Context().Err() == nil {
		t.Fatal("the lock's context is not done after Unlock")
	}
	lb, err := b.TryLock(ctx, "order:a.test")
	if err != nil {
		t.Fatalf("TryLock after Unlock: %v", err)
	}
	// A stale holder's release cannot delete the new owner's lock.
	if err := la.Unlock(ctx); err != nil {
		t.Fatalf("second Unlock: got %v; want nil (does nothing)", err)
	}
	if _, err := a.TryLock(ctx, "order:a.test"); !errors.Is(err, ErrLockHeld) {
		t.Fatalf("TryLock after a stale Unlock: got %v; want ErrLockHeld", err)
	}
	if err := lb.Unlock(ctx); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

// Issue 15: a holder that dies (stops refreshing, no release) does not block the fleet:
// another replica takes the lock within the TTL plus one retry.
func TestLock_HolderDies_OtherTakesOverWithinTTL(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	ctx := context.Background()
	a := newTestStore(t, testOptions(r))
	b := newTestStore(t, testOptions(r))

	la, err := a.Lock(ctx, "order:a.test")
	if err != nil {
		t.Fatal(err)
	}
	la.abandon()
	start := time.Now()
	// The bound: TTL + one retry, plus slack for a loaded machine.
	bound := b.opts.LockTTL + b.opts.LockRetry + 500*time.Millisecond
	wctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	lb, err := b.Lock(wctx, "order:a.test")
	if err != nil {
		t.Fatalf("Lock after the holder died: %v (bound %v)", err, bound)
	}
	t.Logf("taken over after %v (TTL %v, retry %v)", time.Since(start).Round(time.Millisecond), b.opts.LockTTL, b.opts.LockRetry)
	if err := lb.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// Issue 15: a holder whose lock was taken over learns it and stops, instead of finishing
// as if it were still the owner.
func TestLock_Lost(t *testing.T) {
	t.Run("taken over", func(t *testing.T) {
		r := testutil.StartRedis(t, testutil.RedisOptions{})
		ctx := context.Background()
		a := newTestStore(t, testOptions(r))
		la, err := a.Lock(ctx, "order:a.test")
		if err != nil {
			t.Fatal(err)
		}
		// As if the TTL had run out while the holder was paused and another took it.
		if err := rawClient(t, r).Set(ctx, a.lockKey("order:a.test"), "another owner", 0).Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-la.Context().Done():
		case <-time.After(a.opts.LockTTL):
			t.Fatalf("the holder's context is not done within the TTL after the lock was taken over")
		}
		cause := context.Cause(la.Context())
		if !errors.Is(cause, ErrLockLost) || !strings.Contains(cause.Error(), "held by another replica") {
			t.Fatalf("cause: got %v; want ErrLockLost, held by another replica", cause)
		}
		if err := la.Unlock(ctx); !errors.Is(err, ErrLockLost) {
			t.Fatalf("Unlock of a lost lock: got %v; want ErrLockLost", err)
		}
		if v, _ := rawClient(t, r).Get(ctx, a.lockKey("order:a.test")).Result(); v != "another owner" {
			t.Fatalf("the new owner's lock is %q after the old holder's Unlock; want it kept", v)
		}
	})
	t.Run("Redis unreachable", func(t *testing.T) {
		r := testutil.StartRedis(t, testutil.RedisOptions{})
		ctx := context.Background()
		a := newTestStore(t, testOptions(r))
		acquired := time.Now()
		la, err := a.Lock(ctx, "order:a.test")
		if err != nil {
			t.Fatal(err)
		}
		r.Stop()
		select {
		case <-la.Context().Done():
		case <-time.After(2 * a.opts.LockTTL):
			t.Fatalf("the holder's context is not done while Redis is down")
		}
		// The holder must be told before the TTL of its last refresh (here: the
		// acquisition) runs out, that is before another replica could take the lock; it
		// is told LockTTL/10 before.
		if lost := time.Since(acquired); lost >= a.opts.LockTTL {
			t.Errorf("told of the loss %v after acquiring; the lock may have expired %v after acquiring", lost, a.opts.LockTTL)
		}
		cause := context.Cause(la.Context())
		if !errors.Is(cause, ErrLockLost) || !strings.Contains(cause.Error(), "could not be refreshed") {
			t.Fatalf("cause: got %v; want ErrLockLost, could not be refreshed", cause)
		}
	})
}
