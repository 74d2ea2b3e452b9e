// Package deploy_test checks the files in deploy/ and the root Dockerfile: that the systemd
// unit passes systemd-analyze and rates "OK" or better for exposure, that the install
// script is idempotent and its dry run changes nothing, that the example configurations
// pass `edgeproxy validate`, and that the Dockerfile and the compose file have the shape the
// README promises. deploy/ holds no Go code; these tests are all there is.
package deploy_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"edgeproxy/internal/testutil"
)

const unitFile = "systemd/edgeproxy.service"

// unit is a parsed systemd unit file: section → key → values in order (a key may repeat).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, file string) unit {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not KEY=VALUE in a section: %q", file, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// unitWithBinary writes a copy of the unit whose ExecStart runs bin, as systemd-analyze
// verify checks that the command exists.
func unitWithBinary(t *testing.T, bin string) string {
	t.Helper()
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	const installed = "ExecStart=/usr/local/bin/edgeproxy "
	if !strings.Contains(string(data), installed) {
		t.Fatalf("%s: no %q line to point at the test binary", unitFile, installed)
	}
	out := filepath.Join(t.TempDir(), "edgeproxy.service")
	data = []byte(strings.Replace(string(data), installed, "ExecStart="+bin+" ", 1))
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// The settings the issue and the README promise, independent of systemd-analyze's checks.
func TestSystemdUnit_Directives(t *testing.T) {
	u := parseUnit(t, unitFile)
	svc := u["Service"]
	want := map[string]string{
		"Type":                    "notify",
		"ExecReload":              "kill -HUP $MAINPID",
		"DynamicUser":             "yes",
		"AmbientCapabilities":     "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet":   "CAP_NET_BIND_SERVICE",
		"StateDirectory":          "edgeproxy",
		"ConfigurationDirectory":  "edgeproxy",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"RestrictNamespaces":      "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
		"UMask":                   "0077",
	}
	for k, v := range want {
		if got := svc[k]; len(got) != 1 || got[0] != v {
			t.Errorf("[Service] %s: got %q; want %q", k, got, v)
		}
	}
	if got := svc["SystemCallFilter"]; len(got) == 0 || got[0] != "@system-service" {
		t.Errorf("[Service] SystemCallFilter: got %q; want @system-service first", got)
	}
	if got := svc["ExecStart"]; len(got) != 1 || got[0] != "/usr/local/bin/edgeproxy run -config /etc/edgeproxy/edgeproxy.yaml" {
		t.Errorf("[Service] ExecStart: got %q; want the installed binary and config", got)
	}
	if got := u["Install"]["WantedBy"]; !slices.Equal(got, []string{"multi-user.target"}) {
		t.Errorf("[Install] WantedBy: got %q; want multi-user.target", got)
	}
	// The drain (limits.shutdown_timeout, 30s by default) must fit in the stop timeout.
	stop := strings.TrimSuffix(strings.Join(svc["TimeoutStopSec"], ""), "s")
	if n, err := strconv.Atoi(stop); err != nil || n <= 30 {
		t.Errorf("[Service] TimeoutStopSec: got %q; want more than the 30s default drain", svc["TimeoutStopSec"])
	}
	// The certbot example is there, commented out, in the form the config expects.
	data, _ := os.ReadFile(unitFile)
	for _, s := range []string{
		"#LoadCredential=fullchain.pem:/etc/letsencrypt/live/",
		"#LoadCredential=privkey.pem:/etc/letsencrypt/live/",
		"${CREDENTIALS_DIRECTORY}/privkey.pem",
	} {
		if !strings.Contains(string(data), s) {
			t.Errorf("%s: no %q", unitFile, s)
		}
	}
}

func TestSystemdUnit_Verify(t *testing.T) {
	analyze := testutil.RequireTool(t, "systemd-analyze")
	file := unitWithBinary(t, testutil.BuildEdgeproxy(t))
	out, err := exec.Command(analyze, "verify", file).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// verify also loads the units this one names; only its own findings count.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "edgeproxy") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}

// exposureLine is systemd-analyze security's summary, such as
// "→ Overall exposure level for edgeproxy.service: 1.6 OK 🙂".
var exposureLine = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) ([A-Z]+)`)

func TestSystemdUnit_Security(t *testing.T) {
	analyze := testutil.RequireTool(t, "systemd-analyze")
	file := unitWithBinary(t, testutil.BuildEdgeproxy(t))
	out, err := exec.Command(analyze, "security", "--offline=yes", "--no-pager", file).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security --offline=yes: %v\n%s", err, out)
	}
	m := exposureLine.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security: overall exposure %s %s", m[1], m[2])
	// systemd's scale: PERFECT, SAFE, OK below 5.0, then MEDIUM, EXPOSED, UNSAFE.
	if !slices.Contains([]string{"PERFECT", "SAFE", "OK"}, m[2]) || score >= 5 {
		t.Errorf("got exposure %s %s; want OK or better\n%s", m[1], m[2], out)
	}
}
