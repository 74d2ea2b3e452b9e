package fleet_test

import (
	"context"
	"errors"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"edgeproxy/fleet"
)

// How certs orders a name for the whole fleet: one replica orders under the lock, the
// others wait (bounded) and then serve what it stored.
func ExampleStore_Lock() {
	store, err := fleet.New(fleet.Options{Addr: "127.0.0.1:6379", EncryptionKey: make([]byte, fleet.KeySize)})
	if err != nil {
		return
	}
	defer store.Close()
	order := func(ctx context.Context, name string) ([]byte, error) { return []byte("cert"), nil }

	ctx := context.Background()
	name := "www.example.com"
	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	lock, err := store.Lock(wait, "order:"+name)
	if err != nil {
		return // another replica is still at it: serve what Get gives, retry later
	}
	defer lock.Unlock(ctx)
	// Re-read under the lock: the previous holder may have stored it.
	if _, err := store.Get(lock.Context(), name); !errors.Is(err, autocert.ErrCacheMiss) {
		return
	}
	cert, err := order(lock.Context(), name) // stops if the lock is lost
	if err != nil {
		return
	}
	if err := store.Put(lock.Context(), name, cert); err != nil && !errors.Is(err, fleet.ErrPending) {
		return
	}
}
