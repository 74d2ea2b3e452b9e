package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"edgeproxy/fleet"
	"edgeproxy/internal/testutil"
)

// fleetStore opens a store on r as a replica of the test's fleet would.
func fleetStore(t *testing.T, r *testutil.Redis) *fleet.Store {
	t.Helper()
	s, err := fleet.New(fleet.Options{Addr: r.Addr, EncryptionKey: make([]byte, fleet.KeySize),
		LockTTL: 2 * time.Second, LockRetry: 50 * time.Millisecond, OpTimeout: time.Second,
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// issue makes a certificate for name, as a CA would (testutil's: valid for two days).
func issue(t *testing.T, name string) *tls.Certificate {
	c := testutil.SelfSignedCert(t, name)
	return &c
}

// Three replicas sharing a store, started together, order a name once: the others wait
// for the lock, find the certificate stored (or have it from Watch already), and serve it.
func TestAcmeFleet_ReplicasOrderANameOnce(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	var orders atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var managers []*acmeManager
	for range 3 {
		a, err := newACME(ACMEOptions{Domains: []string{"app.test"}, CacheDir: t.TempDir(), Fleet: fleetStore(t, r)}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		a.obtainFn = func(ctx context.Context, d *acmeDomain, _ string) (*tls.Certificate, *acmeOrder, error) {
			orders.Add(1)
			select { // an order takes a while: the others are waiting for the lock meanwhile
			case <-time.After(300 * time.Millisecond):
			case <-ctx.Done():
				return nil, &acmeOrder{domain: d.name}, ctx.Err()
			}
			return issue(t, d.name), &acmeOrder{domain: d.name}, nil
		}
		a.fetchARI = func(context.Context, *x509.Certificate) (*renewalInfo, time.Duration, error) {
			return nil, 0, errNoARI
		}
		managers = append(managers, a)
	}
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, a := range managers {
		a.start(ctx)
		wg.Go(a.wg.Wait)
	}
	deadline := time.Now().Add(20 * time.Second)
	for i, a := range managers {
		for a.domains["app.test"].current.Load() == nil {
			if time.Now().After(deadline) {
				t.Fatalf("replica %d has no certificate within 20s", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	want := managers[0].domains["app.test"].current.Load().cert.Leaf.SerialNumber
	for i, a := range managers {
		if got := a.domains["app.test"].current.Load().cert.Leaf.SerialNumber; got.Cmp(want) != 0 {
			t.Errorf("replica %d serves %x; replica 0 %x", i, got, want)
		}
	}
	// The waiters take the lock in turn after the order: let them.
	time.Sleep(500 * time.Millisecond)
	if n := orders.Load(); n != 1 {
		t.Errorf("%d orders; want 1 for three replicas", n)
	}
}

// The local copy serves while Redis is down, and fills Redis when it comes back empty.
func TestSharedCache_LocalCopyWhileRedisDownThenWrittenBack(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	dir := t.TempDir()
	ctx := context.Background()
	c := sharedCache{store: fleetStore(t, r), local: autocert.DirCache(dir), log: slog.New(slog.DiscardHandler)}
	if err := c.Put(ctx, "app.test", []byte("cert")); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	// A replica started while Redis is down: a new store, the same directory.
	fresh := sharedCache{store: fleetStore(t, r), local: autocert.DirCache(dir), log: slog.New(slog.DiscardHandler)}
	if got, err := fresh.Get(ctx, "app.test"); err != nil || string(got) != "cert" {
		t.Fatalf("Get with Redis down: %q, %v; want the local copy", got, err)
	}
	if _, err := fresh.Get(ctx, "other.test"); err == nil || errors.Is(err, autocert.ErrCacheMiss) {
		t.Errorf("Get of a name without a copy, Redis down: %v; want Redis's error, not a miss (which would order)", err)
	}
	r.Start() // empty
	if got, err := fresh.Get(ctx, "app.test"); err != nil || string(got) != "cert" {
		t.Fatalf("Get with Redis back empty: %q, %v; want the local copy", got, err)
	}
	other := fleetStore(t, r)
	if got, err := other.Get(ctx, "app.test"); err != nil || string(got) != "cert" {
		t.Errorf("another replica's Get after the write-back: %q, %v; want the copy", got, err)
	}
}

// A replica that holds nothing, started while Redis is down, says so at once; when Redis
// comes back empty it takes the order lock before the replica that holds the certificate
// has written it back, and waits for that (RefillWait) instead of ordering again.
func TestAcmeFleet_RedisBackEmpty_WaitsForTheWriteBackInsteadOfOrdering(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	holder := fleetStore(t, r)
	data, err := encodeCached(issue(t, "app.test"))
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Put(context.Background(), "app.test", data); err != nil {
		t.Fatal(err)
	}
	holder.Close() // it writes back below, by hand, later than the new replica looks
	r.Stop()

	var logs testutil.Buffer
	store, err := fleet.New(fleet.Options{Addr: r.Addr, EncryptionKey: make([]byte, fleet.KeySize),
		LockTTL: 2 * time.Second, LockRetry: 50 * time.Millisecond, OpTimeout: time.Second,
		RetryMin: 50 * time.Millisecond, RetryMax: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	a, err := newACME(ACMEOptions{Domains: []string{"app.test"}, CacheDir: t.TempDir(), Fleet: store},
		slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var orders atomic.Int64
	a.obtainFn = func(_ context.Context, d *acmeDomain, _ string) (*tls.Certificate, *acmeOrder, error) {
		orders.Add(1)
		return issue(t, d.name), &acmeOrder{domain: d.name}, nil
	}
	a.fetchARI = func(context.Context, *x509.Certificate) (*renewalInfo, time.Duration, error) {
		return nil, 0, errNoARI
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.start(ctx)
	defer func() { cancel(); a.wg.Wait() }()

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "no certificate for app.test yet, and the fleet's storage cannot be reached") {
		if time.Now().After(deadline) {
			t.Fatalf("no clear error within 10s with Redis down:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.Start() // empty
	time.Sleep(time.Second)
	writer := fleetStore(t, r)
	if err := writer.Put(context.Background(), "app.test", data); err != nil {
		t.Fatal(err)
	}
	want, _ := parseCached(data, "app.test", time.Now())
	for {
		if cur := a.domains["app.test"].current.Load(); cur != nil {
			if cur.cert.Leaf.SerialNumber.Cmp(want.Leaf.SerialNumber) != 0 {
				t.Errorf("serves %x; want the written-back %x", cur.cert.Leaf.SerialNumber, want.Leaf.SerialNumber)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate within 10s:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := orders.Load(); n != 0 {
		t.Errorf("%d orders; want none: the certificate was written back within RefillWait\n%s", n, logs.String())
	}
}
