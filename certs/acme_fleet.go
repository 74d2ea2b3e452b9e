package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"edgeproxy/fleet"
)

// A fleet of replicas (ACMEOptions.Fleet) shares its ACME state through a fleet.Store:
// the certificates and the account key (sharedCache, with CacheDir as this replica's
// local copy), one order per name at a time (orderShared, under the lock "order:NAME"),
// the challenge answers (so that whichever replica the CA reaches answers), and
// notifications of new certificates (watch). See docs/fleet.md.

const (
	// lockWait bounds how long a replica waits for another's order of the same name
	// before it looks at storage again: longer than an order may take.
	lockWait = orderTimeout + time.Minute
	// challengeLookup bounds the read of a challenge answer another replica stored.
	challengeLookup = 3 * time.Second
	// challengePrefix starts the store's names of challenge answers.
	challengePrefix = "acme-challenge/"
)

// sharedCache is the cache of a fleet replica: the fleet's store, with the local cache
// directory as this replica's copy. A copy serves while Redis cannot be read, and fills
// Redis when Redis has nothing (a Redis restarted empty, or a box joining a fleet).
type sharedCache struct {
	store *fleet.Store
	local autocert.DirCache
	log   *slog.Logger
}

// Get returns the fleet's value of name, and keeps it as the local copy; the local copy
// when Redis cannot be read, or when it has none (which is then written to Redis). A
// value sealed with another key is an error, not a reason to use the copy: the replicas'
// keys must be fixed.
func (c sharedCache) Get(ctx context.Context, name string) ([]byte, error) {
	data, err := c.store.Get(ctx, name)
	if err == nil {
		if local, lerr := c.local.Get(ctx, name); lerr != nil || !bytes.Equal(local, data) {
			if perr := c.local.Put(ctx, name, data); perr != nil {
				c.log.Warn(fmt.Sprintf("acme: cannot keep a local copy of %s: %v", name, perr))
			}
		}
		return data, nil
	}
	if errors.Is(err, fleet.ErrWrongKey) {
		return nil, err
	}
	local, lerr := c.local.Get(ctx, name)
	if lerr != nil {
		return nil, err
	}
	if errors.Is(err, autocert.ErrCacheMiss) {
		c.log.Info(fmt.Sprintf("acme: the fleet's storage has no %s: writing this replica's copy", name))
		if perr := c.store.Put(ctx, name, local); perr != nil && !errors.Is(perr, fleet.ErrPending) {
			c.log.Warn(fmt.Sprintf("acme: cannot write %s to the fleet's storage: %v", name, perr))
		}
	} else {
		c.log.Warn(fmt.Sprintf("acme: the fleet's storage cannot be read (%v): using this replica's copy of %s", err, name))
	}
	return local, nil
}

// Put writes the local copy, then the fleet's value. An error wrapping fleet.ErrPending
// means the value is kept and written when Redis is back.
func (c sharedCache) Put(ctx context.Context, name string, data []byte) error {
	if err := c.local.Put(ctx, name, data); err != nil {
		c.log.Warn(fmt.Sprintf("acme: cannot keep a local copy of %s: %v", name, err))
	}
	return c.store.Put(ctx, name, data)
}

// Delete deletes both.
func (c sharedCache) Delete(ctx context.Context, name string) error {
	return errors.Join(c.local.Delete(ctx, name), c.store.Delete(ctx, name))
}

// savedOrPending reports whether a Put succeeded or will (fleet.ErrPending).
func savedOrPending(err error) bool { return err == nil || errors.Is(err, fleet.ErrPending) }

