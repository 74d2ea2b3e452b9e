package e2e

// `edgeproxy doctor` and the live hints, against a prepared set-up on loopback: Pebble
// with pebble-challtestsrv as the DNS server (one name answers 127.0.0.1, another a
// TEST-NET address that nothing ever dials), a real Django whose ALLOWED_HOSTS rejects the
// health check's Host, a certificate that misses a configured name, and a real edge whose
// ACME order fails because Pebble's challenge port is closed.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// runDoctor runs `edgeproxy doctor` with args and returns its standard output and exit
// status.
func runDoctor(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, testutil.BuildEdgeproxy(t), append([]string{"doctor"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
	default:
		t.Fatalf("edgeproxy doctor: %v\n%s", err, stderr.String())
	}
	t.Logf("edgeproxy doctor %s (exit %d):\n%s%s", strings.Join(args, " "), cmd.ProcessState.ExitCode(), stdout.String(), stderr.String())
	return stdout.String(), cmd.ProcessState.ExitCode()
}

// doctorLine is one expected line: its status, check and a pattern of its detail.
type doctorLine struct{ status, check, detail string }

func checkDoctor(t *testing.T, out string, code, wantCode int, want []doctorLine) {
	t.Helper()
	if code != wantCode {
		t.Errorf("exit status %d; want %d", code, wantCode)
	}
	for _, w := range want {
		re := regexp.MustCompile(`(?m)^` + w.status + `\s+` + regexp.QuoteMeta(w.check) + `\s+.*` + w.detail)
		if !re.MatchString(out) {
			t.Errorf("no line %q %q matching %q in:\n%s", w.status, w.check, w.detail, out)
		}
	}
}

// doctorSite is the loopback set-up the doctor tests share.
type doctorSite struct {
	pebble *testutil.Pebble
	django *testutil.Django
}

func newDoctorSite(t *testing.T) *doctorSite {
	t.Helper()
	s := &doctorSite{
		// Challenge ports 0: free ports nothing listens on, so every validation fails
		// with connection refused, as with a closed security group.
		pebble: testutil.StartPebble(t, testutil.PebbleOptions{Env: []string{"PEBBLE_AUTHZREUSE=0"}}),
		django: testutil.StartDjango(t, testutil.LoopbackAddr(t, "127.0.0.1"), testutil.DjangoOptions{
			AllowedHosts: []string{"app.test"}, Instance: "doctor",
		}),
	}
	// A name whose DNS points at another box: TEST-NET-1, never dialled (no edge orders it,
	// and doctor only compares addresses).
	s.pebble.AddA("elsewhere.app.test", "192.0.2.10")
	return s
}

// writeConfig writes config (with {{HTTPS}} and {{METRICS}} replaced by free loopback
// addresses) and returns its file name.
func writeConfig(t *testing.T, config string) string {
	t.Helper()
	config = strings.NewReplacer("{{HTTPS}}", testutil.LoopbackAddr(t, "127.0.0.1"), "{{METRICS}}", testutil.LoopbackAddr(t, "127.0.0.1")).Replace(config)
	file := filepath.Join(t.TempDir(), "edgeproxy.yaml")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestDoctor(t *testing.T) {
	s := newDoctorSite(t)
	target := regexp.QuoteMeta(s.django.Addr)

	// All is well: every line ok, exit 0.
	t.Run("healthy", func(t *testing.T) {
		cert, key, _ := testutil.CertFiles(t, t.TempDir(), "app.test")
		file := writeConfig(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: [%q]
  health_check: {path: /admin/login/, host: app.test}
`, cert, key, s.django.Addr))
		out, code := runDoctor(t, "-config", file)
		checkDoctor(t, out, code, 0, []doctorLine{
			{"ok", "config", "is valid"},
			{"ok", "listen.https", "can be bound"},
			{"ok", "listen.metrics", "can be bound"},
			{"ok", "cert:app.test", `covered by .*app\.test\.crt, valid until`},
			{"ok", "target:" + s.django.Addr, `GET /admin/login/ \(Host: app\.test\) answers 200`},
		})
		if strings.Contains(out, "warn ") || strings.Contains(out, "fail ") {
			t.Errorf("a healthy set-up got a warn or fail line:\n%s", out)
		}
	})

	// The wrong subdomain: the certificate covers app.test, but the site's name is
	// www.app.test; an ACME domain whose DNS points at another box; and the health check's
	// Host, www.app.test, not in ALLOWED_HOSTS.
	t.Run("wrong names", func(t *testing.T) {
		cert, key, _ := testutil.CertFiles(t, t.TempDir(), "app.test")
		file := writeConfig(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
  acme:
    domains: [elsewhere.app.test]
    directory: %q
    ca_roots: %q
    cache_dir: %q
pool:
  targets: [%q]
  health_check: {path: /admin/login/, host: www.app.test}
`, cert, key, s.pebble.DirectoryURL, s.pebble.CARootsFile, filepath.Join(t.TempDir(), "acme"), s.django.Addr))
		out, code := runDoctor(t, "-config", file, "-resolver", s.pebble.DNSAddr)
		checkDoctor(t, out, code, 1, []doctorLine{
			{"ok", "config", "is valid"},
			{"warn", "dns:elsewhere.app.test", `→ 192\.0\.2\.10 \(via .*\), which no interface of this host has\. On EC2 the public IP is NATed and never on an interface`},
			{"ok", "acme.directory", "answers"},
			{"warn", "cert:elsewhere.app.test", "no certificate for elsewhere.app.test in .* yet: edgeproxy orders it at start-up"},
			{"fail", "cert:www.app.test", `no certificate covers www\.app\.test \(pool\.health_check\.host\); covered: app\.test, elsewhere\.app\.test \(ACME\)\. .*add www\.app\.test to tls\.acme\.domains or to the certificate`},
			{"fail", "target:" + s.django.Addr, `answers 400: Django's ALLOWED_HOSTS probably rejects Host "www\.app\.test"\. Add www\.app\.test to ALLOWED_HOSTS`},
			{"ok", "acme.last_error", "no failed ACME order on record"},
		})

		// With this host's public IP given, a name pointing elsewhere is a failure.
		out, code = runDoctor(t, "-config", file, "-resolver", s.pebble.DNSAddr, "-public-ip", "198.51.100.7")
		checkDoctor(t, out, code, 1, []doctorLine{
			{"fail", "dns:elsewhere.app.test", `→ 192\.0\.2\.10 \(via .*\), not this host's public IP 198\.51\.100\.7 \(-public-ip\) nor an interface's: DNS points elsewhere`},
		})
	})

	// The closed port and the ALLOWED_HOSTS trap, with the edge running: its ACME order
	// fails because Pebble cannot connect to the TLS-ALPN-01 port, and its health checks
	// send the target's address as Host.
	t.Run("closed port", func(t *testing.T) {
		cacheDir := filepath.Join(t.TempDir(), "acme")
		e := startEdge(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  acme:
    domains: [app.test]
    directory: %q
    ca_roots: %q
    cache_dir: %q
pool:
  targets: [%q]
  health_check: {path: /admin/login/, interval: 1s}
`, s.pebble.DirectoryURL, s.pebble.CARootsFile, cacheDir, s.django.Addr))
		start := time.Now()
		if !e.WaitForOutput("acme: order for app.test failed", 30*time.Second) {
			t.Fatalf("no failed order within 30s:\n%s", e.Output())
		}
		t.Logf("ACME order failed after %v", time.Since(start).Round(time.Millisecond))
		// The failure is logged, then saved.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			_, err := os.Stat(filepath.Join(cacheDir, "last-error.json"))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the edge saved no last error: %v", err)
			}
		}

		out, code := runDoctor(t, "-config", e.ConfigFile, "-resolver", s.pebble.DNSAddr)
		checkDoctor(t, out, code, 1, []doctorLine{
			{"ok", "config", "is valid"},
			{"ok", "listen.metrics", `already bound by this edgeproxy \(its /healthz and /targets answer\)`},
			{"ok", "listen.https", "already bound by this edgeproxy"},
			{"ok", "dns:app.test", `→ 127\.0\.0\.1 \(via .*\): this host`},
			{"ok", "acme.directory", "answers"},
			{"fail", "cert:app.test", "no certificate for app.test yet, and its last ACME order failed: see acme.last_error"},
			{"fail", "target:" + s.django.Addr, `answers 400: Django's ALLOWED_HOSTS probably rejects Host "` + target + `"\. Set pool\.health_check\.host: app\.test`},
			{"fail", "acme.last_error", `the order for app\.test failed at .*: the CA could not connect to this host.*: port 443 is not reachable from the internet\. Open it in the firewall or the EC2 security group`},
		})
		if !regexp.MustCompile(`(?m)^\s+the CA said: urn:ietf:params:acme:error:\w+: Failed to connect to 127\.0\.0\.1:\d+ for the tls-alpn-01 challenge`).MatchString(out) {
			t.Errorf("the CA's own words are not shown:\n%s", out)
		}
	})
}

