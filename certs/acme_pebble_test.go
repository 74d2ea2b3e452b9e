package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

const (
	sixDays    = 6 * 24 * time.Hour
	ninetyDays = 90 * 24 * time.Hour
)

// pebbleProfiles are Let's Encrypt's profiles as Pebble plays them: a 90-day default and
// a six-day "shortlived".
var pebbleProfiles = testutil.PebbleOptions{CertificateValidity: ninetyDays, Profiles: map[string]time.Duration{"shortlived": sixDays}}

// lifetime is a certificate's lifetime, as Pebble counts it (NotAfter is inclusive).
func lifetime(leaf *x509.Certificate) time.Duration {
	return leaf.NotAfter.Sub(leaf.NotBefore) + time.Second
}

// The profile is ordered: "shortlived" gets a six-day certificate, "default" Pebble's
// 90 days; a profile the CA does not offer fails the order with the list it does.
func TestAcme_Pebble_ProfileSetsLifetime(t *testing.T) {
	for _, tt := range []struct {
		profile string
		want    time.Duration
	}{{"shortlived", sixDays}, {"default", ninetyDays}} {
		t.Run(tt.profile, func(t *testing.T) {
			s := startPebbleACME(t, pebbleProfiles, ACMEOptions{Domains: []string{"app.test"}, Profile: tt.profile}, true)
			cert := waitCert(t, s.src, "app.test", 30*time.Second)
			if got := lifetime(cert.Leaf); got != tt.want {
				t.Errorf("profile %s: lifetime %v; want %v", tt.profile, got, tt.want)
			}
			st := s.src.Certificates()[0]
			if st.Profile != tt.profile || !st.NotAfter.Equal(cert.Leaf.NotAfter) {
				t.Errorf("/certificates: %+v; want profile %s, not_after %v", st, tt.profile, cert.Leaf.NotAfter)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		s := startPebbleACME(t, pebbleProfiles, ACMEOptions{Domains: []string{"app.test"}, Profile: "classic", RetryMin: time.Hour}, true)
		s.waitFailed(t, 1)
		le, err := ReadLastError(s.dir)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(le.Error, "classic") || !strings.Contains(le.Error, "default, shortlived") {
			t.Errorf("last error %q; want it to name the profile and the CA's (default, shortlived)", le.Error)
		}
		if n := s.pebble.Orders(); n != 0 {
			t.Errorf("Pebble got %d orders; want none (the profile is checked against the directory first)", n)
		}
	})
}

// The CA's renewal information decides: the first certificate is scheduled in Pebble's
// window; when the window moves into the past (Pebble's management interface, as for a
// revocation), the certificate is renewed within one check interval, by an order that
// names it in "replaces", and the new certificate is not renewed again.
func TestAcme_Pebble_ARIWindowInThePastRenewsWithReplaces(t *testing.T) {
	const poll = 500 * time.Millisecond
	s := startPebbleACME(t, pebbleProfiles, ACMEOptions{Domains: []string{"app.test"}, Profile: "shortlived", ARIPoll: poll}, true)
	first := waitCert(t, s.src, "app.test", 30*time.Second)

	// The first check follows the order at once: Pebble's window, a third of the
	// lifetime before expiry ±1 day.
	st := waitStatus(t, s.src, func(st CertificateStatus) bool { return st.RenewalBasis == "ari" })
	ideal := first.Leaf.NotAfter.Add(-lifetime(first.Leaf) / 3)
	if st.ARI == nil || st.ARI.WindowStart.Sub(ideal).Abs() > 25*time.Hour || st.ARI.WindowEnd.Sub(ideal).Abs() > 25*time.Hour ||
		st.NextRenewal.Before(st.ARI.WindowStart) || st.NextRenewal.After(st.ARI.WindowEnd) {
		t.Fatalf("status %+v %+v; want a renewal in Pebble's window around %v", st, st.ARI, ideal)
	}
	if got := s.obs.renewalOf("app.test"); !got.Equal(st.NextRenewal) {
		t.Errorf("renewal time reported %v; want %v", got, st.NextRenewal)
	}

	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: first.Certificate[0]})
	moved := time.Now()
	s.pebble.SetRenewalInfo(certPEM, moved.Add(-2*time.Hour), moved.Add(-time.Hour))
	// One check interval, then the order itself (a validation, a few seconds).
	renewed := waitNewCert(t, s.src, "app.test", first, poll+30*time.Second)
	t.Logf("renewed %v after the window moved", time.Since(moved).Round(time.Millisecond))

	// Pebble 2.8.0 files an issued certificate under the hex of its serial's shortest
	// big-endian bytes, and looks a "replaces" up by the hex of the ID's bytes: a serial
	// whose first octet has its top bit set (about one in 256 of Pebble's 63-bit ones)
	// carries a zero octet in the ID (DER, RFC 9773 §4.1, as Let's Encrypt takes it), and
	// Pebble answers 500 "could not find an order". The renewal then goes through without
	// "replaces" (refusedByCA).
	padded := first.Leaf.SerialNumber.Bytes()[0]&0x80 != 0
	wantReplacing := map[bool]int{false: 1, true: 0}[padded]
	if n := s.pebble.OrdersReplacing(); n != wantReplacing {
		t.Errorf("Pebble accepted %d replacement orders; want %d (serial %s)\n%s", n, wantReplacing, serialHex(first.Leaf), s.pebble.Output())
	}
	if !strings.Contains(s.logs.String(), "replaces="+certID(first.Leaf)) {
		t.Errorf("the renewal order was not logged with replaces=%s", certID(first.Leaf))
	}
	if padded {
		t.Logf("serial %s needs a zero octet in its ARI ID, which Pebble 2.8.0 cannot find: renewed without \"replaces\"", serialHex(first.Leaf))
		if !strings.Contains(s.logs.String(), "could not find an order") {
			t.Errorf("Pebble's refusal of the padded ID was not logged:\n%s", s.logs)
		}
	}
	if lifetime(renewed.Leaf) != sixDays {
		t.Errorf("renewed lifetime %v; want the profile's %v", lifetime(renewed.Leaf), sixDays)
	}
	// The new certificate has Pebble's own window: no second renewal.
	waitStatus(t, s.src, func(st CertificateStatus) bool {
		return st.Serial == serialHex(renewed.Leaf) && st.ARI != nil && !st.ARI.Checked.IsZero() && st.NextRenewal.After(time.Now().Add(24*time.Hour))
	})
	time.Sleep(4 * poll)
	// Orders Pebble took (a refused request with "replaces" is none, however often the
	// client tried it).
	if n := strings.Count(s.pebble.Output(), "Added order "); n != 2 {
		t.Errorf("Pebble took %d orders; want 2 (the first, one renewal)", n)
	}

	// Replacing the first certificate again is refused (Pebble: 409, already replaced;
	// 500 for a padded serial): the order goes through without "replaces".
	again, _, err := s.src.acme.obtain(context.Background(), s.src.acme.domain("app.test"), certID(first.Leaf))
	if err != nil || again == nil {
		t.Fatalf("order replacing an already replaced certificate: %v", err)
	}
	status := map[bool]string{false: "409", true: "500"}[padded]
	if !strings.Contains(s.logs.String(), "that replaces "+certID(first.Leaf)+" ("+status) || s.pebble.OrdersReplacing() != wantReplacing {
		t.Errorf("a refused replacement was not ordered again without it:\n%s", s.logs)
	}
}

