// Package fleet is the state that the replicas of one edgeproxy fleet share on Redis:
// certificate storage, a fleet-wide lock, change notifications and TLS session ticket
// keys, so that N replicas behind one load balancer place one ACME order per name, all
// serve what one of them obtained, and resume each other's TLS sessions.
//
// A Store is an autocert.Cache (Get, Put, Delete over opaque values; Get returns
// autocert.ErrCacheMiss for a missing name) with List on top. Every value is sealed with
// AES-256-GCM when an encryption key is given, so read access to Redis alone gives no
// private key away; a replica holding another key gets ErrWrongKey, never garbage.
//
// Lock takes a named lock held by one replica at a time: an owner token, a TTL that a
// goroutine refreshes while the lock is held, release by compare-and-delete, and a
// Context that is cancelled (with ErrLockLost as its cause) as soon as the holder can no
// longer be sure it still holds the lock.
//
// Watch reports the names that any replica Puts or Deletes, through Redis pub/sub, and
// asks for a full re-read (ResyncAll) after each (re)subscription and periodically,
// because pub/sub drops what is published while a subscriber is disconnected.
//
// Redis faults: a Put or Delete that cannot reach Redis is kept in memory and written when
// Redis answers again (write-behind); Get falls back to the last value this replica read or
// wrote; and when Redis comes back empty (restarted without its data) the store writes
// back every value it holds (Repopulate) instead of letting the fleet order certificates
// again. Each failed Redis operation is logged and counted in
// edgeproxy_storage_errors_total{op}.
//
// The key layout, the lock protocol and the failure behaviour are described in
// docs/fleet.md.
package fleet

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// DefaultKeyPrefix is the prefix of every Redis key and channel when Options.KeyPrefix is
// empty.
const DefaultKeyPrefix = "edgeproxy:"

const (
	defaultLockTTL        = 30 * time.Second
	defaultResyncInterval = time.Minute
	defaultOpTimeout      = 5 * time.Second
	defaultRetryMin       = time.Second
	defaultRetryMax       = 30 * time.Second
)

// Options configure a Store. Addr is required; every other zero value has the meaning its
// comment gives.
type Options struct {
	// Addr is Redis's "host:port". Required.
	Addr string
	// Username is the Redis ACL user; empty means the default user.
	Username string
	// Password authenticates Username; empty means no AUTH.
	Password string
	// DB is the Redis database number; 0 is Redis's default.
	DB int
	// KeyPrefix starts every key and the channel this store uses, so that several fleets
	// (or other applications) can share one Redis. Empty means DefaultKeyPrefix.
	KeyPrefix string
	// TLS, when not nil, makes the connections to Redis use TLS with this configuration;
	// nil means plain TCP.
	TLS *tls.Config
	// EncryptionKey seals every stored value with AES-256-GCM; it must be 32 bytes. Nil
	// stores values in clear, and then values sealed by a replica that has a key cannot
	// be read (ErrWrongKey), nor values in clear by one that has a key.
	EncryptionKey []byte

	// LockTTL is how long a lock outlives its holder's last refresh: after a holder dies,
	// another replica takes the lock within LockTTL plus one LockRetry. The holder
	// refreshes it every LockTTL/3. Zero means 30s; at least 300ms.
	LockTTL time.Duration
	// LockRetry is how often a waiting Lock tries again. Zero means LockTTL/10.
	LockRetry time.Duration
	// ResyncInterval is how often Watch asks its callback to re-read everything
	// (ResyncAll) as the fallback for lost notifications, and how often the store checks
	// whether Redis lost its data (see Repopulate). Zero means 1 minute.
	ResyncInterval time.Duration
	// OpTimeout bounds each Redis command (the caller's context may end it sooner). Zero
	// means 5s.
	OpTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between attempts to write the values kept
	// while Redis was unavailable, and between Watch's attempts to subscribe again. Zero
	// means 1s and 30s.
	RetryMin, RetryMax time.Duration

	// Registerer receives the store's metrics (edgeproxy_storage_errors_total{op} and
	// edgeproxy_storage_pending_writes); nil means they are not registered. Stores that
	// share a Registerer (one per reload) share the metrics.
	Registerer prometheus.Registerer
	// Logger receives one line per Redis fault and recovery; nil means slog.Default().
	Logger *slog.Logger
}

