// Package placement is `edgeproxy bench` (cmd/edgeproxy-bench): where should TLS end? It runs the same load
// against four placements of TLS termination and measures, from each process's own CPU
// accounting (/proc/PID/stat), what every request costs at the edge and at the backend:
//
//   - plain: HTTP end to end (listen.http with http_mode: proxy), the baseline;
//   - edge: the edge terminates TLS and proxies plain HTTP (an ALB with HTTP targets);
//   - backend: the edge passes the TLS connection through by SNI and the backend
//     terminates it (an NLB in front of nginx on the box);
//   - reencrypt: the edge terminates and opens TLS to the backend (pool.tls).
//
// Workloads: keep-alive small responses, a new connection with a full handshake per
// request, and keep-alive 64 KiB responses. The edge (edgeproxy run), the backend (a Go
// net/http server) and the load generator (bench/loadgen) are separate processes — the
// edgeproxy binary and the benchmark's own binary re-executed — each pinnable to a CPU. The edge's TLS cost metric
// (edgeproxy_tls_cpu_seconds_total) is read alongside, to set against the measured
// difference from plain.
package placement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"edgeproxy/bench/loadgen"
	"edgeproxy/internal/testutil/fixture"
)

// Placements and workloads, in report order.
var (
	Placements = []string{"plain", "edge", "backend", "reencrypt"}
	Workloads  = []string{"keepalive", "handshake", "bulk"}
)

// Body sizes of the workloads.
const (
	smallBytes = 64
	bulkBytes  = 64 << 10
)

// Options configure a run. The zero value of each field has the meaning its comment gives.
type Options struct {
	// Binary is the edgeproxy binary measured, run as `Binary run -config FILE`; "" means
	// the edgeproxy next to Harness, else the one on PATH.
	Binary string
	// Harness is the binary of the benchmark's own processes (`Harness -role backend|load`,
	// see Backend and Load: cmd/edgeproxy-bench); "" means this process's executable.
	Harness string
	// Placements and Workloads to run; nil means all, in report order.
	Placements, Workloads []string
	// Duration is each measured window; zero means 5s. Warmup precedes it; zero means 1s
	// (a negative value means none).
	Duration, Warmup time.Duration
	// Connections is the load's concurrency; zero means 8.
	Connections int
	// Rounds is how many times every placement and workload is measured; each figure is
	// the median of its rounds. Rounds are interleaved (every placement runs its edge the
	// whole time, and each round starts at another placement), so that all see the same
	// background load. Zero means 1.
	Rounds int
	// EdgeCPU, BackendCPU and LoadCPU pin those processes to a CPU; negative means
	// unpinned. (Zero pins to CPU 0: callers start from -1.)
	EdgeCPU, BackendCPU, LoadCPU int
	// Progress, if not nil, receives a line as each measurement starts.
	Progress io.Writer
}

