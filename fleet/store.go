package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/acme/autocert"
)

var _ autocert.Cache = (*Store)(nil)

// pendingError is the error of a change kept for later: it says what failed and that the
// change is not lost, and it is ErrPending for errors.Is.
type pendingError struct{ err error }

func (e pendingError) Error() string {
	return e.err.Error() + " (the change is kept in memory and written when Redis is back)"
}
func (e pendingError) Unwrap() []error { return []error{e.err, ErrPending} }

// Get returns the value stored under name. A name that is not stored gives
// autocert.ErrCacheMiss, and only then: when Redis cannot be reached, Get returns the
// last value this replica read or wrote for name, or else the error, never a miss (a
// miss would make the caller order a certificate again). A value sealed with another key
// gives an error wrapping ErrWrongKey.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	s.mu.Lock()
	sealed, isPending := s.pending[name]
	s.mu.Unlock()
	if isPending {
		if sealed == nil {
			return nil, autocert.ErrCacheMiss
		}
		return s.open(name, sealed)
	}
	data, err := s.get(ctx, name)
	if errors.Is(err, redis.Nil) && s.mirrored(name) != nil {
		// This replica held the value: either another replica deleted it, or Redis lost
		// its data. checkEpoch writes everything back in the second case.
		if _, cerr := s.checkEpoch(ctx); cerr != nil {
			return s.fallback(name, cerr)
		}
		data, err = s.get(ctx, name)
		if errors.Is(err, redis.Nil) {
			s.forget(name)
		}
	}
	switch {
	case err == nil:
		value, err := s.open(name, data)
		if err != nil {
			return nil, err
		}
		s.remember(name, data)
		return value, nil
	case errors.Is(err, redis.Nil):
		return nil, autocert.ErrCacheMiss
	case ctx.Err() != nil:
		return nil, ctx.Err()
	default:
		return s.fallback(name, s.fail("get", name, err))
	}
}

// get reads the stored bytes of name, bounded by OpTimeout.
func (s *Store) get(ctx context.Context, name string) ([]byte, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.rdb.Get(ctx, s.dataKey(name)).Bytes()
}

// fallback returns the last value of name this replica saw, or err if it saw none.
func (s *Store) fallback(name string, err error) ([]byte, error) {
	if sealed := s.mirrored(name); sealed != nil {
		return s.open(name, sealed)
	}
	return nil, err
}

// Put stores value under name (sealed, see Options.EncryptionKey) and tells every Watch
// of the fleet. When Redis cannot be reached, the value is kept in memory, Get returns it,
// and it is written when Redis answers again; the error then wraps ErrPending.
func (s *Store) Put(ctx context.Context, name string, value []byte) error {
	return s.change(ctx, "put", name, s.seal(name, value))
}

// Delete removes name and tells every Watch of the fleet; a name that is not stored is
// not an error. When Redis cannot be reached, the deletion is kept and done later, as for
// Put.
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.change(ctx, "delete", name, nil)
}

// change writes sealed under name (nil: deletes name), or keeps it in pending.
func (s *Store) change(ctx context.Context, op, name string, sealed []byte) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	err := s.write(ctx, name, sealed)
	if err != nil && ctx.Err() != nil {
		return ctx.Err() // the caller gave up: like autocert.DirCache, change nothing
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sealed == nil {
		delete(s.mirror, name)
	} else {
		s.mirror[name] = sealed
	}
	if err == nil {
		delete(s.pending, name)
		s.m.pending.Set(float64(len(s.pending)))
		return nil
	}
	s.pending[name] = sealed
	s.m.pending.Set(float64(len(s.pending)))
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return pendingError{s.fail(op, name, err)}
}

// write sets (or, for nil, deletes) name in Redis and publishes the name on the change
// channel, in one MULTI/EXEC. A deletion leaves a tombstone for tombstoneTTL, so that a
// replica that has not yet heard of it cannot write the value back (Repopulate).
func (s *Store) write(ctx context.Context, name string, sealed []byte) error {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if sealed == nil {
			p.Del(ctx, s.dataKey(name))
			p.Set(ctx, s.deletedKey(name), "1", s.tombstoneTTL())
			p.Publish(ctx, s.channel(), s.changeMessage('-', name))
		} else {
			p.Set(ctx, s.dataKey(name), sealed, 0)
			p.Del(ctx, s.deletedKey(name))
			p.Publish(ctx, s.channel(), s.changeMessage('+', name))
		}
		return nil
	})
	return err
}

