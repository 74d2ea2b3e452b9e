package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pebbleStartTimeout bounds how long StartPebble waits for Pebble and its DNS server.
const pebbleStartTimeout = 20 * time.Second

// PebbleModule and PebbleVersion are the Pebble the tests run, built from the Go module
// proxy (`go install PebbleModule/cmd/pebble@PebbleVersion`, which .ci/run does): 2.8.0
// has ACME Renewal Information and profiles, which Debian's 2.4.0 lacks, and still sends
// the finalize response's Location header that golang.org/x/crypto/acme's order polling
// needs (2.9.0 dropped it).
const (
	PebbleModule  = "github.com/letsencrypt/pebble/v2"
	PebbleVersion = "v2.8.0"
)

// PebbleOptions configure StartPebble.
type PebbleOptions struct {
	// HTTPPort is the port Pebble connects to for HTTP-01 validations: the edge's plain
	// HTTP port. 0 means a free port that nothing listens on, so HTTP-01 fails.
	HTTPPort int
	// TLSPort is the port Pebble connects to for TLS-ALPN-01 validations: the edge's HTTPS
	// port. 0 means a free port that nothing listens on, so TLS-ALPN-01 fails.
	TLSPort int
	// CertificateValidity is the lifetime of the certificates of Pebble's "default"
	// profile, in whole seconds; 0 means Pebble's default (90 days).
	CertificateValidity time.Duration
	// Profiles are further profiles Pebble offers, by name, with the lifetime of their
	// certificates (such as "shortlived": 6 days). Pebble picks a random profile for an
	// order that names none: with Profiles, orders should name one.
	Profiles map[string]time.Duration
	// Env are extra environment variables for pebble (KEY=VALUE), such as
	// "PEBBLE_AUTHZREUSE=0" so that every order needs a validation.
	Env []string
}

// Pebble is a running Pebble ACME server (Let's Encrypt's test CA, PebbleVersion) with
// pebble-challtestsrv as its DNS server, answering 127.0.0.1 for every name
// (and no AAAA), so that validations of any test domain reach the edge on loopback.
// Validations happen for real: PEBBLE_VA_ALWAYS_VALID is never set, and
// PEBBLE_VA_NOSLEEP=1 only removes Pebble's random waits before them. Pebble rejects no
// good nonce (PEBBLE_WFE_NONCEREJECT=0), so tests are not flaky on badNonce retries.
//
// Both processes are killed when the test ends, and their output is logged if it failed.
type Pebble struct {
	// DirectoryURL is the ACME directory, for tls.acme.directory.
	DirectoryURL string
	// CARootsFile is a PEM file with the CA of Pebble's own HTTPS certificate (made up
	// by StartPebble), for tls.acme.ca_roots.
	CARootsFile string
	// ManagementURL is Pebble's management interface (https, same CA), without a
	// trailing slash.
	ManagementURL string
	// HTTPPort and TLSPort are the ports Pebble validates HTTP-01 and TLS-ALPN-01 on.
	HTTPPort, TLSPort int
	// DNSAddr is pebble-challtestsrv's DNS server (UDP and TCP), which Pebble resolves
	// with; DNSManagementURL is its management interface (plain http), used by AddA.
	DNSAddr, DNSManagementURL string

	t      testing.TB
	proc   *Proc
	dns    *Proc
	client *http.Client // trusts CARootsFile

	rootsOnce sync.Once
	roots     *x509.CertPool
	rootsErr  error
}

