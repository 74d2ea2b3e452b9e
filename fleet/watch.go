package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ResyncAll is the name Watch passes when the caller must re-read every name it serves:
// after the store (re)subscribes to the change channel and every ResyncInterval, because
// Redis pub/sub delivers at most once and drops what is published while a subscriber is
// disconnected.
const ResyncAll = ""

// A change message on the channel is op, the writing store's id, ':' and the name, where
// op is '+' for a Put (or a value written back by Repopulate) and '-' for a Delete.
func (s *Store) changeMessage(op byte, name string) string {
	return string(op) + s.id + ":" + name
}

// parseChange splits a change message; ok is false for anything else.
func parseChange(msg string) (op byte, id, name string, ok bool) {
	const idLen = 32
	if len(msg) < 2+idLen || (msg[0] != '+' && msg[0] != '-') || msg[1+idLen] != ':' {
		return 0, "", "", false
	}
	return msg[0], msg[1 : 1+idLen], msg[2+idLen:], true
}

// follow keeps the mirror in step with another replica's change: a deleted name is
// forgotten (so that a Redis restarted empty does not get it back from here), and a new
// value is read, so that every replica can write back the fleet's newest values.
func (s *Store) follow(ctx context.Context, op byte, name string) {
	if op == '-' {
		s.forget(name)
		return
	}
	data, err := s.get(ctx, name)
	switch {
	case errors.Is(err, redis.Nil):
		// Deleted since (its own message follows) or Redis lost its data since (then
		// this copy is what Repopulate writes back): keep it.
	case err != nil:
		if ctx.Err() == nil {
			s.fail("get", name, err)
		}
	default:
		if _, err := s.open(name, data); err == nil {
			s.remember(name, data)
		}
	}
}

// watcher is one Watch call: the names changed since its callback last ran.
type watcher struct {
	mu     sync.Mutex
	names  map[string]bool
	signal chan struct{} // capacity 1: names is not empty
}

func (w *watcher) add(name string) {
	w.mu.Lock()
	w.names[name] = true
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// take returns the names collected so far, ResyncAll first, and empties the set.
func (w *watcher) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	names := make([]string, 0, len(w.names))
	for name := range w.names {
		names = append(names, name)
	}
	clear(w.names)
	slices.Sort(names) // ResyncAll, the empty name, sorts first
	return names
}

// Watch calls fn with the name of every value that any replica of the fleet (this one
// included) Puts or Deletes, within about a network round trip, and with ResyncAll when
// the caller must re-read everything (see ResyncAll). It returns when ctx is done or the
// store is closed. fn runs on Watch's goroutine, one call at a time; names changed while
// fn runs are collected and passed once each when it returns, so a slow fn loses none.
// The store keeps one subscription for all its Watch calls; while Redis is unreachable it
// subscribes again with backoff (RetryMin to RetryMax).
func (s *Store) Watch(ctx context.Context, fn func(name string)) {
	w := &watcher{names: map[string]bool{}, signal: make(chan struct{}, 1)}
	s.watchMu.Lock()
	s.watchers[w] = true
	s.watchMu.Unlock()
	defer func() {
		s.watchMu.Lock()
		delete(s.watchers, w)
		s.watchMu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-w.signal:
		}
		for _, name := range w.take() {
			fn(name)
		}
	}
}

// notify passes name to every Watch.
func (s *Store) notify(name string) {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	for w := range s.watchers {
		w.add(name)
	}
}

// listen keeps the store's subscription to the change channel until ctx is done: it
// passes each change to the watchers, keeps the mirror in step with the other replicas'
// changes (follow), and after each resubscription checks whether Redis lost its data and
// asks the watchers for a resync.
func (s *Store) listen(ctx context.Context) {
	ps := s.rdb.Subscribe(ctx) // subscribes at the first receive, and again after each reconnect
	defer ps.Close()
	// A receive in progress does not watch ctx (only its own timeout, up to 10s): closing
	// the subscription ends it, so that Close does not wait for it.
	defer context.AfterFunc(ctx, func() { _ = ps.Close() })()
	if err := ps.Subscribe(ctx, s.channel()); err != nil && ctx.Err() == nil {
		s.fail("subscribe", "", err)
	}
	backoff := s.opts.RetryMin
	lastResync := time.Now()
	broken := false
	for ctx.Err() == nil {
		// Wake up at least every ResyncInterval, and every 10s to ping: a half-open
		// connection is found by the ping.
		timeout := min(s.opts.ResyncInterval-time.Since(lastResync), 10*time.Second)
		msg, err := ps.ReceiveTimeout(ctx, max(timeout, time.Millisecond))
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				if broken {
					s.log.Info(fmt.Sprintf("fleet: subscribed again to %s on Redis %s", s.channel(), s.opts.Addr))
				}
				// Changes may have been missed: forget what was deleted meanwhile, and, as
				// Redis may have restarted empty, have its data back before the re-read.
				s.dropDeleted(ctx)
				_, _ = s.checkEpoch(ctx)
				broken = false
				backoff = s.opts.RetryMin
				lastResync = time.Now()
				s.notify(ResyncAll)
			}
		case *redis.Message:
			if op, id, name, ok := parseChange(m.Payload); ok {
				if id != s.id {
					s.follow(ctx, op, name)
				}
				s.notify(name)
			}
		}
		var nerr net.Error
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return
		case errors.As(err, &nerr) && nerr.Timeout():
			if perr := ps.Ping(ctx); perr != nil && ctx.Err() == nil {
				broken = true
				s.fail("subscribe", "", perr)
			}
		default:
			broken = true
			s.fail("subscribe", "", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, s.opts.RetryMax)
		}
		if time.Since(lastResync) >= s.opts.ResyncInterval {
			lastResync = time.Now()
			s.dropDeleted(ctx)
			s.notify(ResyncAll)
		}
	}
}
