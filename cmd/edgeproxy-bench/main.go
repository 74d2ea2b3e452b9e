// Command edgeproxy-bench is the termination placement benchmark (package
// bench/placement): where should TLS end? `edgeproxy bench` runs it. It is a command of
// its own so that the benchmark harness (the load generator, the test backend) stays out
// of the serving binary; it measures the edgeproxy binary next to it (or -edgeproxy).
// `-role backend|load` are the benchmark's own processes, this binary re-executed; they
// are internal and not in -h.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"edgeproxy/bench/placement"
)

func main() {
	os.Exit(benchCmd(os.Args[1:], os.Stdout, os.Stderr))
}

func benchCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) >= 2 && args[0] == "-role" {
		switch args[1] {
		case "backend":
			return placement.Backend(args[2:], stderr)
		case "load":
			return placement.Load(args[2:], stdout, stderr)
		}
		fmt.Fprintf(stderr, "edgeproxy bench: unknown role %q\n", args[1])
		return 2
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	synopsis := "bench [-placements plain,edge,backend,reencrypt] [-workloads keepalive,handshake,bulk] [-duration 5s] [-concurrency N] [-rounds N] [-json] [-svg FILE] [-edge-cpu N] [-backend-cpu N] [-load-cpu N] [-edgeproxy FILE]"
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: edgeproxy %s\n\n", synopsis)
		fs.PrintDefaults()
	}
	binary := fs.String("edgeproxy", "", "the edgeproxy `binary` to measure (default: the one next to this binary, else on PATH)")
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
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "edgeproxy bench: unexpected argument %q\n", fs.Arg(0))
		return 2
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
		Binary:     *binary,
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
