// Command tlscost is the proof of edgeproxy's TLS cost accounting (issue 4). It runs a real
// edgeproxy binary on loopback in front of a backend it serves itself, drives it with its
// own Go load generator, and reads the edgeproxy process's CPU from /proc/PID/stat and its
// metrics from /metrics.
//
//	go run ./bench/tlscost accuracy     # TLS vs plain HTTP: extra process CPU vs edgeproxy_tls_cpu_seconds_total
//	go run ./bench/tlscost overhead     # tls_cost on vs off: CPU per request
//	go run ./bench/tlscost handshakes   # ECDSA P-256 vs RSA-2048, full vs resumed: CPU µs per handshake
//	go run ./bench/tlscost matrix       # accuracy and overhead over every traffic shape (issue 20), a markdown table
//	go run ./bench/tlscost startup      # CPU per request, second by second, after a first start and a cached one
//
// Edges started by one invocation share a calibration cache in its temporary directory
// (the first calibrates, the others start calibrated, as a restarted edge does);
// -calibrate-each gives each edge its own, so that each calibrates.
//
// Every figure is the median of -runs interleaved runs (default 5); the spread (min..max)
// is printed next to it. Everything stays on 127.0.0.1, and every run is bounded in
// request count and time. The machine is shared: expect noise, and read the spread.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"edgeproxy/bench/loadgen"
	"edgeproxy/internal/testutil/fixture"
)

var (
	runs         = flag.Int("runs", 5, "interleaved runs per figure (the median is reported)")
	bin          = flag.String("bin", "", "edgeproxy binary; empty = go build ./cmd/edgeproxy into a temporary directory")
	workers      = flag.Int("c", 4, "concurrent client connections")
	scale        = flag.Float64("scale", 1, "multiply every request count (0.2 for a quick look)")
	chunks       = flag.Int("chunks", 8, "TLS/plain (or on/off) alternations within one run")
	only         = flag.String("only", "", "run only the scenarios (matrix cells) whose name contains this; alternatives separated by |, =NAME for the exact name")
	withOverhead = flag.Bool("overhead", true, "matrix: measure each cell's tls_cost overhead too")
	gate         = flag.String("gate", "", "matrix: LO,HI: the ratio range every gated cell must be in (default 0.85,1.15); when set, a cell outside it makes the command fail")
	edgeCPU      = flag.Int("edge-cpu", -1, "pin the edgeproxy processes to this CPU with taskset (-1: no pinning)")
	calEach      = flag.Bool("calibrate-each", false, "give every edge its own calibration cache, so that each calibrates at start-up")
	settle       = flag.Int("settle", 160, "accuracy, matrix: before measuring, let the first edge refine its calibration while idle until it has this many rounds (edgeproxy_tls_calibration_rounds), as a deployed edge does; 0: measure on the start-up's calibration alone")
)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: tlscost [flags] accuracy|overhead|handshakes|matrix|startup")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "tlscost:", err)
		os.Exit(1)
	}
}

func run(cmd string) error {
	dir, err := os.MkdirTemp("", "tlscost-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if *bin == "" {
		*bin = filepath.Join(dir, "edgeproxy")
		b := exec.Command("go", "build", "-o", *bin, "./cmd/edgeproxy")
		b.Stdout, b.Stderr = os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			return fmt.Errorf("building edgeproxy (run from the repository root): %w", err)
		}
	}
	backend, err := startBackend()
	if err != nil {
		return err
	}
	defer backend.Close()
	machine()
	switch cmd {
	case "accuracy":
		return accuracy(dir, backend.Addr().String())
	case "overhead":
		return overhead(dir, backend.Addr().String())
	case "handshakes":
		return handshakes(dir, backend.Addr().String())
	case "matrix":
		return matrix(dir, backend.Addr().String())
	case "startup":
		return startup(dir, backend.Addr().String())
	}
	return fmt.Errorf("unknown command %q", cmd)
}