// Errors a caller may check for with errors.Is.
var (
	// ErrPending wraps the error of a Put or Delete that could not reach Redis: the
	// change is kept in memory and written when Redis answers again.
	ErrPending = errors.New("fleet: Redis unavailable; the change is kept in memory and written when Redis is back")
	// ErrWrongKey is returned by Get for a value sealed with another encryption key (or
	// with none, or in clear when this store has a key).
	ErrWrongKey = errors.New("fleet: stored value was encrypted with another key")
	// ErrLockLost is the cause of a Lock's Context when the lock was taken over or could
	// not be refreshed before its TTL ran out: the holder must stop, not finish as owner.
	ErrLockLost = errors.New("fleet: lock lost")
)

// Store is one replica's handle on the fleet's shared state in Redis. It is safe for
// concurrent use. Use New, and Close when done.
type Store struct {
	id     string // in the change messages, to tell this store's changes from others'
	opts   Options
	rdb    *redis.Client
	prefix string
	log    *slog.Logger
	m      *metrics

	aead  cipher.AEAD // nil: values in clear
	keyID [keyIDLen]byte

	// writeMu serializes the writes to Redis (Put, Delete, the flush of pending changes),
	// so that an older pending change is never written over a newer one. Changes are rare
	// (certificates, tokens, ticket keys), so one mutex costs nothing.
	writeMu sync.Mutex
	// mu guards mirror, pending and epoch.
	mu sync.Mutex
	// mirror holds the sealed value of every name this replica last read from or wrote
	// to Redis: Get's fallback while Redis is down, and what Repopulate writes back.
	mirror map[string][]byte
	// pending holds the sealed values of the changes that could not be written yet, by
	// name; a nil value is a Delete. It changes only under writeMu.
	pending map[string][]byte
	// epoch is the value of the marker key when this store last saw it; another value (or
	// none) means Redis lost its data since.
	epoch string
	// refilled is when this store found Redis empty after it had been unreachable (see
	// RefillWait).
	refilled time.Time
	// unreachable is set by a failed Redis operation (fail, which may run under mu) and
	// cleared when the marker key is read again.
	unreachable atomic.Bool

	// watchMu guards watchers, the Watch calls in progress.
	watchMu  sync.Mutex
	watchers map[*watcher]bool

	kick   chan struct{} // wakes the background loop: something is pending
	cancel context.CancelFunc
	done   chan struct{} // closed when the background goroutines have returned
}

