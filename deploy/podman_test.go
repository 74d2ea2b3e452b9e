package deploy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// The image, compose and Kubernetes tests run containers with Debian's podman, as a user
// of these machines would: no registry is reachable, so the images are built from local
// stand-ins (see buildImage), and podman runs with runc and cgroupfs (crun refuses the
// hybrid cgroups here) and without default ulimits (refused here too). Each test has its
// own storage (images, containers, volumes) under a temporary directory, removed at the
// end, so that tests and engineers sharing a machine do not see each other's containers.

// podmanCmdTimeout bounds every podman command but the long-running ones.
const podmanCmdTimeout = 3 * time.Minute

// podman runs podman (and podman-compose) with a test's own configuration and storage.
type podman struct {
	t   *testing.T
	bin string
	env []string // CONTAINERS_CONF and CONTAINERS_STORAGE_CONF
	dir string   // the test's storage and configuration
}

// newPodman returns podman with storage of its own; on cleanup every container, pod,
// volume and image in it is removed, then the storage. (Networks are the machine's, not
// the storage's: whoever makes one removes it.) It fails the test (in CI) or skips it when
// podman or runc is missing.
func newPodman(t *testing.T) *podman {
	t.Helper()
	bin := testutil.RequireTool(t, "podman")
	runc := testutil.RequireTool(t, "runc")
	dir, err := os.MkdirTemp("", "edgeproxy-podman-")
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
[engine.runtimes]
runc = [%q]
`, filepath.Join(dir, "events.log"), runc)
	storage := fmt.Sprintf(`[storage]
driver = "overlay"
graphroot = %q
runroot = %q
`, filepath.Join(dir, "graph"), filepath.Join(dir, "run"))
	for name, text := range map[string]string{"containers.conf": conf, "storage.conf": storage} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &podman{t: t, bin: bin, dir: dir, env: []string{
		"CONTAINERS_CONF=" + filepath.Join(dir, "containers.conf"),
		"CONTAINERS_STORAGE_CONF=" + filepath.Join(dir, "storage.conf"),
	}}
	t.Cleanup(func() {
		for _, args := range [][]string{
			{"pod", "rm", "--all", "--force"},
			{"rm", "--all", "--force", "--time", "0"},
			{"volume", "rm", "--all", "--force"},
			{"rmi", "--all", "--force"},
		} {
			if out, err := p.cmd(args...).CombinedOutput(); err != nil {
				t.Logf("cleanup: podman %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return p
}

// cmd returns podman args as a command (not started) with the test's configuration and a
// deadline.
func (p *podman) cmd(args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), podmanCmdTimeout)
	p.t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, p.bin, args...)
	cmd.Env = append(os.Environ(), p.env...)
	return cmd
}

// run runs podman args and returns its standard output, trimmed; it fails the test if
// podman fails.
func (p *podman) run(args ...string) string {
	p.t.Helper()
	out, err := p.try(args...)
	if err != nil {
		p.t.Fatalf("podman %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// try runs podman args and returns its standard output, trimmed, and an error holding
// its standard error when it fails.
func (p *podman) try(args ...string) (string, error) {
	cmd := p.cmd(args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("%v\n%s%s", err, out, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// static is the static edgeproxy binary the images hold, built once per test process in
// a directory TestMain removes.
var static struct {
	once      sync.Once
	dir, path string
	err       error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if static.dir != "" {
		_ = os.RemoveAll(static.dir)
	}
	os.Exit(code)
}

// staticEdgeproxy returns the path of edgeproxy built as the Dockerfile's build stage
// builds it (CGO_ENABLED=0, -trimpath), for a base image without libc.
func staticEdgeproxy(t *testing.T) string {
	t.Helper()
	goBin := testutil.RequireTool(t, "go")
	static.once.Do(func() {
		if static.dir, static.err = os.MkdirTemp("", "edgeproxy-static-"); static.err != nil {
			return
		}
		static.path = filepath.Join(static.dir, "edgeproxy")
		build := exec.Command(goBin, "build", "-trimpath", "-o", static.path, testutil.EdgeproxyPackage)
		build.Dir = ".."
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
		if msg, err := build.CombinedOutput(); err != nil {
			static.err = fmt.Errorf("go build: %v\n%s", err, msg)
		}
	})
	if static.err != nil {
		t.Fatal(static.err)
	}
	return static.path
}

// buildImage builds the root Dockerfile as tag, with its two build arguments pointing at
// local stand-ins and everything else the Dockerfile's own:
//
//   - BINARY, for the build stage (FROM golang, which cannot be pulled here): an image
//     holding /out as the build stage lays it out, with a static binary built on this
//     machine with the build stage's flags (CGO_ENABLED=0, -trimpath);
//   - BASE, for gcr.io/distroless/static-debian12:nonroot: scratch, which like distroless
//     has no shell. The test configs need neither its CA bundle nor its /etc/passwd (the
//     Dockerfile's USER is numeric).
//
// The final stage (user, files, volume, HEALTHCHECK, entrypoint, command) is built as
// shipped, in the docker format that keeps the HEALTHCHECK.
func (p *podman) buildImage(tag string) {
	p.t.Helper()
	ctx := filepath.Join(p.dir, "binary")
	out := filepath.Join(ctx, "out")
	for _, d := range []string{"state", "etc/edgeproxy"} {
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			p.t.Fatal(err)
		}
	}
	bin, err := os.ReadFile(staticEdgeproxy(p.t))
	if err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "edgeproxy"), bin, 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctx, "Containerfile"), []byte("FROM scratch\nCOPY out/ /out/\n"), 0o644); err != nil {
		p.t.Fatal(err)
	}
	binary := "localhost/edgeproxy-binary-standin:test"
	p.run("build", "--quiet", "--tag", binary, ctx)
	dockerfile, err := filepath.Abs("../Dockerfile")
	if err != nil {
		p.t.Fatal(err)
	}
	p.run("build", "--quiet", "--format", "docker", "--tag", tag,
		"--build-arg", "BINARY="+binary, "--build-arg", "BASE=scratch",
		"--file", dockerfile, ctx)
}

// checkRunsAs65532 checks that the main process of the container name runs as the
// image's user, 65532, for all its user and group IDs.
func (p *podman) checkRunsAs65532(name string) {
	p.t.Helper()
	pid := p.run("inspect", "--format", "{{.State.Pid}}", name)
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		p.t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if (strings.HasPrefix(line, "Uid:") || strings.HasPrefix(line, "Gid:")) && !slices.Equal(strings.Fields(line)[1:], []string{"65532", "65532", "65532", "65532"}) {
			p.t.Errorf("%s: process %s: %q; want 65532 for all", name, pid, line)
		}
	}
}
