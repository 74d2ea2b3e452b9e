package fleet

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/acme/autocert"

	"edgeproxy/internal/testutil"
)

// testKey returns a 32-byte encryption key made of b.
func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

// testOptions are short intervals, so that faults are noticed in test time, and a quiet log.
func testOptions(r *testutil.Redis) Options {
	return Options{
		Addr:           r.Addr,
		EncryptionKey:  testKey(1),
		LockTTL:        2 * time.Second, // generous: the refresh must win against a loaded CI machine
		LockRetry:      100 * time.Millisecond,
		ResyncInterval: 500 * time.Millisecond,
		OpTimeout:      time.Second,
		RetryMin:       50 * time.Millisecond,
		RetryMax:       200 * time.Millisecond,
		Logger:         slog.New(slog.NewTextHandler(testLogOut, nil)),
	}
}

func newTestStore(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rawClient is a plain Redis client, to look at or tamper with what the store wrote.
func rawClient(t *testing.T, r *testutil.Redis) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

func TestStore_PutGetDeleteList(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	s := newTestStore(t, testOptions(r))
	ctx := context.Background()

	if _, err := s.Get(ctx, "a.test"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get of a missing name: got %v; want autocert.ErrCacheMiss", err)
	}
	for _, name := range []string{"a.test", "b.test", "a.test+token", "other*[x]"} {
		if err := s.Put(ctx, name, []byte("value of "+name)); err != nil {
			t.Fatalf("Put %q: %v", name, err)
		}
	}
	got, err := s.Get(ctx, "a.test")
	if err != nil || string(got) != "value of a.test" {
		t.Fatalf("Get: got %q, %v; want %q", got, err, "value of a.test")
	}
	names, err := s.List(ctx, "a.")
	if err != nil || strings.Join(names, ",") != "a.test,a.test+token" {
		t.Fatalf("List(a.): got %q, %v", names, err)
	}
	if names, _ := s.List(ctx, "other*"); len(names) != 1 {
		t.Fatalf("List with glob characters: got %q; want [other*[x]]", names)
	}
	if err := s.Delete(ctx, "a.test"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := s.Delete(ctx, "never.test"); err != nil {
		t.Fatalf("Delete of a missing name: got %v; want nil", err)
	}
	if _, err := s.Get(ctx, "a.test"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get after Delete: got %v; want autocert.ErrCacheMiss", err)
	}

	// Another fleet on the same Redis, with another prefix, sees none of it.
	opts := testOptions(r)
	opts.KeyPrefix = "otherfleet:"
	other := newTestStore(t, opts)
	if _, err := other.Get(ctx, "b.test"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get under another prefix: got %v; want autocert.ErrCacheMiss", err)
	}
	keys, _ := rawClient(t, r).Keys(ctx, "*").Result()
	for _, k := range keys {
		if !strings.HasPrefix(k, DefaultKeyPrefix) && !strings.HasPrefix(k, "otherfleet:") {
			t.Errorf("key %q is outside the prefixes", k)
		}
	}
}

// Issue 15: read access to Redis alone must not give private keys away, and a replica
// with another key must say so rather than serve garbage.
func TestStore_EncryptedAtRest(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	ctx := context.Background()
	a := newTestStore(t, testOptions(r))
	secret := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret\n")
	if err := a.Put(ctx, "a.test", secret); err != nil {
		t.Fatal(err)
	}
	raw, err := rawClient(t, r).Get(ctx, DefaultKeyPrefix+"data:a.test").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) || bytes.Contains(raw, []byte("secret")) {
		t.Fatalf("stored value holds the plaintext: %q", raw)
	}

	for _, tt := range []struct {
		name string
		key  []byte
		want string
	}{
		{"another key", testKey(2), "stored value was encrypted with another key"},
		{"no key", nil, "has no encryption_key_file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions(r)
			opts.EncryptionKey = tt.key
			b := newTestStore(t, opts)
			got, err := b.Get(ctx, "a.test")
			if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Get: got %q, %v; want ErrWrongKey saying %q", got, err, tt.want)
			}
			if err := b.Ping(ctx); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("Ping: got %v; want ErrWrongKey", err)
			}
		})
	}

	// A sealed value moved under another name does not open.
	if err := rawClient(t, r).Set(ctx, DefaultKeyPrefix+"data:b.test", raw, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Get(ctx, "b.test"); err == nil || !strings.Contains(err.Error(), "another name") {
		t.Fatalf("Get of a value moved from another name: got %q, %v; want an error", got, err)
	}
	if _, err := New(Options{Addr: r.Addr, EncryptionKey: []byte("short")}); err == nil {
		t.Fatal("New with a 5-byte key: got nil error")
	}
}

