package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"testing"
	"time"
)

// simCA is a CA on a simulated clock, for the renewal scheduler: it issues certificates
// of one lifetime at the current simulated time and answers renewal-information requests
// as its ari mode says. It records every order and check.
type simCA struct {
	t        *testing.T
	now      time.Time
	end      time.Time // the simulation stops here
	lifetime time.Duration
	ari      string // "none", "simple" (Pebble's window), "failing", "always-now"
	// revokeAt, if set, is when the CA revokes the certificate then served: its window
	// moves into the past (as Pebble's and Let's Encrypt's do).
	revokeAt time.Time
	revoked  *big.Int

	key    *ecdsa.PrivateKey
	serial int64
	issued []*x509.Certificate
	orders []simOrder
	checks int
}

type simOrder struct {
	at       time.Time
	replaces string
}

func (ca *simCA) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		ca.t.Fatalf("sleep(%v): the scheduler would spin", d)
	}
	ca.now = ca.now.Add(d)
	if !ca.revokeAt.IsZero() && ca.revoked == nil && !ca.now.Before(ca.revokeAt) && len(ca.issued) > 0 {
		ca.revoked = ca.issued[len(ca.issued)-1].SerialNumber
	}
	return ctx.Err() == nil && ca.now.Before(ca.end)
}

func (ca *simCA) obtain(_ context.Context, d *acmeDomain, replaces string) (*tls.Certificate, *acmeOrder, error) {
	ca.orders = append(ca.orders, simOrder{at: ca.now, replaces: replaces})
	if len(ca.orders) > 10000 {
		ca.t.Fatalf("more than 10000 orders by %v: a renewal loop", ca.now)
	}
	ca.serial++
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(ca.serial),
		NotBefore:      ca.now,
		NotAfter:       ca.now.Add(ca.lifetime - time.Second),
		DNSNames:       []string{d.name},
		AuthorityKeyId: []byte{1, 2, 3, 4},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ca.key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	ca.issued = append(ca.issued, leaf)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: ca.key, Leaf: leaf}, &acmeOrder{domain: d.name}, nil
}

func (ca *simCA) fetchARI(_ context.Context, leaf *x509.Certificate) (*renewalInfo, time.Duration, error) {
	ca.checks++
	var info renewalInfo
	w := &info.SuggestedWindow
	switch {
	case ca.ari == "none":
		return nil, 0, errNoARI
	case ca.ari == "failing":
		return nil, 0, errors.New("503 Service Unavailable")
	case ca.ari == "always-now" || ca.revoked != nil && ca.revoked.Cmp(leaf.SerialNumber) == 0:
		w.Start, w.End = ca.now.Add(-time.Hour), ca.now.Add(-time.Hour+time.Second)
		return &info, 0, nil
	}
	// Pebble's window: a third of the lifetime before expiry, ±1 day, within the lifetime.
	ideal := leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3)
	w.Start, w.End = ideal.Add(-24*time.Hour), minTime(ideal.Add(24*time.Hour), leaf.NotAfter)
	if w.Start.Before(leaf.NotBefore) {
		w.Start = leaf.NotBefore
	}
	return &info, 6 * time.Hour, nil
}

// simulate runs the real renewal loop (acmeManager.run) for one name over days of
// simulated time against ca, and returns the manager.
func simulate(t *testing.T, ca *simCA, days int) *acmeManager {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.t, ca.key = t, key
	ca.now = time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)
	ca.end = ca.now.Add(time.Duration(days) * 24 * time.Hour)
	a, err := newACME(ACMEOptions{Domains: []string{"app.test"}, CacheDir: t.TempDir(), Observer: &acmeObserver{}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Time { return ca.now }
	a.sleep, a.obtainFn, a.fetchARI = ca.sleep, ca.obtain, ca.fetchARI
	a.dir = &Directory{URL: "https://ca.test/dir"} // read by orderOnce for "replaces"
	if ca.ari != "none" {
		a.dir.RenewalInfo = "https://ca.test/ari"
	}
	a.run(context.Background(), a.domains["app.test"])
	return a
}

// Lifetime readiness: over a year and a half of simulated time, for the lifetimes of
// 2026-2029 (90 days now, 64 from 2027 and 45 from 2028 under CA/B ballot SC-081, 6 for
// Let's Encrypt's shortlived profile), with and without renewal information, every
// certificate is renewed before it expires with at least a sixth of its lifetime to
// spare, exactly once, each renewal naming the certificate it replaces, and never in a
// loop: not even when the CA revokes a certificate (a window in the past) or answers
// "renew now" for every certificate.
func TestAcmeScheduler_LifetimeReadiness(t *testing.T) {
	const days = 540
	for _, life := range []int{90, 64, 45, 6} {
		lifetime := time.Duration(life) * 24 * time.Hour
		for _, mode := range []string{"none", "simple", "failing", "revoked", "always-now"} {
			t.Run(fmt.Sprintf("%d days, ARI %s", life, mode), func(t *testing.T) {
				ca := &simCA{lifetime: lifetime, ari: mode}
				if mode == "revoked" {
					ca.ari = "simple"
					ca.revokeAt = time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC).Add(100*24*time.Hour + 7*time.Hour)
				}
				a := simulate(t, ca, days)
				checkSchedule(t, ca, a, mode)
			})
		}
	}
}