// orderShared is orderOnce for a fleet replica: it orders d under the fleet's lock of the
// name, unless the certificate another replica stored meanwhile (read again once the lock
// is taken) makes the order needless. The order stops if the lock is lost.
func (a *acmeManager) orderShared(ctx context.Context, d *acmeDomain, attempt int) (*acmeOrder, error) {
	store := a.opts.Fleet
	lock, err := store.TryLock(ctx, "order:"+d.name)
	if err != nil && !errors.Is(err, fleet.ErrLockHeld) && ctx.Err() == nil {
		a.storageUnreachable(d, err)
	}
	if err != nil && ctx.Err() == nil {
		wait, cancel := context.WithTimeout(ctx, lockWait)
		lock, err = store.Lock(wait, "order:"+d.name)
		cancel()
	}
	if err != nil {
		if ctx.Err() != nil {
			return &acmeOrder{domain: d.name}, ctx.Err()
		}
		if a.adoptStored(ctx, d, "") {
			return &acmeOrder{domain: d.name}, nil
		}
		return &acmeOrder{domain: d.name}, fmt.Errorf("certs: cannot take the fleet's order lock for %s: %w", d.name, err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := lock.Unlock(uctx); err != nil {
			a.log.Warn(fmt.Sprintf("acme: releasing the fleet's order lock for %s: %v", d.name, err), "domain", d.name)
		}
	}()
	// While this replica waited, another may have stored a certificate (read it again),
	// and this one may already serve it (Watch): order only if what is served is still
	// missing or due.
	a.adoptStored(lock.Context(), d, "after taking the order lock")
	if a.served(d) {
		return &acmeOrder{domain: d.name}, nil
	}
	if wait := store.RefillWait(); wait > 0 {
		// Redis came back empty: the replicas that hold the certificate write it back
		// when they reach Redis again. Give them that time rather than order again.
		a.log.Info(fmt.Sprintf("acme: the fleet's storage came back empty: waiting %v for the other replicas to write back what they hold before ordering %s", wait.Round(time.Second), d.name), "domain", d.name)
		wctx, cancelWait := context.WithCancel(ctx)
		stopWait := context.AfterFunc(lock.Context(), cancelWait)
		waited := sleepCtx(wctx, wait)
		stopWait()
		cancelWait()
		if !waited {
			if ctx.Err() != nil {
				return &acmeOrder{domain: d.name}, ctx.Err()
			}
			return &acmeOrder{domain: d.name}, fmt.Errorf("certs: order for %s stopped: %w", d.name, context.Cause(lock.Context()))
		}
		a.adoptStored(lock.Context(), d, "written back to the fleet's storage")
		if a.served(d) {
			return &acmeOrder{domain: d.name}, nil
		}
	}
	octx, cancelOrder := context.WithCancel(ctx)
	defer cancelOrder()
	stop := context.AfterFunc(lock.Context(), cancelOrder)
	defer stop()
	o, err := a.orderOnce(octx, d, attempt)
	if err != nil && ctx.Err() == nil && lock.Context().Err() != nil {
		err = fmt.Errorf("certs: order for %s stopped: %w", d.name, context.Cause(lock.Context()))
	}
	return o, err
}

// served reports whether d has a certificate that is not yet due for renewal.
func (a *acmeManager) served(d *acmeDomain) bool {
	cur := d.current.Load()
	return cur != nil && a.now().Before(cur.renewAt)
}

// storageUnreachable says, before the order waits for Redis, that it does: an error if
// d has no certificate (its handshakes fail until Redis answers), a warning otherwise.
func (a *acmeManager) storageUnreachable(d *acmeDomain, err error) {
	if d.current.Load() == nil {
		a.log.Error(fmt.Sprintf("acme: no certificate for %s yet, and the fleet's storage cannot be reached (%v): waiting for Redis, retrying with backoff; handshakes for %s fail until then", d.name, err, d.name), "domain", d.name)
		return
	}
	a.log.Warn(fmt.Sprintf("acme: the certificate for %s is due, and the fleet's storage cannot be reached (%v): waiting for Redis, retrying with backoff; still serving the current certificate", d.name, err), "domain", d.name)
}

// adoptStored serves the certificate stored for d if it is usable and newer than the one
// served, and reports whether it did. why, if not empty, is logged.
func (a *acmeManager) adoptStored(ctx context.Context, d *acmeDomain, why string) bool {
	a.adoptMu.Lock()
	defer a.adoptMu.Unlock()
	data, err := a.cache.Get(ctx, d.name)
	if err != nil {
		if !errors.Is(err, autocert.ErrCacheMiss) && ctx.Err() == nil {
			a.log.Warn(fmt.Sprintf("acme: reading the fleet's certificate for %s: %v", d.name, err), "domain", d.name)
		}
		return false
	}
	cert, err := parseCached(data, d.name, a.now())
	if err != nil {
		a.log.Warn(fmt.Sprintf("acme: ignoring the fleet's certificate for %s: %v", d.name, err), "domain", d.name)
		return false
	}
	if cur := d.current.Load(); cur != nil && (bytes.Equal(cur.cert.Certificate[0], cert.Certificate[0]) || !cert.Leaf.NotAfter.After(cur.cert.Leaf.NotAfter)) {
		return false
	}
	a.serve(d, cert, "", time.Time{})
	msg := fmt.Sprintf("acme: serving the certificate the fleet stored for %s", d.name)
	if why != "" {
		msg += " (" + why + ")"
	}
	a.log.Info(msg, "domain", d.name, "serial", serialHex(cert.Leaf),
		"not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
		"renew_at", d.current.Load().renewAt.UTC().Format(time.RFC3339))
	return true
}

// watch serves the certificates other replicas store, as the fleet announces them, until
// ctx is done.
func (a *acmeManager) watch(ctx context.Context) {
	a.opts.Fleet.Watch(ctx, func(name string) {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if name == fleet.ResyncAll {
			// Read the account key too, though only orders need it: every replica then
			// holds it, and writes it back to a Redis restarted empty (as it does the
			// certificates), or its local copy to a Redis that has none.
			_, _ = a.cache.Get(rctx, accountKeyName)
			for _, n := range a.names {
				a.adoptStored(rctx, a.domains[n], "")
			}
			return
		}
		if d := a.domains[name]; d != nil {
			a.adoptStored(rctx, d, "")
		}
	})
}

// challengeName is the store's name of the answer to a challenge of type typ for the
// name domain; key is the HTTP-01 token ("" for TLS-ALPN-01).
func challengeName(typ, domain, key string) string {
	name := challengePrefix + typ + "/" + domain
	if key != "" {
		name += "/" + key
	}
	return name
}

// shareAnswer stores the answer o prepared for chal, so that every replica answers the
// CA; it returns the name stored, or "" without a fleet. A failure is logged: this
// replica still answers.
func (a *acmeManager) shareAnswer(ctx context.Context, o *acmeOrder, chal *acme.Challenge) string {
	if a.opts.Fleet == nil {
		return ""
	}
	var name string
	var data []byte
	switch chal.Type {
	case "tls-alpn-01":
		cert := o.alpnCert()
		if cert == nil {
			return ""
		}
		var err error
		if data, err = encodeCached(cert); err != nil {
			a.log.Warn(fmt.Sprintf("acme: cannot share the TLS-ALPN-01 answer for %s: %v", o.domain, err), "domain", o.domain)
			return ""
		}
		name = challengeName(chal.Type, o.domain, "")
	case "http-01":
		name, data = challengeName(chal.Type, o.domain, chal.Token), []byte(o.httpAnswer(chal.Token))
	default:
		return ""
	}
	if err := a.opts.Fleet.Put(ctx, name, data); err != nil {
		a.log.Warn(fmt.Sprintf("acme: cannot share the %s answer for %s with the fleet (only this replica answers it): %v", chal.Type, o.domain, err), "domain", o.domain)
	}
	return name
}

// unshareAnswer deletes a stored answer once its challenge is over.
func (a *acmeManager) unshareAnswer(ctx context.Context, name string) {
	if name == "" {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := a.opts.Fleet.Delete(dctx, name); err != nil && !errors.Is(err, fleet.ErrPending) {
		a.log.Warn(fmt.Sprintf("acme: cannot delete the shared challenge answer %s: %v", name, err))
	}
}

// sharedHTTPAnswer is the HTTP-01 answer another replica stored for token, or "".
func (a *acmeManager) sharedHTTPAnswer(d *acmeDomain, token string) string {
	if a.opts.Fleet == nil || token == "" || len(token) > 256 || strings.ContainsAny(token, "/\\") {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), challengeLookup)
	defer cancel()
	data, err := a.opts.Fleet.Get(ctx, challengeName("http-01", d.name, token))
	if err != nil {
		return ""
	}
	return string(data)
}

// sharedALPNCert is the TLS-ALPN-01 answer another replica stored for d, or nil.
func (a *acmeManager) sharedALPNCert(d *acmeDomain) *tls.Certificate {
	if a.opts.Fleet == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), challengeLookup)
	defer cancel()
	data, err := a.opts.Fleet.Get(ctx, challengeName("tls-alpn-01", d.name, ""))
	if err != nil {
		return nil
	}
	cert, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil
	}
	return &cert
}