// Issue 15: a Put made while Redis is down is kept and written when Redis is back, and
// the fault is counted; meanwhile no replica mistakes the outage for a miss.
func TestStore_RedisDown_PutWrittenWhenBack(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	opts := testOptions(r)
	opts.Registerer = reg
	a := newTestStore(t, opts)
	b := newTestStore(t, testOptions(r))

	r.Stop()
	err := a.Put(ctx, "a.test", []byte("cert"))
	if !errors.Is(err, ErrPending) || !strings.Contains(err.Error(), r.Addr) {
		t.Fatalf("Put with Redis down: got %v; want ErrPending naming %s", err, r.Addr)
	}
	if got := metricValue(t, a.m.errors.WithLabelValues("put")); got < 1 {
		t.Errorf("edgeproxy_storage_errors_total{op=put} = %v; want >= 1", got)
	}
	if got := metricValue(t, a.m.pending); got != 1 {
		t.Errorf("edgeproxy_storage_pending_writes = %v; want 1", got)
	}
	if got, err := a.Get(ctx, "a.test"); err != nil || string(got) != "cert" {
		t.Fatalf("Get of the pending value on the same replica: got %q, %v", got, err)
	}
	if _, err := b.Get(ctx, "c.test"); err == nil || errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get with Redis down: got %v; want an error that is not a miss", err)
	}
	if err := a.Ping(ctx); err == nil {
		t.Fatal("Ping with Redis down: got nil error")
	}

	r.Start() // empty
	waitFor(t, 10*time.Second, "the pending Put reaches Redis", func() bool {
		got, err := b.Get(ctx, "a.test")
		return err == nil && string(got) == "cert"
	})
	// The flush counts the change as written just after writing it.
	waitFor(t, 5*time.Second, "edgeproxy_storage_pending_writes back to 0", func() bool { return metricValue(t, a.m.pending) == 0 })
	if err := a.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// Issue 15: Redis restarted empty gets the fleet's values back from the replicas' memory,
// so that no certificate is ordered again.
func TestStore_RedisRestartedEmpty_Repopulated(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	ctx := context.Background()
	a := newTestStore(t, testOptions(r))
	b := newTestStore(t, testOptions(r))
	if err := a.Put(ctx, "a.test", []byte("cert a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "a.test"); err != nil {
		t.Fatal(err)
	}

	t.Run("on Get", func(t *testing.T) {
		r.Stop()
		r.Start()
		// b finds the name missing, sees that Redis lost its data, and writes it back.
		got, err := b.Get(ctx, "a.test")
		if err != nil || string(got) != "cert a" {
			t.Fatalf("Get after the restart: got %q, %v; want the value back", got, err)
		}
	})
	t.Run("in the background", func(t *testing.T) {
		r.Stop()
		r.Start()
		c := newTestStore(t, testOptions(r)) // a new replica holding nothing
		waitFor(t, 10*time.Second, "the value is written back", func() bool {
			got, err := c.Get(ctx, "a.test")
			return err == nil && string(got) == "cert a"
		})
	})
	t.Run("a deletion is not undone", func(t *testing.T) {
		if err := a.Delete(ctx, "a.test"); err != nil {
			t.Fatal(err)
		}
		// The change message makes b forget its copy: a Redis restarted later does not
		// get the name back from b.
		waitFor(t, 5*time.Second, "b forgets the deleted value", func() bool { return b.mirrored("a.test") == nil })
		if _, err := b.Get(ctx, "a.test"); !errors.Is(err, autocert.ErrCacheMiss) {
			t.Fatalf("Get of a name deleted by another replica: got %v; want a miss", err)
		}
		if n, err := b.Repopulate(ctx); err != nil || n != 0 {
			t.Fatalf("Repopulate: got %d, %v; want 0 written", n, err)
		}
	})
}

func TestStore_Ping_Password(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{Password: "s3cret"})
	ctx := context.Background()
	opts := testOptions(r)
	if err := newTestStore(t, opts).Ping(ctx); err == nil || !strings.Contains(err.Error(), "NOAUTH") && !strings.Contains(err.Error(), "auth") {
		t.Fatalf("Ping without the password: got %v; want an authentication error", err)
	}
	opts.Password = "s3cret"
	if err := newTestStore(t, opts).Ping(ctx); err != nil {
		t.Fatalf("Ping with the password: %v", err)
	}
}

