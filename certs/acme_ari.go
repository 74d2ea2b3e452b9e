package certs

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Directory is what edgeproxy uses of a CA's ACME directory (RFC 8555 §7.1.1).
type Directory struct {
	// URL is the directory's own URL.
	URL string
	// NewOrder is the URL of new orders.
	NewOrder string
	// RenewalInfo is the base URL of ACME Renewal Information (RFC 9773); empty when the
	// CA offers none.
	RenewalInfo string
	// Profiles are the certificate profiles the CA offers, name to description
	// (draft-ietf-acme-profiles); empty when it offers none.
	Profiles map[string]string
}

// ProfileNames lists the profiles the CA offers, sorted.
func (d *Directory) ProfileNames() []string {
	return slices.Sorted(maps.Keys(d.Profiles))
}

// CheckProfile returns an error, which lists the CA's profiles, unless the CA offers
// profile. The empty profile (the CA's default) is always fine.
func (d *Directory) CheckProfile(profile string) error {
	if profile == "" {
		return nil
	}
	if len(d.Profiles) == 0 {
		return fmt.Errorf("the CA at %s offers no profiles: leave tls.acme.profile empty for its default", d.URL)
	}
	if _, ok := d.Profiles[profile]; !ok {
		return fmt.Errorf("the CA at %s offers no profile %q; it offers: %s", d.URL, profile, strings.Join(d.ProfileNames(), ", "))
	}
	return nil
}

