package tlsserve

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"sync"
	"time"
)

// SessionTickets rotates the session ticket keys of TLS configurations on a schedule, so
// that clients resume (a resumed handshake costs a fraction of a full one, and the metrics
// show both) while a stolen key opens only a bounded window of past sessions.
//
// It lives outside any one tls.Config: a reload that builds a new configuration attaches it
// to the same SessionTickets, and clients keep resuming across the reload. The zero value
// is ready to use; Run rotates.
type SessionTickets struct {
	// Interval is how often a new key starts encrypting tickets. Zero means one hour.
	Interval time.Duration
	// Keep is how many keys decrypt tickets (the newest encrypts), so a ticket resumes for
	// up to Keep×Interval. Zero means 24.
	Keep int

	// mu guards keys and configs.
	mu      sync.Mutex
	keys    [][32]byte
	configs map[*tls.Config]struct{}
}

func (t *SessionTickets) interval() time.Duration {
	if t.Interval > 0 {
		return t.Interval
	}
	return time.Hour
}

func (t *SessionTickets) keep() int {
	if t.Keep > 0 {
		return t.Keep
	}
	return 24
}

// Attach gives cfg the current keys now and the new ones at every rotation.
func (t *SessionTickets) Attach(cfg *tls.Config) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.configs == nil {
		t.configs = map[*tls.Config]struct{}{}
	}
	if len(t.keys) == 0 {
		t.rotateLocked()
	}
	t.configs[cfg] = struct{}{}
	cfg.SetSessionTicketKeys(t.keys)
}

// Detach stops updating cfg (a configuration replaced by a reload).
func (t *SessionTickets) Detach(cfg *tls.Config) {
	t.mu.Lock()
	delete(t.configs, cfg)
	t.mu.Unlock()
}

// Rotate makes a new key the encrypting one, drops the oldest beyond Keep and updates every
// attached configuration.
func (t *SessionTickets) Rotate() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rotateLocked()
}

func (t *SessionTickets) rotateLocked() {
	var k [32]byte
	_, _ = rand.Read(k[:]) // crypto/rand.Read never fails on Linux
	keys := append([][32]byte{k}, t.keys...)
	if len(keys) > t.keep() {
		keys = keys[:t.keep()]
	}
	t.keys = keys // a new slice: configurations may still hold the old one
	for cfg := range t.configs {
		cfg.SetSessionTicketKeys(keys)
	}
}

// Run rotates every Interval until ctx is done.
func (t *SessionTickets) Run(ctx context.Context) {
	tick := time.NewTicker(t.interval())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.Rotate()
		}
	}
}
