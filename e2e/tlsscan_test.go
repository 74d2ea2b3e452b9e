package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// testssl.sh finds nothing rated high or critical in the edge's default TLS set-up, apart
// from the test certificate's own short lifetime and missing revocation URLs; TLS 1.0/1.1,
// SSL and weak suites are off, and HSTS is sent when configured.
func TestTLSScan_TestsslFindsNoHighSeverity(t *testing.T) {
	if testing.Short() {
		t.Skip("testssl.sh takes about a minute; skipped with -short")
	}
	testssl := testutil.RequireTool(t, "testssl")
	backend := namedBackend(t, "127.0.0.2", "backend")
	dir := t.TempDir()
	// testssl.sh checks the chain up to a root it is given, so the certificate is signed by a CA.
	ca, cert, key, _ := testutil.CASignedFiles(t, dir, "app.test")
	e := startEdge(t, fmt.Sprintf(`listen:
  https: "{{HTTPS}}"
tls:
  certificates: [{cert: %q, key: %q}]
headers:
  hsts: "max-age=31536000"
pool:
  targets: [%q]
  health_check: {interval: 200ms}
`, cert, key, backend.Listener.Addr().String()))
	_, port, _ := strings.Cut(e.HTTPS, ":")

	out := filepath.Join(dir, "testssl.json")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testssl, "--quiet", "--color", "0", "--warnings", "off",
		"--connect-timeout", "5", "--openssl-timeout", "5", "--add-ca", ca, "--jsonfile", out,
		"--ip", "127.0.0.1", "https://app.test:"+port+"/")
	if msg, err := cmd.CombinedOutput(); err != nil && ctx.Err() != nil {
		t.Fatalf("testssl.sh timed out: %v\n%s", err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("no testssl.sh JSON: %v", err)
	}
	var findings []struct{ ID, Severity, Finding string }
	if err := json.Unmarshal(data, &findings); err != nil {
		t.Fatal(err)
	}
	// Findings about the throw-away test certificate itself, not the edge's TLS.
	aboutTestCert := map[string]bool{"cert_expirationStatus": true, "cert_notAfter": true, "cert_revocation": true, "cert_validityPeriod": true}
	byID := map[string]string{}
	for _, f := range findings {
		byID[f.ID] = f.Finding
		if (f.Severity == "HIGH" || f.Severity == "CRITICAL") && !aboutTestCert[f.ID] {
			t.Errorf("testssl.sh: %s %s: %s", f.Severity, f.ID, f.Finding)
		}
	}
	for _, id := range []string{"SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"} {
		if byID[id] != "not offered" {
			t.Errorf("%s: %q; want not offered", id, byID[id])
		}
	}
	if !strings.HasPrefix(byID["TLS1_3"], "offered") || byID["HSTS"] == "not offered" || byID["cert_chain_of_trust"] != "passed." {
		t.Errorf("TLS1_3 %q, HSTS %q, chain %q; want TLS 1.3 offered, HSTS sent, chain trusted", byID["TLS1_3"], byID["HSTS"], byID["cert_chain_of_trust"])
	}
}