func checkSchedule(t *testing.T, ca *simCA, a *acmeManager, mode string) {
	t.Helper()
	life := ca.lifetime
	if len(ca.orders) < 2 {
		t.Fatalf("%d orders in %v", len(ca.orders), ca.end.Sub(ca.orders[0].at))
	}
	life -= time.Second // the certificates' NotAfter - NotBefore
	minGap := life / 2  // renewal by the lifetime or Pebble's window: after half of it at the earliest
	if mode == "always-now" || mode == "revoked" {
		minGap = life / 4 // servedCert.earliest
	}
	forced := 0
	for i := 1; i < len(ca.orders); i++ {
		prev := ca.issued[i-1]
		o := ca.orders[i]
		// Before expiry, with margin.
		if spare := prev.NotAfter.Sub(o.at); spare < life/6-time.Second {
			t.Errorf("order %d at %v: only %v before the previous certificate's expiry (lifetime %v)", i, o.at, spare, life)
		}
		// Once per certificate, naming it (when the CA offers ARI).
		wantReplaces := certID(prev)
		if mode == "none" {
			wantReplaces = ""
		}
		if o.replaces != wantReplaces {
			t.Errorf("order %d replaces %q; want %q", i, o.replaces, wantReplaces)
		}
		if gap := o.at.Sub(ca.orders[i-1].at); gap < minGap {
			// Only the first "renew now" may come sooner.
			if forced++; forced > 1 {
				t.Errorf("order %d only %v after the previous one (lifetime %v): a renewal loop", i, gap, life)
			}
		}
	}
	// As many orders as the lifetime allows, not more: a certificate lasts at least
	// half its lifetime (a quarter after a forced renewal), plus the first order and
	// the revocation's.
	if max := int(ca.end.Sub(ca.orders[0].at)/minGap) + 2; len(ca.orders) > max {
		t.Errorf("%d orders over %v with %v certificates; want at most %d", len(ca.orders), ca.end.Sub(ca.orders[0].at), life, max)
	}
	switch mode {
	case "revoked":
		var after *simOrder
		for i := range ca.orders {
			if ca.orders[i].at.After(ca.revokeAt) {
				after = &ca.orders[i]
				break
			}
		}
		if after == nil || after.at.Sub(ca.revokeAt) > defaultARIPoll {
			t.Errorf("revoked at %v: next order %v; want within one check interval (%v)", ca.revokeAt, after, defaultARIPoll)
		}
	case "none":
		if ca.checks > len(ca.orders) {
			t.Errorf("%d renewal-information checks without ARI; want one per certificate at most", ca.checks)
		}
	}
	// Checks follow Retry-After (6h) or ARIPoll; failed ones back off from RetryMin (1
	// minute) to ARIPoll, anew for each certificate: about 7 more per certificate.
	if maxChecks := int(ca.end.Sub(ca.orders[0].at)/time.Hour)/6 + 8*len(ca.orders) + 20; ca.checks > maxChecks {
		t.Errorf("%d renewal-information checks; want at most %d", ca.checks, maxChecks)
	}
	// The metric shows the renewal time of the certificate served at the end.
	cur := a.domains["app.test"].current.Load()
	if got := a.opts.Observer.(*acmeObserver).renewal["app.test"]; !got.Equal(cur.renewAt) {
		t.Errorf("renewal time reported %v; want %v", got, cur.renewAt)
	}
	if wantBasis := map[bool]string{true: "ari", false: "lifetime"}[mode != "none" && mode != "failing"]; a.domains["app.test"].status().RenewalBasis != wantBasis {
		t.Errorf("renewal basis %q; want %q", a.domains["app.test"].status().RenewalBasis, wantBasis)
	}
}