// StartPebble starts pebble-challtestsrv and pebble on free loopback ports and waits
// until Pebble's directory answers. When the programs are missing the test is skipped,
// or fails in CI.
func StartPebble(t testing.TB, opts PebbleOptions) *Pebble {
	t.Helper()
	pebbleBin := pebbleBinary(t, "pebble")
	challBin := pebbleBinary(t, "pebble-challtestsrv")
	dir := t.TempDir()

	// Pebble's HTTPS certificate, from a CA of its own (Debian's pebble package does not
	// ship the test certificates of Pebble's source tree).
	caFile, certFile, keyFile, pool := CASignedFiles(t, dir, "localhost", "127.0.0.1")
	if opts.HTTPPort == 0 {
		opts.HTTPPort = FreePort(t, "127.0.0.1")
	}
	if opts.TLSPort == 0 {
		opts.TLSPort = FreePort(t, "127.0.0.1")
	}

	dnsAddr := LoopbackAddr(t, "127.0.0.1")
	dnsMgmt := LoopbackAddr(t, "127.0.0.1")
	dns := StartProcWith(t, ProcOptions{Name: "pebble-challtestsrv"}, challBin,
		"-dns01", dnsAddr,
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
		"-management", dnsMgmt,
		"-defaultIPv4", "127.0.0.1",
		"-defaultIPv6", "",
	)
	if err := waitTCP(dnsAddr, pebbleStartTimeout, dns.Done()); err != nil {
		t.Fatalf("testutil: pebble-challtestsrv: %v\n%s", err, dns.Output())
	}

	listen := LoopbackAddr(t, "127.0.0.1")
	mgmt := LoopbackAddr(t, "127.0.0.1")
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        mgmt,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       opts.HTTPPort,
		"tlsPort":                        opts.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}}
	profiles := map[string]any{"default": map[string]any{
		"description": "Pebble's default profile", "validityPeriod": int64(opts.CertificateValidity / time.Second)}}
	for name, v := range opts.Profiles {
		profiles[name] = map[string]any{"description": "profile " + name, "validityPeriod": int64(v / time.Second)}
	}
	cfg["pebble"].(map[string]any)["profiles"] = profiles
	cfgData, _ := json.MarshalIndent(cfg, "", "  ")
	cfgFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(cfgFile, cfgData, 0o600); err != nil {
		t.Fatal(err)
	}
	env := append([]string{
		"PEBBLE_VA_NOSLEEP=1",
		"PEBBLE_WFE_NONCEREJECT=0",
		"PEBBLE_VA_ALWAYS_VALID=0", // in case the environment has it: validations must be real
	}, opts.Env...)
	proc := StartProcWith(t, ProcOptions{Name: "pebble", Env: env}, pebbleBin, "-config", cfgFile, "-dnsserver", dnsAddr)

	p := &Pebble{
		DirectoryURL:     "https://" + listen + "/dir",
		CARootsFile:      caFile,
		ManagementURL:    "https://" + mgmt,
		HTTPPort:         opts.HTTPPort,
		TLSPort:          opts.TLSPort,
		DNSAddr:          dnsAddr,
		DNSManagementURL: "http://" + dnsMgmt,
		t:                t,
		proc:             proc,
		dns:              dns,
		client: &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		},
	}
	deadline := time.Now().Add(pebbleStartTimeout)
	for {
		err := p.getOK(p.DirectoryURL)
		if err == nil {
			break
		}
		if proc.Exited() || time.Now().After(deadline) {
			t.Fatalf("testutil: pebble did not serve its directory within %v: %v\n%s", pebbleStartTimeout, err, proc.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// pebbleBinary finds the program name (pebble, pebble-challtestsrv) built from
// PebbleModule at PebbleVersion (its Go build information says so), in GOBIN,
// GOPATH/bin, ~/go/bin or PATH: Debian's pebble package may come first in PATH, and is
// too old.
func pebbleBinary(t testing.TB, name string) string {
	t.Helper()
	var candidates []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		candidates = append(candidates, filepath.Join(gobin, name))
	}
	for _, d := range extraBinDirs() {
		candidates = append(candidates, filepath.Join(d, name))
	}
	if p, err := exec.LookPath(name); err == nil {
		candidates = append(candidates, p)
	}
	var seen []string
	read := map[string]bool{} // by resolved path: /bin is /usr/bin on Debian
	for _, c := range candidates {
		if r, err := filepath.EvalSymlinks(c); err == nil {
			if read[r] {
				continue
			}
			read[r] = true
		}
		info, err := buildinfo.ReadFile(c)
		if err != nil {
			continue
		}
		if info.Main.Path == PebbleModule && info.Main.Version == PebbleVersion {
			return c
		}
		if info.Main.Path == "" {
			seen = append(seen, c+" has no module version (a distribution's build, such as Debian's 2.4.0)")
		} else {
			seen = append(seen, fmt.Sprintf("%s is %s %s", c, info.Main.Path, info.Main.Version))
		}
	}
	what := name + " " + PebbleVersion
	if len(seen) > 0 {
		what += " (found only: " + strings.Join(seen, "; ") + ")"
	}
	missing(t, what, InstallHint(name))
	return ""
}

func (p *Pebble) getOK(url string) error {
	resp, err := p.client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// Roots returns a pool with Pebble's issuing root (from the management interface), for
// clients of the sites whose certificates Pebble issued. Pebble makes a new root at each
// start; this is the running one's, fetched once.
func (p *Pebble) Roots() *x509.CertPool {
	p.t.Helper()
	p.rootsOnce.Do(func() {
		resp, err := p.client.Get(p.ManagementURL + "/roots/0")
		if err != nil {
			p.rootsErr = err
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil || resp.StatusCode != http.StatusOK {
			p.rootsErr = fmt.Errorf("GET /roots/0: %s %v", resp.Status, err)
			return
		}
		p.roots = x509.NewCertPool()
		if !p.roots.AppendCertsFromPEM(data) {
			p.rootsErr = fmt.Errorf("GET /roots/0: no PEM certificate in %q", data)
		}
	})
	if p.rootsErr != nil {
		p.t.Fatalf("testutil: Pebble's root: %v", p.rootsErr)
	}
	return p.roots
}

// Orders returns how many new-order requests Pebble has received so far (counted in its
// log, which names each request's handler).
func (p *Pebble) Orders() int {
	return strings.Count(p.proc.Output(), "POST /order-plz ->")
}

// OrdersReplacing returns how many orders Pebble accepted as the replacement of an
// earlier certificate (an ARI "replaces" field it checked), counted in its log.
func (p *Pebble) OrdersReplacing() int {
	return strings.Count(p.proc.Output(), "ARI: order ")
}

// SetRenewalInfo makes Pebble answer the renewal-information (ARI) requests for cert
// (PEM) with a window from start to end and no Retry-After, instead of its own window
// (a third of the lifetime before expiry, ±1 day).
func (p *Pebble) SetRenewalInfo(certPEM []byte, start, end time.Time) {
	p.t.Helper()
	window, _ := json.Marshal(map[string]any{"suggestedWindow": map[string]any{
		"start": start.UTC().Format(time.RFC3339), "end": end.UTC().Format(time.RFC3339)}})
	body, _ := json.Marshal(map[string]any{"certificate": string(certPEM), "ariResponse": string(window)})
	resp, err := p.client.Post(p.ManagementURL+"/set-renewal-info/", "application/json", strings.NewReader(string(body)))
	if err != nil {
		p.t.Fatalf("testutil: pebble set-renewal-info: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		p.t.Fatalf("testutil: pebble set-renewal-info: %s %s", resp.Status, msg)
	}
}

// AddA makes the DNS server answer host's A queries with ips instead of 127.0.0.1. Pebble
// dials what its DNS answers when it validates: only a name that no test orders may
// resolve outside loopback (a TEST-NET address such as 192.0.2.1, for a resolver test).
func (p *Pebble) AddA(host string, ips ...string) {
	p.t.Helper()
	body, _ := json.Marshal(map[string]any{"host": host, "addresses": ips})
	resp, err := p.client.Post(p.DNSManagementURL+"/add-a", "application/json", strings.NewReader(string(body)))
	if err != nil {
		p.t.Fatalf("testutil: pebble-challtestsrv add-a: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		p.t.Fatalf("testutil: pebble-challtestsrv add-a %s: %s %s", host, resp.Status, msg)
	}
}

// Output returns Pebble's log so far.
func (p *Pebble) Output() string { return p.proc.Output() }

// Stop kills Pebble (not its DNS server), as a CA outage would, and waits for it to exit.
func (p *Pebble) Stop() {
	p.t.Helper()
	if p.proc.Exited() {
		return
	}
	_ = p.proc.Signal(syscall.SIGKILL)
	if _, err := p.proc.Wait(10 * time.Second); err != nil {
		p.t.Fatalf("testutil: stopping pebble: %v", err)
	}
}
