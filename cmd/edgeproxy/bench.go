package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"edgeproxy/bench/placement"
	"edgeproxy/config"
	"edgeproxy/internal/logformat"
)

// benchCmd is `edgeproxy bench`: the termination placement benchmark (package
// bench/placement). `bench -role backend|load` are the benchmark's own processes, the
// binary re-executed; they are internal and not in -h.
func benchCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) >= 2 && args[0] == "-role" {
		switch args[1] {
		case "backend":
			return placement.Backend(args[2:], stderr)
		case "load":
			return placement.Load(args[2:], stdout, stderr)
		case "edge-profile":
			return edgeProfile(args[2:], stderr)
		}
		fmt.Fprintf(stderr, "edgeproxy bench: unknown role %q\n", args[1])
		return 2
	}
	fs := newFlags("bench", "bench [-placements plain,edge,backend,reencrypt] [-workloads keepalive,handshake,bulk] [-duration 5s] [-concurrency N] [-rounds N] [-json] [-svg FILE] [-edge-cpu N] [-backend-cpu N] [-load-cpu N]", stderr)
	placements := fs.String("placements", strings.Join(placement.Placements, ","), "where TLS ends: `list` of plain (HTTP end to end), edge (TLS→HTTP), backend (passthrough; the backend terminates), reencrypt (TLS→TLS)")
	workloads := fs.String("workloads", strings.Join(placement.Workloads, ","), "`list` of keepalive (64 B responses), handshake (a new connection, full handshake, per request), bulk (keep-alive, 64 KiB responses)")
	duration := fs.Duration("duration", 5*time.Second, "measured window of each placement and workload (after a warm-up of -warmup)")
	warmup := fs.Duration("warmup", time.Second, "warm-up before each window, not measured")
	concurrency := fs.Int("concurrency", 8, "client connections")
	rounds := fs.Int("rounds", 1, "measure every cell this many times, interleaved, and report the medians (a busy machine: 3 or 5)")
	asJSON := fs.Bool("json", false, "print JSON instead of the table")
	svg := fs.String("svg", "", "also write a bar chart of CPU per request to `file` (SVG)")
	edgeCPU := fs.Int("edge-cpu", -1, "pin the edge process to this `cpu` (-1: unpinned)")
	backendCPU := fs.Int("backend-cpu", -1, "pin the backend process to this `cpu` (-1: unpinned)")
	loadCPU := fs.Int("load-cpu", -1, "pin the load generator to this `cpu` (-1: unpinned)")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	if *duration <= 0 || *concurrency < 1 || *warmup < 0 || *rounds < 1 {
		fmt.Fprintln(stderr, "edgeproxy bench: -duration must be positive, -concurrency and -rounds at least 1, -warmup not negative")
		return 2
	}
	if *warmup == 0 {
		*warmup = -1 // placement.Options: negative means none
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rep, err := placement.Run(ctx, placement.Options{
		Placements: splitList(*placements), Workloads: splitList(*workloads),
		Duration: *duration, Warmup: *warmup, Connections: *concurrency, Rounds: *rounds,
		EdgeCPU: *edgeCPU, BackendCPU: *backendCPU, LoadCPU: *loadCPU,
		Progress: stderr,
	})
	if err != nil {
		fmt.Fprintln(stderr, "edgeproxy bench:", err)
		return 1
	}
	if *svg != "" {
		f, err := os.Create(*svg)
		if err == nil {
			err = rep.WriteSVG(f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, "edgeproxy bench:", err)
			return 1
		}
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "edgeproxy bench:", err)
		return 1
	}
	return 0
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
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