// Result is one placement under one workload.
type Result struct {
	Placement string  `json:"placement"`
	Workload  string  `json:"workload"`
	Requests  int     `json:"requests"`
	RPS       float64 `json:"requests_per_second"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	// EdgeCPUus and BackendCPUus are CPU microseconds per request of each process;
	// LoadCPUus the load generator's.
	EdgeCPUus    float64 `json:"edge_cpu_us_per_request"`
	BackendCPUus float64 `json:"backend_cpu_us_per_request"`
	LoadCPUus    float64 `json:"load_cpu_us_per_request"`
	// TLSMetricUs is the edge's edgeproxy_tls_cpu_seconds_total increase per request
	// (null for plain, which has no TLS at the edge).
	TLSMetricUs *float64 `json:"edge_tls_metric_us_per_request"`
	// EdgeOverPlainUs is EdgeCPUus minus plain's under the same workload (null when
	// plain was not run): what TLS at this placement costs the edge, measured.
	EdgeOverPlainUs *float64 `json:"edge_cpu_over_plain_us_per_request"`
}

// Report is a whole run.
type Report struct {
	Machine     string        `json:"machine"`
	CPUs        int           `json:"cpus"`
	Duration    time.Duration `json:"-"`
	Seconds     float64       `json:"duration_seconds"`
	Connections int           `json:"connections"`
	Rounds      int           `json:"rounds"`
	Pinning     string        `json:"pinning"`
	Results     []Result      `json:"results"`
}

func (o *Options) defaults() error {
	if o.Harness == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Harness = exe
	}
	if o.Binary == "" {
		o.Binary = filepath.Join(filepath.Dir(o.Harness), "edgeproxy")
		if _, err := os.Stat(o.Binary); err != nil {
			if o.Binary, err = exec.LookPath("edgeproxy"); err != nil {
				return fmt.Errorf("placement: no edgeproxy binary to measure next to %s or on PATH", o.Harness)
			}
		}
	}
	if o.Placements == nil {
		o.Placements = Placements
	}
	if o.Workloads == nil {
		o.Workloads = Workloads
	}
	for _, p := range o.Placements {
		if !contains(Placements, p) {
			return fmt.Errorf("placement: unknown placement %q (known: %s)", p, strings.Join(Placements, ", "))
		}
	}
	for _, w := range o.Workloads {
		if !contains(Workloads, w) {
			return fmt.Errorf("placement: unknown workload %q (known: %s)", w, strings.Join(Workloads, ", "))
		}
	}
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
	}
	switch {
	case o.Warmup == 0:
		o.Warmup = time.Second
	case o.Warmup < 0:
		o.Warmup = 0
	}
	if o.Connections == 0 {
		o.Connections = 8
	}
	if o.Rounds <= 0 {
		o.Rounds = 1
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Run measures every placement under every workload and returns the report. It starts
// and stops every process itself, all on 127.0.0.1; each placement gets a fresh edge.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "edgeproxy-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	c, err := writeCerts(dir)
	if err != nil {
		return nil, err
	}
	backendPlain, backendTLS := fixture.FreeAddr(), fixture.FreeAddr()
	backend, err := startProc("backend", o.BackendCPU, o.Harness, "-role", "backend",
		"-plain", backendPlain, "-tls", backendTLS, "-cert", c.backendCert, "-key", c.backendKey)
	if err != nil {
		return nil, err
	}
	defer backend.stop()
	for _, a := range []string{backendPlain, backendTLS} {
		if err := waitTCP(a, backend); err != nil {
			return nil, err
		}
	}
	model, cpus := Machine()
	rep := &Report{Machine: model, CPUs: cpus, Duration: o.Duration, Seconds: o.Duration.Seconds(),
		Connections: o.Connections, Rounds: o.Rounds, Pinning: pinning(o)}
	edges := map[string]*edgeRun{}
	defer func() {
		for _, e := range edges {
			e.proc.stop()
		}
	}()
	for _, p := range o.Placements {
		e, err := startEdge(ctx, o, dir, c, p, backendPlain, backendTLS)
		if err != nil {
			return nil, err
		}
		edges[p] = e
	}
	type key struct{ p, w string }
	runs := map[key][]Result{}
	for round := range o.Rounds {
		for _, w := range o.Workloads {
			for i := range o.Placements {
				p := o.Placements[(i+round)%len(o.Placements)]
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				e := edges[p]
				fmt.Fprintf(o.Progress, "bench: round %d/%d: %s / %s (%v)\n", round+1, o.Rounds, p, w, o.Duration)
				r, err := measure(o, e.target, w, e.proc, backend, e.metrics)
				if err != nil {
					return nil, fmt.Errorf("placement %s, workload %s: %w\nedge output:\n%s", p, w, err, tail(e.proc.out.String(), 2000))
				}
				runs[key{p, w}] = append(runs[key{p, w}], r)
			}
		}
	}
	for _, p := range o.Placements {
		for _, w := range o.Workloads {
			r := medianResult(runs[key{p, w}])
			r.Placement, r.Workload = p, w
			if p == "plain" {
				r.TLSMetricUs = nil
			}
			rep.Results = append(rep.Results, r)
		}
	}
	rep.derive()
	return rep, nil
}

// medianResult is the median of each figure over rounds.
func medianResult(rs []Result) Result {
	med := func(f func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if n := len(v); n%2 == 0 {
			return (v[n/2-1] + v[n/2]) / 2
		}
		return v[len(v)/2]
	}
	out := Result{
		Requests:     int(med(func(r Result) float64 { return float64(r.Requests) })),
		RPS:          med(func(r Result) float64 { return r.RPS }),
		P50us:        med(func(r Result) float64 { return r.P50us }),
		P99us:        med(func(r Result) float64 { return r.P99us }),
		EdgeCPUus:    med(func(r Result) float64 { return r.EdgeCPUus }),
		BackendCPUus: med(func(r Result) float64 { return r.BackendCPUus }),
		LoadCPUus:    med(func(r Result) float64 { return r.LoadCPUus }),
	}
	if rs[0].TLSMetricUs != nil {
		m := med(func(r Result) float64 {
			if r.TLSMetricUs == nil {
				return 0
			}
			return *r.TLSMetricUs
		})
		out.TLSMetricUs = &m
	}
	return out
}

func pinning(o Options) string {
	cpu := func(n int) string {
		if n < 0 {
			return "unpinned"
		}
		return "CPU " + strconv.Itoa(n)
	}
	return fmt.Sprintf("edge %s, backend %s, load %s", cpu(o.EdgeCPU), cpu(o.BackendCPU), cpu(o.LoadCPU))
}

// derive fills in each result's difference from plain under the same workload.
func (r *Report) derive() {
	plain := map[string]float64{}
	for _, x := range r.Results {
		if x.Placement == "plain" {
			plain[x.Workload] = x.EdgeCPUus
		}
	}
	for i := range r.Results {
		x := &r.Results[i]
		if p, ok := plain[x.Workload]; ok && x.Placement != "plain" {
			d := x.EdgeCPUus - p
			x.EdgeOverPlainUs = &d
		}
	}
}

// clientTarget is where the load goes in a placement: address, TLS and SNI.
type clientTarget struct {
	addr string
	tls  bool
	sni  string
}

// edgeRun is the edge of one placement: its process, where the load goes, its metrics.
type edgeRun struct {
	proc    *proc
	target  clientTarget
	metrics string
}

// startEdge starts an edge configured for placement p and waits until it serves through
// to the backend and its TLS cost calibration is done.
func startEdge(ctx context.Context, o Options, dir string, c certFiles, p string, backendPlain, backendTLS string) (*edgeRun, error) {
	https, httpAddr, metrics := fixture.FreeAddr(), fixture.FreeAddr(), fixture.FreeAddr()
	pool := fmt.Sprintf("  targets: [%q]\n", backendPlain)
	passthrough := ""
	target := clientTarget{addr: https, tls: true, sni: "edge.bench"}
	switch p {
	case "plain":
		target = clientTarget{addr: httpAddr, sni: "edge.bench"}
	case "backend":
		passthrough = fmt.Sprintf("passthrough:\n  - {server_names: [backend.bench], targets: [%q]}\n", backendTLS)
		target.sni = "backend.bench"
	case "reencrypt":
		pool = fmt.Sprintf("  targets: [%q]\n  tls: {ca: %q, server_name: backend.bench}\n", backendTLS, c.ca)
	}
	cfg := fmt.Sprintf(`# edgeproxy bench, placement %s
listen:
  https: %q
  http: %q
  http_mode: proxy
  metrics: %q
tls:
  certificates: [{cert: %q, key: %q}]
pool:
%s  health_check: {interval: 5s, healthy_threshold: 1}
  retries: 0
%slog: {access: false}
`, p, https, httpAddr, metrics, c.edgeCert, c.edgeKey, pool, passthrough)
	file := filepath.Join(dir, "edge-"+p+".yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	edge, err := startProc("edge ("+p+")", o.EdgeCPU, o.Binary, "run", "-config", file)
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, target, edge); err != nil {
		edge.stop()
		return nil, err
	}
	// The TLS cost accounting calibrates itself in the background after start-up (with a
	// client process of its own): measuring before it is done would charge that to the
	// edge, and read the TLS metric before it counts.
	if !waitOutput(edge, "tlscost: calibrated", time.Minute) {
		fmt.Fprintf(o.Progress, "bench: %s: no \"tlscost: calibrated\" within a minute; measuring anyway\n", edge.name)
	}
	return &edgeRun{proc: edge, target: target, metrics: metrics}, nil
}

// measure runs the load process for one workload and turns what it read into per-request
// figures.
func measure(o Options, t clientTarget, workload string, edge, backend *proc, metrics string) (Result, error) {
	size, keepAlive := smallBytes, true
	switch workload {
	case "handshake":
		keepAlive = false
	case "bulk":
		size = bulkBytes
	}
	args := []string{"-role", "load", "-addr", t.addr, "-tls=" + strconv.FormatBool(t.tls), "-sni", t.sni,
		"-bytes", strconv.Itoa(size), "-keepalive=" + strconv.FormatBool(keepAlive), "-c", strconv.Itoa(o.Connections),
		"-warmup", o.Warmup.String(), "-duration", o.Duration.String(),
		"-pids", fmt.Sprintf("%d,%d", edge.pid(), backend.pid()), "-metrics", metrics}
	load, err := startProc("load generator", o.LoadCPU, o.Harness, args...)
	if err != nil {
		return Result{}, err
	}
	if err := load.wait(o.Warmup + o.Duration + time.Minute); err != nil {
		return Result{}, err
	}
	out := load.out.String()
	var lr LoadResult
	if err := json.Unmarshal([]byte(lastLine(out)), &lr); err != nil {
		return Result{}, fmt.Errorf("load generator output %q: %w", tail(out, 500), err)
	}
	if lr.Requests == 0 {
		return Result{}, errors.New("no request completed in the measured window")
	}
	n := float64(lr.Requests)
	per := func(sec float64) float64 { return sec / n * 1e6 }
	r := Result{
		Requests: lr.Requests, RPS: n / lr.Seconds, P50us: lr.P50us, P99us: lr.P99us,
		EdgeCPUus:    per(lr.CPU[strconv.Itoa(edge.pid())]),
		BackendCPUus: per(lr.CPU[strconv.Itoa(backend.pid())]),
		LoadCPUus:    per(lr.SelfCPU),
	}
	if lr.TLSMetric >= 0 {
		m := per(lr.TLSMetric)
		r.TLSMetricUs = &m
	}
	return r, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// waitReady waits until a request through the placement succeeds (the edge serves and
// its target is reachable), for at most 15s.
func waitReady(ctx context.Context, t clientTarget, edge *proc) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := loadgen.Run(ctx, loadgen.Options{Addr: t.addr, TLS: t.tls, ServerName: t.sni,
			Path: "/bytes?n=1", BodyBytes: 1, KeepAlive: true, Requests: 1, Timeout: 5 * time.Second})
		if err == nil {
			return nil
		}
		if edge.exited() || time.Now().After(deadline) {
			return fmt.Errorf("placement: %s not ready: %v\n%s", edge.name, err, tail(edge.out.String(), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitOutput waits until p's output holds s, p exits, or timeout passes.
func waitOutput(p *proc, s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.out.String(), s) {
		if p.exited() || time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func waitTCP(addr string, p *proc) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() || time.Now().After(deadline) {
			return fmt.Errorf("placement: %s not listening on %s: %v\n%s", p.name, addr, err, tail(p.out.String(), 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Machine describes this machine: lscpu's model name and the number of online CPUs.
func Machine() (model string, cpus int) {
	model = "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
			}
			if strings.HasPrefix(line, "processor") {
				cpus++
			}
		}
	}
	return model, cpus
}
