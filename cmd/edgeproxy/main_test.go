package main

import (
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// Every command answers -h with its usage and exit 0.
func TestCommands_Help(t *testing.T) {
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := mainArgs([]string{c.name, "-h"}, &stdout, &stderr); code != 0 {
				t.Errorf("exit %d; want 0", code)
			}
			if !strings.Contains(stderr.String(), "Usage: edgeproxy "+c.name) {
				t.Errorf("stderr %q lacks the usage line", stderr.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := mainArgs([]string{"nonsense"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), `unknown command "nonsense"`) {
		t.Errorf("unknown command: exit %d, stderr %q; want 2 and a message", code, stderr.String())
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := mainArgs([]string{"version"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "edgeproxy ") {
		t.Errorf("exit %d, stdout %q; want 0 and \"edgeproxy …\"", code, stdout.String())
	}
}

// validate prints every problem as FILE:LINE:COL: message and exits 1; warnings keep 0.
func TestValidate_PrintsEveryProblemWithPosition(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("listen:\n  htps: \":443\"\npool:\n  targets: [\"127.0.0.1\"]\n  health_check: {interval: soon}\ntls: {self_signed: true}\n"), 0o600)
	var stdout, stderr bytes.Buffer
	code := mainArgs([]string{"validate", "-config", bad}, &stdout, &stderr)
	want := bad + `:2:3: unknown key "htps" in listen (known keys: h2c, http, http_mode, https, metrics)` + "\n" +
		bad + `:4:13: pool.targets: "127.0.0.1" is not host:port (missing port in address)` + "\n" +
		bad + `:5:28: pool.health_check.interval: "soon" is not a duration (use a unit, e.g. 500ms, 30s, 5m)` + "\n"
	if code != 1 || stdout.String() != want {
		t.Errorf("exit %d, stdout:\n%s\nwant exit 1 and:\n%s", code, stdout.String(), want)
	}

	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("listen: {metrics: \"0.0.0.0:9180\"}\ntls: {self_signed: true}\npool: {targets: [\"127.0.0.1:8000\"]}\n"), 0o600)
	stdout.Reset()
	code = mainArgs([]string{"validate", "-config", good}, &stdout, &stderr)
	if code != 0 || !strings.HasPrefix(stdout.String(), good+":1:19: warning: listen.metrics") {
		t.Errorf("exit %d, stdout %q; want 0 and a warning about listen.metrics", code, stdout.String())
	}

	stdout.Reset()
	if code := mainArgs([]string{"validate", "-config", filepath.Join(dir, "missing.yaml")}, &stdout, &stderr); code != 1 {
		t.Errorf("missing file: exit %d; want 1", code)
	}
}

// run refuses an invalid config with the same messages, before binding anything.
func TestRun_InvalidConfigExits1(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("pool: {targets: []}\n"), 0o600)
	var stdout, stderr bytes.Buffer
	if code := mainArgs([]string{"run", "-config", bad}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), bad+":1:17: pool.targets is empty") {
		t.Errorf("exit %d, stderr %q; want 1 and the problem", code, stderr.String())
	}
}

// A port that is taken is a clear start-up error, exit 1.
func TestRun_PortInUse(t *testing.T) {
	bin := testutil.BuildEdgeproxy(t)
	busy := testutil.LoopbackAddr(t, "127.0.0.1")
	first := writeConfig(t, "listen: {https: \""+busy+"\"}\ntls: {self_signed: true}\npool: {targets: [\"127.0.0.1:9\"]}\n")
	p1 := testutil.StartProc(t, bin, "run", "-config", first)
	if !p1.WaitForOutput("edgeproxy serving", 10*time.Second) {
		t.Fatalf("first edge did not start:\n%s", p1.Output())
	}
	p2 := testutil.StartProc(t, bin, "run", "-config", first)
	code, err := p2.Wait(10 * time.Second)
	if err != nil || code != 1 || !strings.Contains(p2.Output(), "address already in use") {
		t.Errorf("second edge: exit %d, %v, output:\n%s\nwant exit 1 naming the taken port", code, err, p2.Output())
	}
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "edgeproxy.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// The demo needs no files: it serves https in front of three backends, prints a curl
// line and the metrics URL, shows health transitions, and stops on Ctrl-C.
func TestDemo_ServesWithNoSetup(t *testing.T) {
	bin := testutil.BuildEdgeproxy(t)
	https := testutil.LoopbackAddr(t, "127.0.0.1")
	metrics := testutil.LoopbackAddr(t, "127.0.0.1")
	p := testutil.StartProcWith(t, testutil.ProcOptions{Dir: t.TempDir()}, bin, "demo", "-https", https, "-metrics", metrics)
	if !p.WaitForOutput("curl -k https://"+https+"/", 10*time.Second) {
		t.Fatalf("no curl line:\n%s", p.Output())
	}
	if !p.WaitForOutput("http://"+metrics+"/metrics", 5*time.Second) {
		t.Errorf("no metrics URL:\n%s", p.Output())
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(p.Output(), "healthy: first check passed") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the three backends did not all pass their first check:\n%s", p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	seen := map[string]bool{}
	for i := 0; i < 6; i++ {
		resp, err := c.Get("https://" + https + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[strings.Fields(string(body))[2]] = true
	}
	if len(seen) < 2 {
		t.Errorf("requests reached %v; want the demo backends in turn", seen)
	}
	if err := p.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
		t.Errorf("demo exit %d, %v; want 0 on Ctrl-C", code, err)
	}
}

// validate reports a route to an undefined pool (an error), an unreachable route and a
// pool no route uses (warnings), each at its FILE:LINE:COL.
func TestValidate_RoutesAndPools(t *testing.T) {
	const pools = `listen: {https: "127.0.0.1:8443"}
tls: {self_signed: true}
pools:
  web: {targets: ["127.0.0.1:8000"]}
  spare: {targets: ["127.0.0.1:8001"]}
routes:
  - {name: all, pool: web}
  - {name: shadowed, path_prefix: /api/, pool: web}
`
	bad := writeConfig(t, pools+"  - {name: typo, hosts: [api.app.test], pool: wbe}\n")
	expectValidate(t, bad, 1, bad+`:9:47: routes[2].pool: no pool named "wbe"`)
	good := writeConfig(t, pools)
	expectValidate(t, good, 0, // warnings only
		good+":8:5: warning: routes[1] (shadowed) is unreachable",
		good+`:5:3: warning: pools.spare: no route sends requests to pool "spare"`)
}

// expectValidate runs validate -syntax-only on file and checks its exit code and that its
// output has each of want.
func expectValidate(t *testing.T, file string, wantCode int, want ...string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := mainArgs([]string{"validate", "-syntax-only", "-config", file}, &stdout, &stderr)
	out := stdout.String() + stderr.String()
	if code != wantCode {
		t.Errorf("validate exit %d; want %d:\n%s", code, wantCode, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("validate output lacks %q:\n%s", w, out)
		}
	}
}
