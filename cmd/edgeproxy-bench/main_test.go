package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"edgeproxy/bench/placement"
	"edgeproxy/internal/testutil"
)

// A short `edgeproxy bench` run, as a user would start it: every process its own, the
// JSON and the SVG well formed, and the physics visible — TLS CPU appears on whichever side
// terminates it. The margins are wide: this is a shared 2-core machine, and these are
// not throughput bounds.
func TestBench_ShortRunShowsWhereTLSCosts(t *testing.T) {
	bin := testutil.BuildEdgeproxy(t)
	buildBench(t, filepath.Dir(bin)) // where `edgeproxy bench` looks for it
	svg := filepath.Join(t.TempDir(), "bench.svg")
	cmd := exec.Command(bin, "bench", "-placements", "plain,edge,backend", "-workloads", "handshake,keepalive",
		"-duration", "1s", "-warmup", "300ms", "-concurrency", "2", "-json", "-svg", svg)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = cmd.Output()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatal("edgeproxy bench did not finish within 2 minutes")
	}
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("edgeproxy bench: %v\n%s", err, stderr)
	}
	var rep placement.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("-json output: %v\n%s", err, out)
	}
	if len(rep.Results) != 6 || rep.CPUs < 1 || rep.Connections != 2 {
		t.Fatalf("got %d results, %d CPUs, %d connections; want 6 results (3 placements × 2 workloads), 2 connections:\n%s",
			len(rep.Results), rep.CPUs, rep.Connections, out)
	}
	get := map[string]placement.Result{}
	for _, r := range rep.Results {
		get[r.Placement+"/"+r.Workload] = r
		if r.Requests == 0 || r.RPS <= 0 || r.P50us <= 0 || r.P99us < r.P50us || r.EdgeCPUus <= 0 || r.BackendCPUus <= 0 {
			t.Errorf("%s/%s: implausible figures %+v", r.Placement, r.Workload, r)
		}
		if (r.Placement == "plain") != (r.TLSMetricUs == nil) {
			t.Errorf("%s/%s: TLS metric %v; want one exactly where the edge speaks TLS", r.Placement, r.Workload, r.TLSMetricUs)
		}
		if (r.Placement == "plain") != (r.EdgeOverPlainUs == nil) {
			t.Errorf("%s/%s: edge − plain %v; want one for every placement but plain", r.Placement, r.Workload, r.EdgeOverPlainUs)
		}
	}
	plain, edge, backend := get["plain/handshake"], get["edge/handshake"], get["backend/handshake"]
	// A full handshake costs the side that does it ~100-400 µs; the rest of a request far less.
	if edge.EdgeCPUus < 1.3*plain.EdgeCPUus {
		t.Errorf("edge CPU per new connection: %.0f µs when the edge terminates, %.0f µs over plain HTTP; want the TLS cost at the edge", edge.EdgeCPUus, plain.EdgeCPUus)
	}
	if backend.BackendCPUus < 1.5*edge.BackendCPUus {
		t.Errorf("backend CPU per new connection: %.0f µs when the backend terminates, %.0f µs when the edge does; want the TLS cost at the backend", backend.BackendCPUus, edge.BackendCPUus)
	}
	if m := *edge.TLSMetricUs; m <= 0 {
		t.Errorf("edge TLS metric per new connection: %.1f µs; want the handshake counted", m)
	}
	if m := *backend.TLSMetricUs; m != 0 {
		t.Errorf("edge TLS metric when passing through: %.1f µs; want 0 (the edge terminates nothing)", m)
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg ", "</svg>", "new connection, full handshake", "backend"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

// buildBench builds this command into dir.
func buildBench(t *testing.T, dir string) {
	t.Helper()
	goBin := testutil.GoTool()
	if goBin == "" {
		t.Fatal("go command not found")
	}
	cmd := exec.Command(goBin, "build", "-o", filepath.Join(dir, "edgeproxy-bench"), "edgeproxy/cmd/edgeproxy-bench")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}
