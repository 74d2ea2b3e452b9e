package deploy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
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

// buildImage builds the root Dockerfile as tag, every instruction as shipped, with its two
// base images (which cannot be pulled here) replaced by local stand-ins:
//
//   - GO_IMAGE, golang:1.26 for the build stage: an image of Debian's merged-/usr links,
//     built with this machine's /usr mounted read-only, which has /bin/sh and Go in
//     /usr/local/go, and this machine's module and build caches mounted where golang's
//     image keeps them, so that the stage's `go mod download` and `go build` run as
//     written, quickly;
//   - BASE, gcr.io/distroless/static-debian12:nonroot for the final stage: scratch, which
//     like distroless has no shell. The test configs need neither its CA bundle nor its
//     /etc/passwd (the Dockerfile's USER is numeric).
//
// The image is built in the docker format, which keeps the HEALTHCHECK.
func (p *podman) buildImage(tag string) {
	p.t.Helper()
	goBin := testutil.RequireTool(p.t, "go")
	if !strings.HasPrefix(goBin, "/usr/") {
		p.t.Fatalf("go is %s; the Go stand-in image needs it under /usr (as /usr/local/go)", goBin)
	}
	caches := map[string]string{}
	for _, v := range []string{"GOMODCACHE", "GOCACHE"} {
		out, err := exec.Command(goBin, "env", v).Output()
		if err != nil {
			p.t.Fatalf("go env %s: %v", v, err)
		}
		caches[v] = strings.TrimSpace(string(out))
		if err := os.MkdirAll(caches[v], 0o755); err != nil {
			p.t.Fatal(err)
		}
	}
	ctx := filepath.Join(p.dir, "go-standin")
	root := mergedUsrRoot(p.t, filepath.Join(ctx, "rootfs"))
	if err := os.MkdirAll(filepath.Join(root, "go"), 0o755); err != nil {
		p.t.Fatal(err)
	}
	containerfile := `FROM scratch
COPY rootfs/ /
ENV GOPATH=/go GOCACHE=/root/.cache/go-build GOTOOLCHAIN=local \
    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
`
	if err := os.WriteFile(filepath.Join(ctx, "Containerfile"), []byte(containerfile), 0o644); err != nil {
		p.t.Fatal(err)
	}
	goImage := "localhost/golang-standin:test"
	p.run("build", "--quiet", "--tag", goImage, ctx)
	repo, err := filepath.Abs("..")
	if err != nil {
		p.t.Fatal(err)
	}
	p.run("build", "--quiet", "--format", "docker", "--tag", tag, "--network", "host",
		"--build-arg", "GO_IMAGE="+goImage, "--build-arg", "BASE=scratch",
		"--volume", "/usr:/usr:ro",
		"--volume", caches["GOMODCACHE"]+":/go/pkg/mod",
		"--volume", caches["GOCACHE"]+":/root/.cache/go-build",
		"--file", filepath.Join(repo, "Dockerfile"), repo)
}

// mergedUsrRoot makes dir the root of an image meant to run with this machine's /usr
// mounted: Debian's merged-/usr links (bin, sbin, lib, lib64) and a /tmp for everyone. It
// returns dir.
func mergedUsrRoot(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	for _, link := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+link, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
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
