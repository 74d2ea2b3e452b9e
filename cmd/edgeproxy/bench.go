package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"edgeproxy/config"
	"edgeproxy/internal/logformat"
)

// benchBinary is the placement benchmark's command (cmd/edgeproxy-bench). It is a binary
// of its own so that the benchmark harness stays out of the serving binary.
const benchBinary = "edgeproxy-bench"

// benchCmd is `edgeproxy bench`: it runs edgeproxy-bench, found next to this binary or on
// PATH, with the same arguments, measuring this binary. `bench -role edge-profile` is
// this binary's own: `edgeproxy run` under a CPU profile (bench/peers/run.sh).
func benchCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) >= 2 && args[0] == "-role" && args[1] == "edge-profile" {
		return edgeProfile(args[2:], stderr)
	}
	help := len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help")
	harness, err := findBench()
	if help {
		fmt.Fprintf(stderr, "Usage: edgeproxy bench [flags]\n\nRuns %s (next to this binary, or on PATH) against this binary.\n", benchBinary)
		if err != nil {
			fmt.Fprintf(stderr, "%v\n", err)
			return 0
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "edgeproxy bench:", err)
		return 1
	}
	if self, err := os.Executable(); err == nil && (len(args) == 0 || args[0] != "-role") {
		args = append([]string{"-edgeproxy", self}, args...)
	}
	cmd := exec.Command(harness, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	// The benchmark stops on SIGINT or SIGTERM, as it did in this process.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(stderr, "edgeproxy bench:", err)
		return 1
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case s := <-sig:
			_ = cmd.Process.Signal(s)
		case <-done:
		}
	}()
	err = cmd.Wait()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode()
	case err != nil:
		fmt.Fprintln(stderr, "edgeproxy bench:", err)
		return 1
	}
	return 0
}

// findBench returns the path of edgeproxy-bench: next to this binary, else on PATH.
func findBench() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), benchBinary)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath(benchBinary); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s is not next to this binary nor on PATH; build it with `go build -o %s ./cmd/edgeproxy-bench` (in the source tree)", benchBinary, benchBinary)
}

// edgeProfile is `edgeproxy run` under a CPU profile written to -cpuprofile when it stops
// (SIGTERM): for bench/peers/run.sh, which profiles the edge under the keep-alive load.
func edgeProfile(args []string, stderr io.Writer) int {
	fs := newFlags("bench -role edge-profile", "bench -role edge-profile -config FILE -cpuprofile FILE", stderr)
	file := fs.String("config", defaultConfig, "configuration `file`")
	out := fs.String("cpuprofile", "cpu.pprof", "CPU profile `file`")
	delay := fs.Duration("profile-delay", 0, "start profiling this long after start-up (0: at once; see also -profile-on-usr1)")
	onUSR1 := fs.Bool("profile-on-usr1", false, "start profiling at the first SIGUSR1 (when the caller's measured window opens)")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer f.Close()
	var mu sync.Mutex // guards profiling and stopped
	profiling, stopped := false, false
	start := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, err)
			return
		}
		profiling = true
	}
	switch {
	case *onUSR1:
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		defer signal.Stop(usr1)
		go func() {
			<-usr1
			start()
		}()
	case *delay > 0:
		t := time.AfterFunc(*delay, start)
		defer t.Stop()
	default:
		start()
	}
	code := serve(cfg, logformat.New(stderr, cfg.Resolved.LogFormat), nil, nil)
	mu.Lock()
	stopped = true
	if profiling {
		pprof.StopCPUProfile()
	}
	mu.Unlock()
	return code
}
