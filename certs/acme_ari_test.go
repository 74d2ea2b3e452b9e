package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// ariCA is a stand-in CA for renewal-information checks: a directory, and a renewalInfo
// resource answering with the window, Retry-After and status the test sets.
type ariCA struct {
	srv *httptest.Server

	mu         sync.Mutex
	noARI      bool // the directory has no renewalInfo
	status     int
	start, end time.Time
	retryAfter string
	paths      []string // the renewalInfo requests' paths
}

func newARICA(t *testing.T) *ariCA {
	ca := &ariCA{status: http.StatusOK}
	ca.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ca.mu.Lock()
		defer ca.mu.Unlock()
		if r.URL.Path == "/dir" {
			dir := map[string]any{"newOrder": ca.srv.URL + "/new-order"}
			if !ca.noARI {
				dir["renewalInfo"] = ca.srv.URL + "/ari/"
			}
			_ = json.NewEncoder(w).Encode(dir)
			return
		}
		ca.paths = append(ca.paths, r.URL.Path)
		if ca.retryAfter != "" {
			w.Header().Set("Retry-After", ca.retryAfter)
		}
		if ca.status != http.StatusOK {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(ca.status)
			_, _ = w.Write([]byte(`{"type":"urn:ietf:params:acme:error:serverInternal","detail":"busy"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"suggestedWindow": map[string]time.Time{"start": ca.start, "end": ca.end}})
	}))
	t.Cleanup(ca.srv.Close)
	return ca
}

func (ca *ariCA) set(f func(ca *ariCA)) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	f(ca)
}

// ariSetup is a manager for app.test on a fixed clock, asking ca, with a 30-day
// certificate from it in hand.
func ariSetup(t *testing.T, ca *ariCA, now time.Time) (*acmeManager, *acmeDomain, *tls.Certificate) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca.srv.Certificate())
	a, err := newACME(ACMEOptions{Domains: []string{"app.test"}, CacheDir: t.TempDir(), DirectoryURL: ca.srv.URL + "/dir",
		RootCAs: roots, Observer: &acmeObserver{}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Time { return now }
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0x87654321), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		DNSNames: []string{"app.test"}, AuthorityKeyId: []byte{1, 2, 3, 4}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	cert := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	d := a.domains["app.test"]
	a.serve(d, cert, "", time.Time{})
	return a, d, cert
}

// A renewal-information check asks the CA at renewalInfo/<certificate ID> and renews at
// a random time in the window it suggests, kept while the window stays the same; the
// next check follows the CA's Retry-After (seconds or an HTTP date), clamped to one
// minute at least and ARIPoll at most, or ARIPoll without one. The metric shows the
// chosen time.
func TestCheckARI_RandomTimeInWindowAndRetryAfter(t *testing.T) {
	ca := newARICA(t)
	now := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)
	start, end := now.Add(19*24*time.Hour), now.Add(20*24*time.Hour)
	ca.set(func(ca *ariCA) { ca.start, ca.end = start, end })
	a, d, cert := ariSetup(t, ca, now)
	ctx := context.Background()

	for _, tt := range []struct {
		retryAfter string
		want       time.Duration
	}{
		{"7200", 2 * time.Hour},
		{now.Add(3 * time.Hour).Format(http.TimeFormat), 3 * time.Hour},
		{"30", minARIPoll},
		{"172800", defaultARIPoll},
		{"", defaultARIPoll},
	} {
		ca.set(func(ca *ariCA) { ca.retryAfter = tt.retryAfter })
		a.checkARI(ctx, d, d.current.Load())
		if got := d.current.Load().ari.nextCheck.Sub(now); got != tt.want {
			t.Errorf("Retry-After %q: next check in %v; want %v", tt.retryAfter, got, tt.want)
		}
	}
	if want := "/ari/" + certID(cert.Leaf); ca.paths[0] != want {
		t.Errorf("renewal information asked at %s; want %s", ca.paths[0], want)
	}
	sc := d.current.Load()
	if sc.renewAt.Before(start) || !sc.renewAt.Before(end) || !sc.renewAt.Equal(sc.ari.chosen) {
		t.Errorf("renewal at %v; want the chosen time %v in the window %v to %v", sc.renewAt, sc.ari.chosen, start, end)
	}
	if got := a.opts.Observer.(*acmeObserver).renewal["app.test"]; !got.Equal(sc.renewAt) {
		t.Errorf("renewal time reported %v; want %v", got, sc.renewAt)
	}
	// The same window again keeps the time chosen (five checks above, one choice).
	chosen := map[time.Time]bool{sc.renewAt: true}
	// A new certificate's window gets a time of its own: random, not the window's start.
	for range 10 {
		a.serve(d, cert, "", time.Time{})
		a.checkARI(ctx, d, d.current.Load())
		chosen[d.current.Load().renewAt] = true
	}
	if len(chosen) < 2 || chosen[start] {
		t.Errorf("renewal times chosen in 11 checks of one window: %v; want random ones", chosen)
	}
}

// A window that is already open (the CA's signal after a revocation) makes the
// certificate due at once; when the CA cannot be asked, the lifetime decides (or the
// last window, once one is known), and the next check backs off, no sooner than the
// CA's Retry-After (up to ARIPoll); a CA without renewal information is not asked again.
func TestCheckARI_OpenWindowFailureAndNoARI(t *testing.T) {
	now := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)

	t.Run("open window", func(t *testing.T) {
		ca := newARICA(t)
		ca.set(func(ca *ariCA) { ca.start, ca.end = now.Add(-2*time.Hour), now.Add(-time.Hour) })
		a, d, _ := ariSetup(t, ca, now)
		a.checkARI(context.Background(), d, d.current.Load())
		if sc := d.current.Load(); sc.renewAt.After(now) {
			t.Errorf("renewal at %v with the window open; want now (%v) or before", sc.renewAt, now)
		}
	})

	t.Run("failure", func(t *testing.T) {
		ca := newARICA(t)
		ca.set(func(ca *ariCA) { ca.status, ca.retryAfter = http.StatusServiceUnavailable, "600" })
		a, d, _ := ariSetup(t, ca, now)
		a.checkARI(context.Background(), d, d.current.Load())
		sc := d.current.Load()
		if !sc.renewAt.Equal(sc.fallbackAt) || d.status().RenewalBasis != "lifetime" || sc.ari.err == "" {
			t.Errorf("after a failed check: renewal at %v (basis %s, error %q); want the lifetime's %v", sc.renewAt, d.status().RenewalBasis, sc.ari.err, sc.fallbackAt)
		}
		if got := sc.ari.nextCheck.Sub(now); got != 10*time.Minute {
			t.Errorf("next check in %v; want the CA's Retry-After, 10m (longer than RetryMin)", got)
		}
		// A failure's Retry-After is clamped as a success's is: a CA asking for two days
		// cannot keep a revocation signal from being seen for longer than ARIPoll.
		ca.set(func(ca *ariCA) { ca.retryAfter = "172800" })
		a.checkARI(context.Background(), d, d.current.Load())
		if got := d.current.Load().ari.nextCheck.Sub(now); got != defaultARIPoll {
			t.Errorf("failed check with Retry-After 2 days: next check in %v; want ARIPoll, %v", got, defaultARIPoll)
		}
		ca.set(func(ca *ariCA) { ca.retryAfter = "" })
		// Once a window is known, a failed check keeps it.
		ca.set(func(ca *ariCA) {
			ca.status, ca.retryAfter, ca.start, ca.end = http.StatusOK, "", now.Add(5*24*time.Hour), now.Add(6*24*time.Hour)
		})
		a.checkARI(context.Background(), d, d.current.Load())
		known := d.current.Load().renewAt
		ca.set(func(ca *ariCA) { ca.status = http.StatusServiceUnavailable })
		a.checkARI(context.Background(), d, d.current.Load())
		if sc := d.current.Load(); !sc.renewAt.Equal(known) || sc.ari.failures != 1 {
			t.Errorf("after a failure: renewal at %v (%d failures); want the last window's %v", sc.renewAt, sc.ari.failures, known)
		}
	})

	t.Run("no ARI", func(t *testing.T) {
		ca := newARICA(t)
		ca.set(func(ca *ariCA) { ca.noARI = true })
		a, d, _ := ariSetup(t, ca, now)
		a.checkARI(context.Background(), d, d.current.Load())
		sc := d.current.Load()
		if !sc.renewAt.Equal(sc.fallbackAt) || !sc.ari.nextCheck.IsZero() || sc.ari.due(now.Add(24*time.Hour), sc.cert.Leaf) || len(ca.paths) != 0 {
			t.Errorf("CA without ARI: renewal at %v, next check %v, %d requests; want the lifetime's %v and no checks", sc.renewAt, sc.ari.nextCheck, len(ca.paths), sc.fallbackAt)
		}
	})
}