// An IP-address certificate (RFC 8738) for 127.0.0.1 is issued through each challenge
// type and served to a client that connects to the address without SNI.
func TestAcme_Pebble_IPAddressCertificate(t *testing.T) {
	for _, challenge := range []string{"tls-alpn-01", "http-01"} {
		t.Run(challenge, func(t *testing.T) {
			po := pebbleProfiles
			opts := ACMEOptions{IPAddresses: []string{"127.0.0.1"}, Profile: "shortlived", RetryMin: time.Hour}
			if challenge == "http-01" {
				po.HTTPPort = testutil.FreePort(t, "127.0.0.1")
			}
			// For HTTP-01 the HTTPS listener is not on Pebble's TLS-ALPN-01 port, which
			// stays closed: that challenge fails, then HTTP-01 is tried.
			s := startPebbleACME(t, po, opts, challenge == "tls-alpn-01")
			if challenge == "http-01" {
				ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(po.HTTPPort)))
				if err != nil {
					t.Fatal(err)
				}
				srv := &http.Server{Handler: s.src.HTTPHandler(http.NotFoundHandler()), ErrorLog: stdlog.New(io.Discard, "", 0)}
				go func() { _ = srv.Serve(ln) }()
				t.Cleanup(func() { srv.Close() })
				s.start()
			}
			cert := waitCert(t, s.src, "127.0.0.1", 60*time.Second)
			if len(cert.Leaf.IPAddresses) != 1 || !cert.Leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || len(cert.Leaf.DNSNames) != 0 {
				t.Errorf("certificate for IPs %v and names %v; want 127.0.0.1 alone", cert.Leaf.IPAddresses, cert.Leaf.DNSNames)
			}
			if !strings.Contains(s.logs.String(), "challenge="+challenge) {
				t.Errorf("not validated by %s:\n%s", challenge, s.logs)
			}

			// A client dialling the address sends no SNI, and verifies the IP.
			var mu sync.Mutex
			sni := "unset"
			cfg := s.src.TLSConfig()
			cfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				mu.Lock()
				sni = h.ServerName
				mu.Unlock()
				return s.src.GetCertificate(h)
			}
			ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ip ok") }),
				ErrorLog: stdlog.New(io.Discard, "", 0)}
			go func() { _ = srv.Serve(ln) }()
			t.Cleanup(func() { srv.Close() })
			inter := x509.NewCertPool()
			for _, der := range cert.Certificate[1:] {
				c, _ := x509.ParseCertificate(der)
				inter.AddCert(c)
			}
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.pebble.Roots()}}}
			resp, err := client.Get("https://" + ln.Addr().String() + "/")
			if err != nil {
				t.Fatalf("GET https://%s/: %v", ln.Addr(), err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			if string(body) != "ip ok" || sni != "" {
				t.Errorf("got %q with SNI %q; want the page, no SNI", body, sni)
			}
			if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: s.pebble.Roots(), Intermediates: inter}); err != nil {
				t.Errorf("certificate does not verify against Pebble's root: %v", err)
			}
		})
	}
}

// waitStatus polls the first entry of src's Certificates until ok accepts it.
func waitStatus(t *testing.T, src *Source, ok func(CertificateStatus) bool) CertificateStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := src.Certificates()[0]
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate status not as expected within 30s: %+v %+v", st, st.ARI)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitNewCert polls until src serves for name a certificate other than old.
func waitNewCert(t *testing.T, src *Source, name string, old *tls.Certificate, timeout time.Duration) *tls.Certificate {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cur := src.acme.domain(name).current.Load(); cur != nil && cur.cert != old {
			return cur.cert
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new certificate for %s within %v", name, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