// A TLS handshake for a name no certificate covers (DNS pointing another name at the box)
// is served the default certificate, logged once with the covered names and a hint, and
// counted every time.
func TestTLS_UnknownServerNameHint(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	cert, key, _ := testutil.CertFiles(t, t.TempDir(), "django-devops.app.test")
	e := startEdge(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
  metrics: "{{METRICS}}"
tls:
  certificates: [{cert: %q, key: %q}]
pool:
  targets: [%q]
`, cert, key, backend.Listener.Addr().String()))
	for range 3 {
		c, err := tls.Dial("tcp", e.HTTPS, &tls.Config{ServerName: "django-zero.app.test", InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		if got := c.ConnectionState().PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "django-devops.app.test" {
			t.Errorf("served a certificate for %v; want the default one, django-devops.app.test", got)
		}
		c.Close()
	}
	want := "TLS handshake for server name django-zero.app.test, which no certificate covers (covered: django-devops.app.test); did DNS point another name at this box?"
	deadline := time.Now().Add(5 * time.Second)
	for !regexp.MustCompile(`(?m)^edgeproxy_tls_unknown_server_name_total 3$`).MatchString(e.metrics(t)) {
		if time.Now().After(deadline) {
			t.Fatalf("edgeproxy_tls_unknown_server_name_total is not 3:\n%s", e.metrics(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(e.Output(), want); n != 1 {
		t.Errorf("hint logged %d times; want once: %q\n%s", n, want, e.Output())
	}
}