func machine() {
	model := "?"
	if out, err := exec.Command("lscpu").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(line, "Model name:"); ok {
				model = strings.TrimSpace(v)
			}
		}
	}
	fmt.Printf("machine: %s, %d CPUs; client workers %d; median of %d interleaved runs\n\n", model, numCPU(), *workers, *runs)
}

func numCPU() int {
	out, err := exec.Command("nproc").Output()
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// startBackend serves GET /bytes?n=N with N bytes (Content-Length set), in one write, or
// with &piece=K in writes of K bytes each flushed and followed by a pause of 100 µs (a
// backend that streams what it renders), on loopback. It runs in this process, so its
// CPU is not edgeproxy's.
func startBackend() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	body := make([]byte, 1<<20)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		n = min(max(n, 0), len(body))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		piece, _ := strconv.Atoi(r.URL.Query().Get("piece"))
		if piece <= 0 {
			_, _ = w.Write(body[:n])
			return
		}
		f := w.(http.Flusher)
		for off := 0; off < n; off += piece {
			if off > 0 {
				time.Sleep(100 * time.Microsecond)
			}
			_, _ = w.Write(body[off:min(n, off+piece)])
			f.Flush()
		}
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return ln, nil
}

// edge is a running edgeproxy process.
type edge struct {
	cmd                *exec.Cmd
	https, http, admin string
	stderr             *fixture.Buffer // written by the running process, read meanwhile
}

type edgeOptions struct {
	tlsCost bool
	cert    string // "" = self_signed; else a key type for a generated certificate file
	netHTTP bool   // proxy.fast_path: false (HTTP/1.1 through net/http, as HTTP/2 always is)
	h2c     bool   // listen.h2c: HTTP/2 with prior knowledge on the plain listener too
	// cacheDir is the calibration cache (CACHE_DIRECTORY); "" means the invocation's
	// shared one, or one of the edge's own with -calibrate-each.
	cacheDir string
	// noWait returns as soon as the edge serves, without waiting for its calibration.
	noWait bool
	// settle waits, after the calibration, until the edge has refined it to -settle rounds.
	settle bool
}