// New checks opts and returns a Store. It does not wait for Redis, so that a replica can
// start while Redis is down; use Ping to check the connection. Its background goroutines
// (the subscription to changes, the writes kept while Redis was down, the check for a
// Redis that lost its data) run until Close.
func New(opts Options) (*Store, error) {
	s, err := newStore(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	var wg sync.WaitGroup
	wg.Go(func() { s.background(ctx) })
	wg.Go(func() { s.listen(ctx) })
	go func() {
		wg.Wait()
		close(s.done)
	}()
	return s, nil
}

// Ping checks, without writing anything or starting a Store's background work, that
// Redis answers with opts and that a stored value, if any, opens with opts.EncryptionKey
// (see Store.Ping): for `edgeproxy doctor`, which changes nothing.
func Ping(ctx context.Context, opts Options) error {
	s, err := newStore(opts)
	if err != nil {
		return err
	}
	defer s.rdb.Close()
	return s.Ping(ctx)
}

// newStore checks opts and makes a Store without starting its goroutines.
func newStore(opts Options) (*Store, error) {
	if opts.Addr == "" {
		return nil, errors.New("fleet: no Redis address")
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = DefaultKeyPrefix
	}
	if opts.LockTTL == 0 {
		opts.LockTTL = defaultLockTTL
	}
	if opts.LockTTL < 300*time.Millisecond {
		return nil, fmt.Errorf("fleet: lock TTL %v is below 300ms", opts.LockTTL)
	}
	if opts.LockRetry <= 0 {
		opts.LockRetry = opts.LockTTL / 10
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = defaultResyncInterval
	}
	if opts.OpTimeout <= 0 {
		opts.OpTimeout = defaultOpTimeout
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = defaultRetryMin
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = defaultRetryMax
	}
	opts.RetryMax = max(opts.RetryMax, opts.RetryMin)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Store{
		id:       newToken(),
		watchers: map[*watcher]bool{},
		opts:     opts,
		prefix:   opts.KeyPrefix,
		log:      opts.Logger,
		mirror:   map[string][]byte{},
		pending:  map[string][]byte{},
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	if opts.EncryptionKey != nil {
		aead, id, err := newSealer(opts.EncryptionKey)
		if err != nil {
			return nil, err
		}
		s.aead, s.keyID = aead, id
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s.m = m
	s.rdb = redis.NewClient(&redis.Options{
		Addr:      opts.Addr,
		Username:  opts.Username,
		Password:  opts.Password,
		DB:        opts.DB,
		TLSConfig: opts.TLS,
		// RESP2 and no CLIENT SETINFO or maintenance notifications: commands every Redis
		// since 6 answers, so nothing is logged as a fallback against an older server.
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		DialTimeout:              min(opts.OpTimeout, 2*time.Second),
		ReadTimeout:              opts.OpTimeout,
		WriteTimeout:             opts.OpTimeout,
		// One retry: a fault is reported (and kept for later) quickly rather than after
		// go-redis's default three retries with backoff.
		MaxRetries:    1,
		DialerRetries: 1,
		// Deadlines of the callers' contexts bound the commands too: a lock refresh must
		// give up before the lock's TTL runs out, not after go-redis's own timeouts.
		ContextTimeoutEnabled: true,
	})
	return s, nil
}

// Close stops the background goroutines and closes the connections. Changes still
// pending get one last try (bounded by OpTimeout); those that fail are lost, and the log
// says how many.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.OpTimeout)
	_, _ = s.flush(ctx)
	cancel()
	s.mu.Lock()
	n := len(s.pending)
	s.mu.Unlock()
	if n > 0 {
		s.log.Warn(fmt.Sprintf("fleet: closing with %d change(s) never written to Redis %s", n, s.opts.Addr))
	}
	return s.rdb.Close()
}

// Ping checks that Redis answers, and that a value stored there, if any, can be opened
// with this store's encryption key: for `edgeproxy doctor`.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return s.fail("ping", "", err)
	}
	keys, _, err := s.rdb.Scan(ctx, 0, globEscape(s.dataKey(""))+"*", 20).Result()
	if err != nil {
		return s.fail("ping", "", err)
	}
	for _, k := range keys {
		name := k[len(s.dataKey("")):]
		data, err := s.rdb.Get(ctx, k).Bytes()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return s.fail("ping", name, err)
		}
		if _, err := s.open(name, data); err != nil {
			return err
		}
		break
	}
	return nil
}

// tombstoneTTL is how long a deletion is remembered: longer than every replica takes to
// hear of it (a message, or at worst the periodic resync).
func (s *Store) tombstoneTTL() time.Duration { return 10 * s.opts.ResyncInterval }

// opCtx bounds one Redis command by OpTimeout.
func (s *Store) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.OpTimeout)
}

// fail counts and logs a failed Redis operation and returns it as a clear error.
func (s *Store) fail(op, name string, err error) error {
	s.m.errors.WithLabelValues(op).Inc()
	s.unreachable.Store(true)
	what := op
	if name != "" {
		what = fmt.Sprintf("%s %q", op, name)
	}
	err = fmt.Errorf("fleet: %s: redis %s: %w", what, s.opts.Addr, err)
	s.log.Warn(err.Error(), "op", op)
	return err
}

// The Redis keys, all under the prefix (see docs/fleet.md).
func (s *Store) dataKey(name string) string { return s.prefix + "data:" + name }
func (s *Store) lockKey(name string) string { return s.prefix + "lock:" + name }
func (s *Store) deletedKey(name string) string {
	return s.prefix + "deleted:" + name
}
func (s *Store) channel() string   { return s.prefix + "changes" }
func (s *Store) markerKey() string { return s.prefix + "epoch" }

// newToken returns a random token: a lock's owner, an epoch.
func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b)
}
