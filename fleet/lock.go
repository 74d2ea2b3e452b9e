package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrLockHeld is returned by TryLock when another replica holds the lock.
var ErrLockHeld = errors.New("fleet: lock held by another replica")

// The lock's scripts run atomically in Redis: a refresh or a release touches the key only
// while it still holds this holder's token, so a holder that lost the lock (its TTL ran
// out and another replica took it) can neither extend nor delete the new owner's lock.
var (
	refreshScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0`)
	releaseScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0`)
)

// Lock is a fleet-wide lock held by this replica, from Store.Lock or Store.TryLock. A
// goroutine refreshes it every LockTTL/3 until Unlock. Work done under the lock must use
// Context (or check it) and stop when it is done: it is cancelled, with a cause wrapping
// ErrLockLost, when a refresh finds another owner, or when no refresh succeeded in time
// to be sure that the TTL has not run out (then another replica may take the lock).
type Lock struct {
	s      *Store
	name   string
	token  string
	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   chan struct{} // closed by Unlock: the refresher returns
	done   chan struct{} // closed when the refresher has returned
	once   sync.Once
}

// Lock takes the lock name for this replica, waiting while another replica holds it:
// it tries again every LockRetry until ctx is done, so the caller bounds the wait with
// ctx. A waiter takes the lock of a holder that died within LockTTL plus one LockRetry.
// While Redis cannot be reached it tries again with backoff (LockRetry doubling up to
// RetryMax), each failure logged and counted. After taking it, re-read what the lock
// protects: the previous holder may have stored it.
func (s *Store) Lock(ctx context.Context, name string) (*Lock, error) {
	backoff := s.opts.LockRetry
	for {
		l, err := s.TryLock(ctx, name)
		if !errors.Is(err, ErrLockHeld) && (err == nil || ctx.Err() != nil) {
			return l, err
		}
		wait := s.opts.LockRetry
		if !errors.Is(err, ErrLockHeld) {
			wait, backoff = backoff, min(2*backoff, max(s.opts.RetryMax, s.opts.LockRetry))
		} else {
			backoff = s.opts.LockRetry
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("fleet: lock %q: gave up waiting (%v): %w", name, context.Cause(ctx), err)
		case <-time.After(wait):
		}
	}
}

// TryLock takes the lock name if no replica holds it, and returns an error wrapping
// ErrLockHeld if one does, without waiting.
func (s *Store) TryLock(ctx context.Context, name string) (*Lock, error) {
	token := newToken()
	ttl := s.opts.LockTTL
	sent := time.Now()
	octx, cancel := s.opCtx(ctx)
	ok, err := s.rdb.SetNX(octx, s.lockKey(name), token, ttl).Result()
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, s.fail("lock", name, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrLockHeld, name)
	}
	// Redis may have lost its data while nobody held a lock: have it back before the
	// holder re-reads what the lock protects.
	_, _ = s.checkEpoch(ctx)
	lctx, lcancel := context.WithCancelCause(context.WithoutCancel(ctx))
	l := &Lock{s: s, name: name, token: token, ctx: lctx, cancel: lcancel,
		stop: make(chan struct{}), done: make(chan struct{})}
	go l.refresh(sent.Add(ttl))
	return l, nil
}

// Context is cancelled when the lock is lost (context.Cause wraps ErrLockLost) or
// released. It does not derive from the context given to Lock, which bounds only the wait;
// work under the lock that must also stop with the caller combines the two.
func (l *Lock) Context() context.Context { return l.ctx }

// Name returns the lock's name.
func (l *Lock) Name() string { return l.name }

// refresh extends the lock every LockTTL/3 while it is held. validUntil is the earliest
// time the key may expire in Redis; the holder is told it lost the lock LockTTL/10 before
// that, so that it has stopped when another replica can take it.
func (l *Lock) refresh(validUntil time.Time) {
	defer close(l.done)
	s := l.s
	ttl := s.opts.LockTTL
	margin := ttl / 10
	wait := ttl / 3
	for {
		timer := time.NewTimer(min(wait, time.Until(validUntil.Add(-margin))))
		select {
		case <-l.stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		deadline := validUntil.Add(-margin)
		if !time.Now().Before(deadline) {
			l.cancel(fmt.Errorf("%w: %q could not be refreshed before its TTL ran out; another replica may hold it now", ErrLockLost, l.name))
			return
		}
		sent := time.Now()
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		n, err := refreshScript.Run(ctx, s.rdb, []string{s.lockKey(l.name)}, l.token, ttl.Milliseconds()).Int()
		cancel()
		switch {
		case err == nil && n == 1:
			validUntil = sent.Add(ttl)
			wait = ttl / 3
		case err == nil:
			l.cancel(fmt.Errorf("%w: %q is held by another replica now (or expired)", ErrLockLost, l.name))
			return
		default:
			s.fail("refresh", l.name, err)
			wait = s.opts.LockRetry // try again soon; the check above ends it in time
		}
	}
}

// Unlock releases the lock if this replica still holds it (compare-and-delete) and
// cancels Context. It returns an error wrapping ErrLockLost if the lock had been lost
// meanwhile; calling it again does nothing.
func (l *Lock) Unlock(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		if cause := context.Cause(l.ctx); cause != nil {
			err = cause
			return
		}
		defer l.cancel(context.Canceled)
		s := l.s
		octx, cancel := s.opCtx(ctx)
		defer cancel()
		n, rerr := releaseScript.Run(octx, s.rdb, []string{s.lockKey(l.name)}, l.token).Int()
		switch {
		case rerr != nil:
			// Not released: it expires after LockTTL.
			err = s.fail("unlock", l.name, rerr)
		case n == 0:
			err = fmt.Errorf("%w: %q was no longer held by this replica when released", ErrLockLost, l.name)
		}
	})
	return err
}

// abandon stops refreshing without releasing, as a holder that died would: for tests.
func (l *Lock) abandon() {
	l.once.Do(func() {
		close(l.stop)
		<-l.done
	})
}