func startEdge(dir, backend string, o edgeOptions) (*edge, error) {
	e := &edge{https: fixture.FreeAddr(), http: fixture.FreeAddr(), admin: fixture.FreeAddr(), stderr: &fixture.Buffer{}}
	certs := "  self_signed: true\n"
	if o.cert != "" {
		cf, kf, err := writeCert(dir, o.cert)
		if err != nil {
			return nil, err
		}
		certs = fmt.Sprintf("  certificates: [{cert: %q, key: %q}]\n", cf, kf)
	}
	cfg := fmt.Sprintf(`listen:
  https: %q
  http: %q
  http_mode: proxy
  h2c: %v
  metrics: %q
tls:
%s  tls_cost: %v
proxy: {fast_path: %v}
pool:
  targets: [%q]
  health_check: {interval: 1s, healthy_threshold: 1}
  retries: 0
log: {format: text}
`, e.https, e.http, o.h2c, e.admin, certs, o.tlsCost, !o.netHTTP, backend)
	path := filepath.Join(dir, fmt.Sprintf("edgeproxy-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	args := []string{*bin, "run", "-config", path}
	if *edgeCPU >= 0 {
		// Pinned, so that the edge's CPU does not depend on where the scheduler puts it
		// next to the load generator (run the benchmark itself with taskset on another CPU).
		args = append([]string{"taskset", "-c", strconv.Itoa(*edgeCPU)}, args...)
	}
	e.cmd = exec.Command(args[0], args[1:]...)
	e.cmd.Stderr = e.stderr
	cache := o.cacheDir
	if cache == "" {
		cache = filepath.Join(dir, "cache")
		if *calEach {
			cache = filepath.Join(dir, fmt.Sprintf("cache-%d", time.Now().UnixNano()))
		}
	}
	e.cmd.Env = append(os.Environ(), "CACHE_DIRECTORY="+cache)
	if err := e.cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		res, err := http.Get("http://" + e.http + "/bytes?n=1")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			e.stop()
			return nil, fmt.Errorf("edgeproxy did not become ready: %v\n%s", err, e.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The edge serves at once and calibrates in the background: measure only once it
	// charges the calibrated costs. Its log says when; requests meanwhile would land in
	// the calibration's measured batches.
	for o.tlsCost && !o.noWait && !e.logged("tlscost: calibrated") {
		if time.Now().After(deadline) {
			e.stop()
			return nil, fmt.Errorf("edgeproxy did not calibrate within 2 minutes\n%s", e.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if o.settle && o.tlsCost && *settle > 0 {
		return e, e.settle()
	}
	return e, nil
}

// settle waits until the edge, left idle, has refined its calibration to -settle rounds
// (tlscost.Refine), for up to five minutes.
func (e *edge) settle() error {
	start := time.Now()
	for e.metric("edgeproxy_tls_calibration_rounds") < float64(*settle) {
		if time.Since(start) > 5*time.Minute {
			return fmt.Errorf("the calibration was not refined to %d rounds within 5 minutes (%v now)", *settle, e.metric("edgeproxy_tls_calibration_rounds"))
		}
		time.Sleep(3 * time.Second) // a scrape now and then, as Prometheus's; not keeping the edge busy
	}
	fmt.Fprintf(os.Stderr, "calibration refined to %v rounds in %v\n", e.metric("edgeproxy_tls_calibration_rounds"), time.Since(start).Round(time.Second))
	return nil
}

func (e *edge) stop() {
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = e.cmd.Process.Kill()
		<-done
	}
}

// cpu is the process's CPU seconds (fixture.ProcessCPU).
func (e *edge) cpu() float64 {
	sec, err := fixture.ProcessCPU(e.cmd.Process.Pid)
	if err != nil {
		panic(err)
	}
	return sec
}

// metric sums the samples of name (exact, or a histogram's name_sum / name_count) whose
// labels contain every given "k=\"v\"" fragment.
func (e *edge) metric(name string, labels ...string) float64 {
	res, err := http.Get("http://" + e.admin + "/metrics")
	if err != nil {
		panic(err)
	}
	defer res.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, lbl, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(lbl, l) {
				continue lines
			}
		}
		v, _ := strconv.ParseFloat(value, 64)
		sum += v
	}
	return sum
}

// load is one bounded run of the load generator.
type load struct {
	tls       bool
	addr      string
	size      int  // response body bytes
	keepAlive bool // else a new connection per request (Connection: close)
	resume    bool // TLS session cache per worker (else every handshake is full)
	requests  int
}

// run sends the requests over *workers connections (or new ones each time) and returns
// how long it took, with the shared load generator (bench/loadgen): no session cache
// unless resume is set, HTTP/1.1 only (the matrix's HTTP/2 cells load with h2Load).
func (l load) run() (time.Duration, error) {
	start := time.Now()
	_, err := loadgen.Run(context.Background(), loadgen.Options{
		Addr: l.addr, TLS: l.tls, Path: fmt.Sprintf("/bytes?n=%d", l.size), BodyBytes: l.size,
		KeepAlive: l.keepAlive, Resume: l.resume, Connections: *workers, Requests: l.requests,
	})
	if err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

type scenario struct {
	name      string
	size      int
	keepAlive bool
	requests  int
	gated     bool
}

func scenarios() []scenario {
	var out []scenario
	for _, s := range allScenarios() {
		if selected(s.name) {
			out = append(out, s)
		}
	}
	return out
}

// selected tells whether -only selects the scenario or cell called name: one of its
// |-separated alternatives is in the name, or is the name after a leading "=".
func selected(name string) bool {
	for _, alt := range strings.Split(*only, "|") {
		if exact, ok := strings.CutPrefix(alt, "="); ok && name == exact || !ok && strings.Contains(name, alt) {
			return true
		}
	}
	return false
}

func allScenarios() []scenario {
	return []scenario{
		{"new connection per request, 1 KiB", 1 << 10, false, n(3000), true},
		{"keep-alive, 64 KiB bodies", 64 << 10, true, n(12000), true},
		{"keep-alive, 1 KiB bodies (not gated)", 1 << 10, true, n(20000), false},
	}
}

func n(base int) int { return max(100, int(float64(base)**scale)) }

// accuracy: per scenario, -runs pairs of (TLS phase, plain phase) in alternating order on
// one edgeproxy process. Extra CPU = CPU(TLS phase) - CPU(plain phase), both with the same
// requests; measured = the increase of edgeproxy_tls_cpu_seconds_total in the TLS phase.
func accuracy(dir, backend string) error {
	e, err := startEdge(dir, backend, edgeOptions{tlsCost: true, settle: true})
	if err != nil {
		return err
	}
	defer e.stop()
	printCalibration(e)
	fmt.Println("| scenario | extra process CPU per request (TLS − plain) | edgeproxy_tls_cpu_seconds_total per request | ratio (median) | ratio spread (min..max) |")
	fmt.Println("|---|---|---|---|---|")
	for _, sc := range scenarios() {
		// Warm up both paths (connections to the target, calibration done, page cache).
		for _, t := range []bool{true, false} {
			if _, err := (load{tls: t, addr: e.addr(t), size: sc.size, keepAlive: sc.keepAlive, requests: sc.requests / 10}).run(); err != nil {
				return err
			}
		}
		var extra, measured, ratio []float64
		for i := range *runs {
			// A run is chunks: TLS and plain alternate every requests/chunks requests, so
			// that both see the same background load on this shared machine.
			var split tlsSplit
			parts := []string{"edgeproxy_tls_handshake_cpu_seconds_sum", "edgeproxy_tls_record_cpu_seconds_total", "edgeproxy_tls_gc_cpu_seconds_total", "edgeproxy_tls_extra_writes_total"}
			part0 := make([]float64, len(parts))
			for k, p := range parts {
				part0[k] = e.metric(p)
			}
			err := alternate(i, func(side int) error {
				t := side == 0
				l := load{tls: t, addr: e.addr(t), size: sc.size, keepAlive: sc.keepAlive, requests: sc.requests / *chunks}
				return split.measure(e, t, func() error {
					if _, err := l.run(); err != nil {
						return fmt.Errorf("%s: %w", sc.name, err)
					}
					return nil
				})
			})
			if err != nil {
				return err
			}
			reqs := float64(sc.requests / *chunks * *chunks)
			x := (split.cpuTLS - split.cpuPlain) / reqs
			m := split.metricTLS / reqs
			extra, measured, ratio = append(extra, x), append(measured, m), append(ratio, m/x)
			fmt.Fprintf(os.Stderr, "  %s run %d: TLS %.3fs plain %.3fs CPU; extra %.1fµs/req, metric %.1fµs/req, ratio %.3f\n",
				sc.name, i+1, split.cpuTLS, split.cpuPlain, x*1e6, m*1e6, m/x)
			// What the metric is made of, per request (handshakes on their thread, records,
			// GC share in µs; extra writes as a count).
			fmt.Fprintf(os.Stderr, "    per request: handshake thread CPU %.1fµs, records %.1fµs, GC %.1fµs, extra writes %.2f\n",
				(e.metric(parts[0])-part0[0])/reqs*1e6, (e.metric(parts[1])-part0[1])/reqs*1e6,
				(e.metric(parts[2])-part0[2])/reqs*1e6, (e.metric(parts[3])-part0[3])/reqs)
		}
		fmt.Printf("| %s | %.1f µs | %.1f µs | %.2f | %.2f..%.2f |\n", sc.name, median(extra)*1e6, median(measured)*1e6,
			median(ratio), slices.Min(ratio), slices.Max(ratio))
	}
	return nil
}

// logged reports whether the edge has logged a line containing s.
func (e *edge) logged(s string) bool {
	return strings.Contains(e.stderr.String(), s)
}

// printCalibration prints what the edge measured at start-up (its "tlscost: calibrated"
// log line): the handshake and data factors and the record costs.
func printCalibration(e *edge) {
	logs := e.stderr.String()
	refined := ""
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "tlscost: calibrated") {
			fmt.Printf("edge start-up: %s\n\n", line[strings.Index(line, "handshake_factor"):])
		}
		if strings.Contains(line, "tlscost: calibration refined") {
			refined = line[strings.Index(line, "rounds="):]
		}
	}
	if refined != "" {
		fmt.Printf("refined while idle: %s\n\n", refined)
	}
}

func (e *edge) addr(tls bool) string {
	if tls {
		return e.https
	}
	return e.http
}

// overhead: per run, two fresh edgeproxy processes, tls_cost on and off, loaded in turn
// with the same TLS requests, alternating -chunks times; CPU per request of each, median
// of the runs. Fresh processes per run, because what differs most between two runs of the
// same code is the pair of processes (how their heaps and threads came out of start-up):
// on one pair the difference read +1.7%, on the next +7.3%, each with a spread of ±2%.
func overhead(dir, backend string) error {
	fmt.Println("| scenario (TLS) | CPU per request, tls_cost on | CPU per request, tls_cost off | overhead (median of per-run ratios) | spread |")
	fmt.Println("|---|---|---|---|---|")
	for _, sc := range scenarios() {
		if !sc.gated {
			continue
		}
		var perOn, perOff, over []float64
		for i := range *runs {
			got, err := overheadRun(dir, backend, sc, i)
			if err != nil {
				return err
			}
			perOn, perOff = append(perOn, got[0]), append(perOff, got[1])
			over = append(over, got[0]/got[1]-1)
			fmt.Fprintf(os.Stderr, "  %s run %d: on %.1fµs off %.1fµs per request (%+.1f%%)\n", sc.name, i+1, got[0]*1e6, got[1]*1e6, (got[0]/got[1]-1)*100)
		}
		fmt.Printf("| %s | %.1f µs | %.1f µs | %+.1f%% | %+.1f%%..%+.1f%% |\n", sc.name, median(perOn)*1e6, median(perOff)*1e6,
			median(over)*100, slices.Min(over)*100, slices.Max(over)*100)
	}
	return nil
}

// overheadRun starts an edge with tls_cost on and one with it off, warms both up, and
// returns their CPU per request under sc's load, alternating -chunks times.
func overheadRun(dir, backend string, sc scenario, run int) ([2]float64, error) {
	var got [2]float64
	var edges [2]*edge
	for k, on := range []bool{true, false} {
		e, err := startEdge(dir, backend, edgeOptions{tlsCost: on})
		if err != nil {
			return got, err
		}
		defer e.stop()
		edges[k] = e
		if _, err := (load{tls: true, addr: e.https, size: sc.size, keepAlive: sc.keepAlive, requests: sc.requests / 10}).run(); err != nil {
			return got, err
		}
	}
	per := sc.requests / *chunks
	err := alternate(run, func(k int) error {
		e := edges[k]
		c0 := e.cpu()
		if _, err := (load{tls: true, addr: e.https, size: sc.size, keepAlive: sc.keepAlive, requests: per}).run(); err != nil {
			return err
		}
		got[k] += (e.cpu() - c0) / float64(per**chunks)
		return nil
	})
	return got, err
}

// alternate calls do for side 0 and side 1, -chunks times, changing which goes first from
// one chunk to the next (and from one run to the next), so that both sides see the same
// background load on this shared machine.
func alternate(run int, do func(side int) error) error {
	for j := range *chunks {
		first := (run + j) % 2
		for _, side := range []int{first, 1 - first} {
			if err := do(side); err != nil {
				return err
			}
		}
	}
	return nil
}

// handshakes: CPU per handshake from edgeproxy's own histogram, for an ECDSA P-256 and an
// RSA-2048 certificate, full (no client session cache) and resumed (a ticket per worker).
func handshakes(dir, backend string) error {
	type key struct{ cert, kind string }
	results := map[key][]float64{}
	edges := map[string]*edge{}
	for _, cert := range []string{"ecdsa", "rsa"} {
		e, err := startEdge(dir, backend, edgeOptions{tlsCost: true, cert: cert})
		if err != nil {
			return err
		}
		defer e.stop()
		edges[cert] = e
	}
	for i := range *runs {
		for _, cert := range []string{"ecdsa", "rsa"} {
			e := edges[cert]
			for _, resume := range []bool{false, true} {
				kind, lbl := "full", `resumed="false"`
				if resume {
					kind, lbl = "resumed", `resumed="true"`
				}
				s0 := e.metric("edgeproxy_tls_handshake_cpu_seconds_sum", `result="ok"`, lbl)
				c0 := e.metric("edgeproxy_tls_handshake_cpu_seconds_count", `result="ok"`, lbl)
				if _, err := (load{tls: true, addr: e.https, size: 16, resume: resume, requests: n(1500)}).run(); err != nil {
					return err
				}
				s1 := e.metric("edgeproxy_tls_handshake_cpu_seconds_sum", `result="ok"`, lbl)
				c1 := e.metric("edgeproxy_tls_handshake_cpu_seconds_count", `result="ok"`, lbl)
				us := (s1 - s0) / (c1 - c0) * 1e6
				results[key{cert, kind}] = append(results[key{cert, kind}], us)
				fmt.Fprintf(os.Stderr, "  run %d %s %s: %.0f handshakes, %.1f µs CPU each\n", i+1, cert, kind, c1-c0, us)
			}
		}
	}
	fmt.Println("| certificate | full handshake CPU | resumed handshake CPU |")
	fmt.Println("|---|---|---|")
	for _, cert := range []string{"ecdsa", "rsa"} {
		name := map[string]string{"ecdsa": "ECDSA P-256", "rsa": "RSA-2048"}[cert]
		f, r := results[key{cert, "full"}], results[key{cert, "resumed"}]
		fmt.Printf("| %s | %.0f µs (%.0f..%.0f) | %.0f µs (%.0f..%.0f) |\n", name, median(f), slices.Min(f), slices.Max(f),
			median(r), slices.Min(r), slices.Max(r))
	}
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// writeCert writes a self-signed certificate for localhost/127.0.0.1 with an ECDSA P-256 or
// RSA-2048 key (kind "ecdsa" or "rsa"), and returns the file names.
func writeCert(dir, kind string) (certFile, keyFile string, err error) {
	if kind != "ecdsa" && kind != "rsa" {
		return "", "", errors.New("unknown key type " + kind)
	}
	c, err := fixture.SelfSigned(fixture.CertOptions{Hosts: []string{"localhost", "127.0.0.1"}, RSA: kind == "rsa"})
	if err != nil {
		return "", "", err
	}
	return fixture.WriteFiles(dir, kind, c)
}

// tlsSplit adds up an edge's process CPU over its TLS and its plain-HTTP stretches of
// load, and the TLS cost metric over the TLS ones: the two sides of the accuracy ratio.
type tlsSplit struct{ cpuTLS, cpuPlain, metricTLS float64 }

// measure runs one stretch of load on e, over TLS if t, and adds what it cost.
func (s *tlsSplit) measure(e *edge, t bool, run func() error) error {
	m0, c0 := e.metric("edgeproxy_tls_cpu_seconds_total"), e.cpu()
	if err := run(); err != nil {
		return err
	}
	c1, m1 := e.cpu(), e.metric("edgeproxy_tls_cpu_seconds_total")
	if t {
		s.cpuTLS, s.metricTLS = s.cpuTLS+c1-c0, s.metricTLS+m1-m0
	} else {
		s.cpuPlain += c1 - c0
	}
	return nil
}
