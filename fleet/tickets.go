package fleet

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/acme/autocert"
)

// ticketKeysName is the stored name of the fleet's session ticket keys, and the name of
// the lock held to create or rotate them. autocert's names never contain a slash.
const ticketKeysName = "fleet/session-ticket-keys"

const (
	defaultTicketRotation = 12 * time.Hour
	defaultTicketKeep     = 3
)

// TicketKeysOptions configure NewTicketKeys; every zero value has the meaning its comment
// gives.
type TicketKeysOptions struct {
	// Rotation is how often a new key starts encrypting session tickets. Zero means 12h.
	Rotation time.Duration
	// Keep is how many earlier keys still decrypt tickets, so a ticket resumes for
	// between Keep and Keep+1 rotations after it was issued. Zero means 3 (36h to 48h
	// with the default Rotation).
	Keep int
}

// TicketKeys shares the TLS session ticket keys of a fleet through a Store, so that a
// client resumes its session on any replica. The key set lives in the store (sealed like
// every value); one replica at a time, under the fleet lock, creates it or rotates it
// every Rotation, and every replica installs it on its tls.Configs with
// SetSessionTicketKeys when notified of the change.
//
// The key that will encrypt after the next rotation is distributed one rotation ahead
// and decrypts already, so a ticket issued by the rotating replica right after a rotation
// resumes on a replica that has not yet heard of it.
//
// Until the set has been read once (Redis down at start), the configs keep Go's own
// per-process keys: sessions resume on this replica only.
type TicketKeys struct {
	s    *Store
	opts TicketKeysOptions
	now  func() time.Time

	// mu guards set and configs.
	mu      sync.Mutex
	set     *ticketKeySet
	configs map[*tls.Config]bool
}

// ticketKeySet is the stored form of the keys.
type ticketKeySet struct {
	// Rotated is when Keys[0] started encrypting.
	Rotated time.Time `json:"rotated"`
	// Keys[0] encrypts new tickets; all decrypt.
	Keys [][32]byte `json:"keys"`
	// Next decrypts now and becomes Keys[0] at the next rotation.
	Next [32]byte `json:"next"`
}

// tlsKeys is the set in SetSessionTicketKeys's order: the encrypting key first.
func (ks *ticketKeySet) tlsKeys() [][32]byte {
	return append(append([][32]byte{}, ks.Keys...), ks.Next)
}

// NewTicketKeys returns the fleet's session ticket keys in s. Call Run to read, rotate
// and follow them, and Apply to install them on a tls.Config.
func NewTicketKeys(s *Store, opts TicketKeysOptions) *TicketKeys {
	if opts.Rotation <= 0 {
		opts.Rotation = defaultTicketRotation
	}
	if opts.Keep <= 0 {
		opts.Keep = defaultTicketKeep
	}
	return &TicketKeys{s: s, opts: opts, now: time.Now, configs: map[*tls.Config]bool{}}
}

// Apply installs the fleet's keys on cfg, now if they are known and again after every
// change, until remove is called (on a reload, for the replaced config).
func (tk *TicketKeys) Apply(cfg *tls.Config) (remove func()) {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	tk.configs[cfg] = true
	if tk.set != nil {
		cfg.SetSessionTicketKeys(tk.set.tlsKeys())
	}
	return func() {
		tk.mu.Lock()
		delete(tk.configs, cfg)
		tk.mu.Unlock()
	}
}

// Run reads the key set, creates or rotates it when due (on one replica, under the lock),
// and installs every change, until ctx is done (end it before closing the Store). Failures
// are logged and retried with backoff.
func (tk *TicketKeys) Run(ctx context.Context) {
	changed := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		tk.s.Watch(wctx, func(name string) {
			if name == ticketKeysName || name == ResyncAll {
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		})
	})
	backoff := tk.s.opts.RetryMin
	for {
		next, err := tk.sync(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			tk.s.log.Warn("fleet: session ticket keys: "+err.Error(), "retry_in", backoff.String())
			next = backoff
			backoff = min(2*backoff, tk.s.opts.RetryMax)
		} else {
			backoff = tk.s.opts.RetryMin
		}
		timer := time.NewTimer(next)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// sync reads the stored set, creates or rotates it if needed, installs it, and returns
// when to look again.
func (tk *TicketKeys) sync(ctx context.Context) (time.Duration, error) {
	set, err := tk.load(ctx)
	if err != nil && !errors.Is(err, autocert.ErrCacheMiss) {
		return 0, err
	}
	if set == nil || !tk.now().Before(set.Rotated.Add(tk.opts.Rotation)) {
		set, err = tk.rotate(ctx)
		if errors.Is(err, ErrLockHeld) {
			// Another replica is at it; its Put will notify us. Look again anyway in
			// case it dies first.
			return tk.s.opts.LockTTL, nil
		}
		if err != nil {
			return 0, err
		}
	}
	tk.install(set)
	return max(set.Rotated.Add(tk.opts.Rotation).Sub(tk.now()), time.Second), nil
}

// load reads and decodes the stored set.
func (tk *TicketKeys) load(ctx context.Context) (*ticketKeySet, error) {
	data, err := tk.s.Get(ctx, ticketKeysName)
	if err != nil {
		return nil, err
	}
	var set ticketKeySet
	if err := json.Unmarshal(data, &set); err != nil || len(set.Keys) == 0 {
		return nil, fmt.Errorf("fleet: stored %s is not a key set (%v)", ticketKeysName, err)
	}
	return &set, nil
}

// rotate creates the set, or rotates it, under the lock, unless another replica did it
// meanwhile. A set missing from Redis while this replica has one (Redis lost its data)
// is written back as it was, rotated only if due: the fleet's tickets stay valid.
func (tk *TicketKeys) rotate(ctx context.Context) (*ticketKeySet, error) {
	l, err := tk.s.TryLock(ctx, ticketKeysName)
	if err != nil {
		return nil, err
	}
	defer l.Unlock(context.WithoutCancel(ctx))
	lctx := l.Context()
	set, err := tk.load(lctx)
	if errors.Is(err, autocert.ErrCacheMiss) {
		tk.mu.Lock()
		set = tk.set
		tk.mu.Unlock()
	} else if err != nil {
		return nil, err
	}
	now := tk.now()
	switch {
	case set == nil:
		set = &ticketKeySet{Rotated: now, Keys: [][32]byte{randomKey()}, Next: randomKey()}
		tk.s.log.Info("fleet: created the fleet's session ticket keys")
	case !now.Before(set.Rotated.Add(tk.opts.Rotation)):
		keys := append([][32]byte{set.Next}, set.Keys...)
		set = &ticketKeySet{Rotated: now, Keys: keys[:min(len(keys), 1+tk.opts.Keep)], Next: randomKey()}
		tk.s.log.Info("fleet: rotated the fleet's session ticket keys")
	}
	data, err := json.Marshal(set)
	if err != nil {
		return nil, err
	}
	if err := tk.s.Put(lctx, ticketKeysName, data); err != nil {
		return nil, err
	}
	return set, nil
}

// install puts set on every applied config, if it differs from the installed one.
func (tk *TicketKeys) install(set *ticketKeySet) {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if tk.set != nil && tk.set.Rotated.Equal(set.Rotated) && tk.set.Next == set.Next {
		return
	}
	tk.set = set
	keys := set.tlsKeys()
	for cfg := range tk.configs {
		cfg.SetSessionTicketKeys(keys)
	}
}

func randomKey() [32]byte {
	var k [32]byte
	_, _ = rand.Read(k[:]) // never fails
	return k
}