// testLogOut receives the stores' logs: nowhere, to keep test output quiet; os.Stderr to
// debug.
var testLogOut io.Writer = io.Discard

// tls: true in the config: the store speaks TLS to Redis, and verifies it.
func TestStore_TLS(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{TLS: true})
	ctx := context.Background()
	opts := testOptions(r)
	opts.TLS = &tls.Config{RootCAs: r.RootCAs, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	s := newTestStore(t, opts)
	if err := s.Put(ctx, "a.test", []byte("cert")); err != nil {
		t.Fatalf("Put over TLS: %v", err)
	}
	if got, err := s.Get(ctx, "a.test"); err != nil || string(got) != "cert" {
		t.Fatalf("Get over TLS: got %q, %v", got, err)
	}
	opts.TLS = &tls.Config{ServerName: "127.0.0.1"} // system roots: not trusted
	if err := Ping(ctx, opts); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Ping with an untrusted certificate: got %v; want a certificate error", err)
	}
	opts.TLS = nil
	if err := Ping(ctx, opts); err == nil {
		t.Fatal("Ping in plain TCP to a TLS-only Redis: got nil error")
	}
}

// A store that finds Redis empty after it could not reach it (restarted without its data)
// tells its caller to wait before concluding that nothing is stored: the other replicas
// write back what they hold when they reach Redis again, up to RetryMax later. A store
// that finds a new Redis, as a new fleet does, does not.
func TestStore_RefillWait_OnlyAfterRedisCameBackEmpty(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	ctx := context.Background()
	opts := testOptions(r)
	opts.RetryMax = 2 * time.Second
	s := newTestStore(t, opts)
	if _, err := s.Get(ctx, "a.test"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get on a new Redis: %v; want a miss", err)
	}
	if w := s.RefillWait(); w != 0 {
		t.Fatalf("RefillWait on a new Redis: %v; want 0", w)
	}
	r.Stop()
	if _, err := s.TryLock(ctx, "order:a.test"); err == nil || errors.Is(err, ErrLockHeld) {
		t.Fatalf("TryLock with Redis down: %v; want a Redis error", err)
	}
	r.Start() // empty
	l, err := s.TryLock(ctx, "order:a.test")
	if err != nil {
		t.Fatalf("TryLock once Redis is back: %v", err)
	}
	defer l.Unlock(ctx)
	if w := s.RefillWait(); w <= 0 || w > opts.RetryMax+opts.OpTimeout {
		t.Fatalf("RefillWait after Redis came back empty: %v; want in (0, %v]", w, opts.RetryMax+opts.OpTimeout)
	}
}

// While Redis is down, Lock tries again with backoff, not every LockRetry.
func TestLock_RedisDown_RetriedWithBackoff(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	opts := testOptions(r)
	opts.RetryMax = 800 * time.Millisecond // LockRetry 100ms: tries at 0, .1, .3, .7, 1.5, 2.3 s
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	s := newTestStore(t, opts)
	r.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx, "order:a.test"); err == nil {
		t.Fatal("Lock with Redis down succeeded")
	}
	// Every LockRetry would be 25 tries; with backoff 6.
	if n := metricValue(t, s.m.errors.WithLabelValues("lock")); n < 2 || n > 10 {
		t.Errorf("lock errors in 2.5 s with Redis down: %v; want about 6 (backoff from 100ms to 800ms)", n)
	}
}