// FetchDirectory reads a CA's ACME directory with client. `edgeproxy validate` and
// `doctor` use it to check tls.acme.profile against what the CA offers.
func FetchDirectory(ctx context.Context, url string, client *http.Client) (*Directory, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var raw struct {
		NewOrder    string `json:"newOrder"`
		RenewalInfo string `json:"renewalInfo"`
		Meta        struct {
			Profiles map[string]string `json:"profiles"`
		} `json:"meta"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&raw)
	if resp.StatusCode != http.StatusOK || err != nil || raw.NewOrder == "" {
		return nil, fmt.Errorf("%s answers %s, not an ACME directory", url, resp.Status)
	}
	return &Directory{URL: url, NewOrder: raw.NewOrder, RenewalInfo: raw.RenewalInfo, Profiles: raw.Meta.Profiles}, nil
}

// directory returns the CA's directory, read once.
func (a *acmeManager) directory(ctx context.Context) (*Directory, error) {
	a.dirMu.Lock()
	defer a.dirMu.Unlock()
	if a.dir != nil {
		return a.dir, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	dir, err := FetchDirectory(ctx, a.opts.DirectoryURL, &http.Client{Transport: a.base})
	if err != nil {
		return nil, err
	}
	a.dir = dir
	return dir, nil
}

// errNoARI is fetchRenewalInfo's error when the CA offers no renewal information.
var errNoARI = errors.New("certs: the CA offers no renewal information (ARI)")

// renewalInfo is a CA's RenewalInfo object (RFC 9773 §4.2).
type renewalInfo struct {
	SuggestedWindow struct {
		Start time.Time `json:"start"`
		End   time.Time `json:"end"`
	} `json:"suggestedWindow"`
	ExplanationURL string `json:"explanationURL,omitempty"`
}

func (r *renewalInfo) window() string {
	return r.SuggestedWindow.Start.UTC().Format(time.RFC3339) + " to " + r.SuggestedWindow.End.UTC().Format(time.RFC3339)
}

// ariState is what edgeproxy knows of a certificate's renewal information.
type ariState struct {
	info   *renewalInfo // the last window the CA suggested; nil if none yet
	chosen time.Time    // the renewal time picked in info's window
	// checked is the last successful check; nextCheck the next check, zero when there
	// is none (the CA offers no renewal information).
	checked, nextCheck time.Time
	failures           int    // failed checks in a row
	err                string // the last check's error, if it failed
}

// due reports whether the renewal information of leaf should be checked now. It never
// is after expiry (RFC 9773 §4.3.3).
func (s ariState) due(now time.Time, leaf *x509.Certificate) bool {
	return !s.nextCheck.IsZero() && !now.Before(s.nextCheck) && now.Before(leaf.NotAfter)
}

// certID is a certificate's ARI identifier (RFC 9773 §4.1): the base64url of its
// Authority Key Identifier and of its serial number's DER content octets, dot-separated.
func certID(leaf *x509.Certificate) string {
	serial := leaf.SerialNumber.Bytes()
	if len(serial) == 0 || serial[0]&0x80 != 0 {
		serial = append([]byte{0}, serial...) // DER INTEGER: positive, so a leading zero
	}
	return base64.RawURLEncoding.EncodeToString(leaf.AuthorityKeyId) + "." + base64.RawURLEncoding.EncodeToString(serial)
}

// fetchRenewalInfo asks the CA for leaf's renewal information, and returns it with the
// Retry-After of the answer (0 if none).
func (a *acmeManager) fetchRenewalInfo(ctx context.Context, leaf *x509.Certificate) (*renewalInfo, time.Duration, error) {
	dir, err := a.directory(ctx)
	if err != nil {
		return nil, 0, err
	}
	if dir.RenewalInfo == "" {
		return nil, 0, errNoARI
	}
	if len(leaf.AuthorityKeyId) == 0 {
		return nil, 0, errors.New("certs: the certificate has no Authority Key Identifier, which ARI needs")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := strings.TrimSuffix(dir.RenewalInfo, "/") + "/" + certID(leaf)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("User-Agent", "edgeproxy")
	resp, err := (&http.Client{Transport: a.base}).Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	retryAfter := parseRetryAfter(resp.Header.Get("Retry-After"), a.now())
	if resp.StatusCode != http.StatusOK {
		var p problemDoc
		_ = json.NewDecoder(io.LimitReader(resp.Body, maxInspect)).Decode(&p)
		return nil, retryAfter, fmt.Errorf("certs: renewal information: %s %s %s", resp.Status, p.Type, p.Detail)
	}
	var info renewalInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxInspect)).Decode(&info); err != nil {
		return nil, retryAfter, fmt.Errorf("certs: renewal information: %w", err)
	}
	w := info.SuggestedWindow
	if w.Start.IsZero() || !w.Start.Before(w.End) {
		return nil, retryAfter, fmt.Errorf("certs: renewal information: invalid window %s", info.window())
	}
	return &info, retryAfter, nil
}

// checkARI checks the renewal information of cur, the certificate of d, and reschedules
// it: a new window gets a random renewal time in it (at once when that is past, as when
// the CA signals a revocation), an unchanged one keeps its time. The next check is
// after the CA's Retry-After, clamped to [1 minute, ARIPoll]; after a failure, after a
// backoff or the CA's Retry-After (up to ARIPoll), the last window (or the lifetime)
// still deciding.
func (a *acmeManager) checkARI(ctx context.Context, d *acmeDomain, cur *servedCert) {
	leaf := cur.cert.Leaf
	info, retryAfter, err := a.fetchARI(ctx, leaf)
	if ctx.Err() != nil {
		return
	}
	now := a.now()
	sc := *cur
	s := &sc.ari
	switch {
	case errors.Is(err, errNoARI):
		s.nextCheck = time.Time{}
		a.log.Info(fmt.Sprintf("acme: %s offers no renewal information (ARI): %s is renewed by its lifetime", a.opts.DirectoryURL, d.name),
			"domain", d.name, "renew_at", sc.fallbackAt.UTC().Format(time.RFC3339))
	case err != nil:
		s.failures++
		s.err = err.Error()
		wait := min(growth(a.opts.RetryMin, a.opts.ARIPoll, s.failures), a.opts.ARIPoll)
		s.nextCheck = now.Add(max(wait, min(retryAfter, a.opts.ARIPoll)))
		a.log.Warn(fmt.Sprintf("acme: cannot get the renewal information of %s: %v; checking again in %s, meanwhile renewing by %s",
			d.name, err, roughly(s.nextCheck.Sub(now)), map[bool]string{true: "the last window", false: "the lifetime"}[s.info != nil]), "domain", d.name)
	default:
		s.failures, s.err, s.checked = 0, "", now
		if s.info == nil || !s.info.SuggestedWindow.Start.Equal(info.SuggestedWindow.Start) || !s.info.SuggestedWindow.End.Equal(info.SuggestedWindow.End) {
			w := info.SuggestedWindow
			s.chosen = w.Start.Add(randDuration(w.End.Sub(w.Start)))
			s.info = info
			msg := fmt.Sprintf("acme: renewal window of %s from the CA: %s", d.name, info.window())
			level := a.log.Info
			if !s.chosen.After(now) {
				msg += "; it is open: renewing now"
				level = a.log.Warn
			}
			attrs := []any{"domain", d.name, "serial", serialHex(leaf), "chosen", s.chosen.UTC().Format(time.RFC3339)}
			if info.ExplanationURL != "" {
				attrs = append(attrs, "explanation", info.ExplanationURL)
			}
			level(msg, attrs...)
		}
		wait := a.opts.ARIPoll
		if retryAfter > 0 {
			wait = min(max(retryAfter, minARIPoll), a.opts.ARIPoll)
		}
		s.nextCheck = now.Add(wait)
	}
	a.store(d, &sc)
}

// growth is base·3^(n-1), stopping once it reaches limit.
func growth(base, limit time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= retryFactor
	}
	return d
}