// List returns, sorted, the stored names that start with prefix ("" for all), including
// the changes not yet written.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	seen := map[string]bool{}
	base := s.dataKey("")
	var cursor uint64
	for {
		keys, next, err := s.rdb.Scan(ctx, cursor, globEscape(base+prefix)+"*", 200).Result()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, s.fail("list", prefix, err)
		}
		for _, k := range keys {
			seen[strings.TrimPrefix(k, base)] = true
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	s.mu.Lock()
	for name, sealed := range s.pending {
		if strings.HasPrefix(name, prefix) {
			seen[name] = sealed != nil
		}
	}
	s.mu.Unlock()
	var names []string
	for name, ok := range seen {
		if ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// globEscape escapes the characters that SCAN's MATCH pattern treats specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *Store) mirrored(name string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mirror[name]
}

func (s *Store) remember(name string, sealed []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, isPending := s.pending[name]; !isPending {
		s.mirror[name] = sealed
	}
}

// dropDeleted forgets the mirrored values another replica deleted while this one's
// subscription was down (their tombstones say so): the change message was lost, and the
// mirror must not keep what the fleet deleted.
func (s *Store) dropDeleted(ctx context.Context) {
	s.mu.Lock()
	names := make([]string, 0, len(s.mirror))
	for n := range s.mirror {
		names = append(names, n)
	}
	s.mu.Unlock()
	if len(names) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(names))
	for i, n := range names {
		cmds[i] = pipe.Exists(cctx, s.deletedKey(n))
	}
	if _, err := pipe.Exec(cctx); err != nil {
		return // the next resync tries again
	}
	for i, c := range cmds {
		if c.Val() > 0 {
			s.forget(names[i])
		}
	}
}

func (s *Store) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, isPending := s.pending[name]; !isPending {
		delete(s.mirror, name)
	}
}

// background writes the pending changes with backoff while Redis is unavailable, and
// checks every ResyncInterval (and once at the start) whether Redis lost its data.
func (s *Store) background(ctx context.Context) {
	tick := time.NewTicker(s.opts.ResyncInterval)
	defer tick.Stop()
	_, _ = s.checkEpoch(ctx)
	backoff := s.opts.RetryMin
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			// A change was just refused: try again after the backoff, not at once.
			if retry == nil {
				retry = time.After(backoff)
			}
			continue
		case <-tick.C:
			_, _ = s.checkEpoch(ctx)
		case <-retry:
		}
		retry = nil
		n, err := s.flush(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			retry = time.After(backoff)
			backoff = min(2*backoff, s.opts.RetryMax)
		case n > 0:
			backoff = s.opts.RetryMin
			s.log.Info(fmt.Sprintf("fleet: Redis %s is back: wrote %d change(s) kept while it was unavailable", s.opts.Addr, n))
			_, _ = s.checkEpoch(ctx)
		default:
			backoff = s.opts.RetryMin
		}
	}
}

// flush writes the pending changes, stopping at the first failure, and returns how many
// it wrote.
func (s *Store) flush(ctx context.Context) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	names := make([]string, 0, len(s.pending))
	for name := range s.pending {
		names = append(names, name)
	}
	s.mu.Unlock()
	slices.Sort(names)
	n := 0
	for _, name := range names {
		s.mu.Lock()
		sealed := s.pending[name]
		s.mu.Unlock()
		if err := s.write(ctx, name, sealed); err != nil {
			return n, s.fail("flush", name, err)
		}
		n++
		s.mu.Lock()
		delete(s.pending, name)
		s.m.pending.Set(float64(len(s.pending)))
		s.mu.Unlock()
	}
	return n, nil
}

