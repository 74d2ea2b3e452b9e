package testutil

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// EdgeproxyPackage is the import path of the edgeproxy command.
const EdgeproxyPackage = "edgeproxy/cmd/edgeproxy"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// BuildEdgeproxy builds the edgeproxy command (EdgeproxyPackage) once per
// test process and returns the path of the binary; later calls return the
// same path. A failed build fails the calling test (every caller's, with the
// compiler's output).
//
// The binary lands in a directory under os.TempDir() named after the
// module's location, replaced atomically on each build, so test processes
// running in parallel share one file and no temporary copies pile up.
func BuildEdgeproxy(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		start := time.Now()
		buildPath, buildErr = buildEdgeproxy()
		if buildErr == nil {
			t.Logf("testutil: built %s in %v", EdgeproxyPackage, time.Since(start).Round(time.Millisecond))
		}
	})
	if buildErr != nil {
		t.Fatalf("testutil: building %s: %v", EdgeproxyPackage, buildErr)
	}
	return buildPath
}

func buildEdgeproxy() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	goBin := goTool()
	if goBin == "" {
		return "", errors.New("go command not found")
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), "edgeproxy-testbin-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := filepath.Join(tmp, "edgeproxy")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, EdgeproxyPackage)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, msg)
	}
	// Each test process keeps its own binary: other test processes (other packages, other
	// checkouts of the same path) may build a different tree at the same time.
	own := filepath.Join(dir, fmt.Sprintf("pid-%d", os.Getpid()))
	if err := os.MkdirAll(own, 0o755); err != nil {
		return "", err
	}
	removeStale(dir)
	final := filepath.Join(own, "edgeproxy")
	if err := os.Rename(out, final); err != nil {
		return "", err
	}
	return final, nil
}

// goTool finds the go command: PATH, then $GOROOT/bin, then the usual
// install location.
func goTool() string {
	if p := LookTool("go"); p != "" {
		return p
	}
	for _, p := range []string{filepath.Join(os.Getenv("GOROOT"), "bin", "go"), "/usr/local/go/bin/go"} {
		if isExecutable(p) {
			return p
		}
	}
	return ""
}

// moduleRoot returns the directory of edgeproxy's go.mod: two levels above
// this source file, or else the first go.mod above the working directory.
func moduleRoot() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			return root, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// removeStale deletes the binaries of test processes that have exited.
func removeStale(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "pid-%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// GoTool returns the go command as BuildEdgeproxy finds it, or "" if there is none: for
// tests that build another command of the module (cmd/edgeproxy-bench).
func GoTool() string { return goTool() }
