package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"edgeproxy/internal/testutil"
)

// runInstall runs install.sh with args and returns its output; it fails the test unless
// the script exits 0.
func runInstall(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("bash", append([]string{"install.sh"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Run twice into a staging root, as a second `install.sh` after an upgrade would: the
// binary and unit are replaced, the operator's config is kept, the unit is enabled.
func TestInstall_RootTwice(t *testing.T) {
	testutil.RequireTool(t, "systemd-analyze") // Debian's systemd, which ships systemctl too
	bin := testutil.BuildEdgeproxy(t)
	root := t.TempDir()
	out := runInstall(t, nil, "--root", root, "--binary", bin)
	if !strings.Contains(out, "edgeproxy.yaml: ok") {
		t.Errorf("first run: the installed example config was not validated ok:\n%s", out)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"usr/local/bin/edgeproxy", 0o755},
		{"etc/edgeproxy/edgeproxy.yaml", 0o644},
		{"etc/systemd/system/edgeproxy.service", 0o644},
	} {
		fi, err := os.Stat(filepath.Join(root, f.path))
		if err != nil {
			t.Errorf("first run: %v", err)
			continue
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: got mode %04o; want %04o", f.path, fi.Mode().Perm(), f.mode)
		}
	}
	link := filepath.Join(root, "etc/systemd/system/multi-user.target.wants/edgeproxy.service")
	if dest, err := os.Readlink(link); err != nil || dest != "/etc/systemd/system/edgeproxy.service" {
		t.Errorf("enable: got %q, %v; want a link to /etc/systemd/system/edgeproxy.service", dest, err)
	}

	config := filepath.Join(root, "etc/edgeproxy/edgeproxy.yaml")
	edited := []byte("# edited by the operator\npool: {targets: [\"127.0.0.1:8001\"]}\ntls: {self_signed: true}\n")
	if err := os.WriteFile(config, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	out = runInstall(t, nil, "--root", root, "--binary", bin)
	if !strings.Contains(out, "keeping "+config) {
		t.Errorf("second run: no \"keeping %s\" in:\n%s", config, out)
	}
	if got, _ := os.ReadFile(config); string(got) != string(edited) {
		t.Errorf("second run overwrote the config: got %q", got)
	}
	if dest, err := os.Readlink(link); err != nil || dest != "/etc/systemd/system/edgeproxy.service" {
		t.Errorf("second run: enable link: got %q, %v", dest, err)
	}
}

// --dry-run prints the plan for the real system and runs nothing. The commands it would
// run are replaced by stubs that record any call, so a mistake cannot touch this machine.
func TestInstall_DryRun(t *testing.T) {
	bin := testutil.BuildEdgeproxy(t)
	stubs := t.TempDir()
	calls := filepath.Join(t.TempDir(), "calls")
	for _, name := range []string{"install", "systemctl", "go", "mkdir", "cp", "ln"} {
		script := "#!/bin/sh\necho \"" + name + " $*\" >> " + calls + "\nexit 1\n"
		if err := os.WriteFile(filepath.Join(stubs, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := runInstall(t, []string{"PATH=" + stubs + ":" + os.Getenv("PATH")}, "--dry-run", "--binary", bin)
	if data, err := os.ReadFile(calls); err == nil {
		t.Fatalf("--dry-run ran commands:\n%s", data)
	}
	for _, want := range []string{
		"+ install -m 0755 " + bin + " /usr/local/bin/edgeproxy",
		"/etc/edgeproxy/edgeproxy.yaml",
		"+ install -m 0644 ",
		"/etc/systemd/system/edgeproxy.service",
		"+ systemctl enable edgeproxy.service",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--dry-run output lacks %q:\n%s", want, out)
		}
	}
}

func TestInstall_Shellcheck(t *testing.T) {
	shellcheck := testutil.RequireTool(t, "shellcheck")
	if out, err := exec.Command(shellcheck, "install.sh").CombinedOutput(); err != nil {
		t.Errorf("shellcheck install.sh: %v\n%s", err, out)
	}
}

// The example config the script installs is valid as shipped (syntax only: it names
// www.example.com and an ACME cache of the unit's StateDirectory).
func TestExampleConfig_Validates(t *testing.T) {
	bin := testutil.BuildEdgeproxy(t)
	out, err := exec.Command(bin, "validate", "-syntax-only", "-config", "edgeproxy.example.yaml").CombinedOutput()
	if err != nil {
		t.Fatalf("edgeproxy validate -syntax-only edgeproxy.example.yaml: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "warning") {
		t.Errorf("the example config has warnings:\n%s", out)
	}
}