// checkEpoch reads the marker key that tells a Redis that kept its data from one that
// lost it, creating it if missing. When it differs from the one this store saw last (or
// this store saw none), it writes back what this replica holds (Repopulate) and reports
// lost = true if the marker had changed, that is if Redis lost its data since.
func (s *Store) checkEpoch(ctx context.Context) (lost bool, err error) {
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	cur, err := s.rdb.Get(octx, s.markerKey()).Result()
	created := false
	if errors.Is(err, redis.Nil) {
		token := newToken()
		if created, err = s.rdb.SetNX(octx, s.markerKey(), token, 0).Result(); err == nil {
			cur = token
			if !created {
				cur, err = s.rdb.Get(octx, s.markerKey()).Result()
			}
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, s.fail("repopulate", "", err)
	}
	s.mu.Lock()
	prev := s.epoch
	// Redis restarted empty breaks every connection, so a failed operation comes first.
	refilled := s.unreachable.Swap(false) && created
	if refilled {
		s.refilled = time.Now()
	}
	s.mu.Unlock()
	if refilled {
		s.log.Info(fmt.Sprintf("fleet: Redis %s was empty when it answered again (marker seen before: %v): the replicas write back what they hold within %v",
			s.opts.Addr, prev != "", s.opts.RetryMax+s.opts.OpTimeout))
	}
	if cur == prev {
		return false, nil
	}
	n, err := s.Repopulate(ctx)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	s.epoch = cur
	s.mu.Unlock()
	if prev != "" {
		s.log.Warn(fmt.Sprintf("fleet: Redis %s lost its data (restarted empty?): wrote back %d value(s) this replica holds", s.opts.Addr, n))
	}
	return prev != "", nil
}

// RefillWait is how long a caller that finds nothing stored under a name should wait,
// and read again, before it concludes that the fleet has nothing (and orders it): when
// this store was the first to find Redis empty after Redis had been unreachable (it
// restarted without its data), the other replicas write back what they hold when they
// reach it again, which their backoff may delay by up to RetryMax. RefillWait returns
// the time left until RetryMax plus OpTimeout has passed since, 0 otherwise (Redis as
// a new fleet finds it, or a refill long past).
func (s *Store) RefillWait() time.Duration {
	s.mu.Lock()
	refilled := s.refilled
	s.mu.Unlock()
	if refilled.IsZero() {
		return 0
	}
	return max(0, time.Until(refilled.Add(s.opts.RetryMax+s.opts.OpTimeout)))
}

// Repopulate writes every value this replica holds (what it last read from or wrote to
// Redis) under its name where Redis has none, so that a Redis restarted empty gets the
// fleet's certificates back from the replicas' memory instead of new orders. Values that
// Redis has are left alone: they are as new or newer; so are names deleted lately (their
// tombstone lives 10 ResyncIntervals). It returns how many it wrote. The
// store calls it by itself when it sees that Redis lost its data; it is exported for a
// caller that knows better (an operator's command, a test).
func (s *Store) Repopulate(ctx context.Context) (int, error) {
	s.mu.Lock()
	names := make([]string, 0, len(s.mirror))
	for name := range s.mirror {
		if _, isPending := s.pending[name]; !isPending {
			names = append(names, name)
		}
	}
	values := make([][]byte, len(names))
	for i, name := range names {
		values[i] = s.mirror[name]
	}
	s.mu.Unlock()
	if len(names) == 0 {
		return 0, nil
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	keys := make([]string, 0, 2*len(names))
	args := make([]any, 0, len(names))
	for i, name := range names {
		keys = append(keys, s.dataKey(name), s.deletedKey(name))
		args = append(args, values[i])
	}
	written, err := repopulateScript.Run(ctx, s.rdb, keys, args...).Int64Slice()
	if err != nil {
		return 0, s.fail("repopulate", "", err)
	}
	n := 0
	for i, w := range written {
		if w == 1 {
			n++
			if err := s.rdb.Publish(ctx, s.channel(), s.changeMessage('+', names[i])).Err(); err != nil {
				s.fail("publish", names[i], err)
			}
		}
	}
	return n, nil
}

// repopulateScript sets each data key KEYS[2i-1] to ARGV[i] unless it exists or its
// tombstone KEYS[2i] does, and returns 1 for each key it set, 0 for the others.
var repopulateScript = redis.NewScript(`local out = {}
for i = 1, #ARGV do
  local data, deleted = KEYS[2*i-1], KEYS[2*i]
  if redis.call("EXISTS", data) == 0 and redis.call("EXISTS", deleted) == 0 then
    redis.call("SET", data, ARGV[i])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out`)
