package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"edgeproxy/bench/loadgen"
)

// cell is one traffic shape of the matrix (issue 20): the dimensions it varies, and the
// TLS requests of one run (scaled by -scale). The keep-alive cells below 64 KiB, whose
// TLS − plain is a few µs of a 40–60 µs request, get three times the requests they first
// had: with fewer, a quiet machine's run-to-run noise moved their median by ±30%
// (bench/RESULTS.md).
type cell struct {
	name      string
	dimension string // what the cell covers
	size      int    // response body bytes
	keepAlive bool
	resume    bool          // TLS 1.3 session tickets, a cache per worker
	curves    []tls.CurveID // nil: Go's default (X25519MLKEM768 first)
	maxVer    uint16        // 0: TLS 1.3
	h2        bool          // HTTP/2 (net/http's server): over TLS with ALPN h2, over plain with prior knowledge (h2c)
	netHTTP   bool          // HTTP/1.1 through net/http (proxy.fast_path: false)
	piece     int           // backend writes the body in pieces of this size, pausing between
	requests  int           // TLS requests per run, before -scale
	gate      [2]float64    // the ratio's target
}

var x25519Only = []tls.CurveID{tls.X25519}

// matrixCells are the cells: not the cross product, but each dimension varied from a
// base (HTTP/1.1 on the fast path, TLS 1.3, Go's default key exchange, a backend writing
// each body in one write): response sizes on keep-alive; new connections with full and
// resumed handshakes, with X25519 only and TLS 1.2; a streaming backend; TLS 1.2 on
// keep-alive; HTTP/2.
func matrixCells() []cell {
	g := [2]float64{0.85, 1.15}
	return []cell{
		{name: "keep-alive 64 B", dimension: "size", size: 64, keepAlive: true, requests: 48000, gate: g},
		{name: "keep-alive 1 KiB", dimension: "size", size: 1 << 10, keepAlive: true, requests: 48000, gate: g},
		{name: "keep-alive 16 KiB", dimension: "size", size: 16 << 10, keepAlive: true, requests: 30000, gate: g},
		{name: "keep-alive 64 KiB", dimension: "size", size: 64 << 10, keepAlive: true, requests: 5000, gate: g},
		{name: "keep-alive 1 MiB", dimension: "size", size: 1 << 20, keepAlive: true, requests: 400, gate: g},
		{name: "keep-alive 64 KiB, backend writes 4 KiB pieces", dimension: "backend writes", size: 64 << 10, piece: 4 << 10, keepAlive: true, requests: 9000, gate: g},
		{name: "new connection 1 KiB, full handshake", dimension: "handshake; X25519MLKEM768", size: 1 << 10, requests: 1000, gate: g},
		{name: "new connection 1 KiB, X25519 only", dimension: "key exchange", size: 1 << 10, curves: x25519Only, requests: 1000, gate: g},
		{name: "new connection 1 KiB, resumed (TLS 1.3 ticket)", dimension: "resumption", size: 1 << 10, resume: true, requests: 2000, gate: g},
		{name: "new connection 1 KiB, TLS 1.2", dimension: "TLS version", size: 1 << 10, maxVer: tls.VersionTLS12, requests: 1000, gate: g},
		{name: "keep-alive 16 KiB, TLS 1.2", dimension: "TLS version", size: 16 << 10, keepAlive: true, maxVer: tls.VersionTLS12, requests: 30000, gate: g},
		{name: "keep-alive 1 KiB, net/http (fast_path: false)", dimension: "data path", size: 1 << 10, keepAlive: true, netHTTP: true, requests: 36000, gate: g},
		{name: "keep-alive 64 KiB, net/http (fast_path: false)", dimension: "data path", size: 64 << 10, keepAlive: true, netHTTP: true, requests: 4000, gate: g},
		// TLS − plain is HTTP/2 over TLS − HTTP/2 in clear (h2c with prior knowledge, on
		// the same edge's plain listener): HTTP/2's own framing and stream goroutines are on
		// both sides, so the difference is TLS alone, as in the HTTP/1.1 cells.
		{name: "HTTP/2 keep-alive 1 KiB", dimension: "HTTP/2 (baseline: h2c)", size: 1 << 10, keepAlive: true, h2: true, requests: 8000, gate: g},
		{name: "HTTP/2 keep-alive 64 KiB", dimension: "HTTP/2 (baseline: h2c)", size: 64 << 10, keepAlive: true, h2: true, requests: 4000, gate: g},
	}
}

// path is the request target of c.
func (c cell) path() string {
	p := fmt.Sprintf("/bytes?n=%d", c.size)
	if c.piece > 0 {
		p += fmt.Sprintf("&piece=%d", c.piece)
	}
	return p
}

// load sends n requests of c to e, over TLS or plain HTTP (HTTP/1.1, or HTTP/2 for an h2
// cell).
func (c cell) load(e *edge, useTLS bool, n int) error {
	if c.h2 {
		return h2Load(e.addr(useTLS), useTLS, c.path(), c.size, n)
	}
	o := loadgen.Options{Addr: e.addr(useTLS), TLS: useTLS, Path: c.path(), BodyBytes: c.size,
		KeepAlive: c.keepAlive, Resume: c.resume, Connections: *workers, Requests: n}
	if useTLS {
		o.Curves, o.MaxVersion = c.curves, c.maxVer
	}
	_, err := loadgen.Run(context.Background(), o)
	return err
}

// h2Load sends n GET requests over HTTP/2, one connection per worker: over TLS (ALPN h2)
// with useTLS, else in clear with prior knowledge (the edge's listen.h2c).
func h2Load(addr string, useTLS bool, path string, size, n int) error {
	var next atomic.Int64
	errs := make(chan error, *workers)
	url := "http://" + addr + path
	if useTLS {
		url = "https://" + addr + path
	}
	for range *workers {
		go func() {
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{"h2"}},
				ForceAttemptHTTP2: true}
			if !useTLS {
				tr = &http.Transport{Protocols: new(http.Protocols)}
				tr.Protocols.SetUnencryptedHTTP2(true)
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			for next.Add(1) <= int64(n) {
				res, err := client.Get(url)
				if err != nil {
					errs <- err
					return
				}
				got, err := io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if err != nil || res.StatusCode != 200 || res.ProtoMajor != 2 || got != int64(size) {
					errs <- fmt.Errorf("h2 load: %s status %d, %d bytes, %v", res.Proto, res.StatusCode, got, err)
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range *workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// cellResult is what the matrix measured for a cell, one value per run.
type cellResult struct {
	extra, metric, ratio, overhead []float64
}

// matrix measures each cell's accuracy (metric over TLS − plain, same edge) and the
// accounting's overhead (tls_cost on vs off, a fresh pair of edges per run), and prints
// a markdown table.
func matrix(dir, backend string) error {
	lo, hi := 0.85, 1.15
	if *gate != "" {
		if _, err := fmt.Sscanf(*gate, "%g,%g", &lo, &hi); err != nil || lo >= hi {
			return fmt.Errorf("-gate %q: want LO,HI such as 0.6,1.6", *gate)
		}
	}
	var cells []cell
	for _, c := range matrixCells() {
		if selected(c.name) {
			if c.gate[1] > 0 {
				c.gate = [2]float64{lo, hi}
			}
			cells = append(cells, c)
		}
	}
	if len(cells) == 0 {
		return fmt.Errorf("-only %q selects no cell", *only)
	}
	// One measuring edge per data path for the accuracy runs: the fast path serves
	// HTTP/1.1; HTTP/2 is net/http's whatever the setting (the fast_path: false edge
	// serves it), over TLS and, with listen.h2c, in clear: its plain baseline.
	edges := map[bool]*edge{}
	for _, netHTTP := range []bool{false, true} {
		// The first refines the calibration (-settle); the second starts from it.
		e, err := startEdge(dir, backend, edgeOptions{tlsCost: true, netHTTP: netHTTP, h2c: true, settle: !netHTTP})
		if err != nil {
			return err
		}
		defer e.stop()
		edges[netHTTP] = e
	}
	printCalibration(edges[false])
	results := make([]cellResult, len(cells))
	for i, c := range cells {
		r, err := measureCell(dir, backend, edges[c.h2 || c.netHTTP], c)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		results[i] = r
		fmt.Fprintf(os.Stderr, "%s: ratio %.2f (%.2f..%.2f), overhead %+.1f%%\n", c.name, median(r.ratio), slices.Min(r.ratio), slices.Max(r.ratio), median(r.overhead)*100) // 0 without -overhead
	}
	fmt.Println("| cell | dimension | TLS − plain CPU per request | metric per request | ratio, median (min..max) | overhead of tls_cost, median (min..max) |")
	fmt.Println("|---|---|---|---|---|---|")
	fails, gated := 0, 0
	for i, c := range cells {
		r := results[i]
		mark := ""
		switch m := median(r.ratio); {
		case c.gate[1] == 0:
			mark = " (not gated)"
		case m < c.gate[0] || m > c.gate[1]:
			mark, fails = " ✗", fails+1
		}
		if c.gate[1] > 0 {
			gated++
		}
		over := "—"
		if *withOverhead {
			over = fmt.Sprintf("%+.1f%% (%+.1f..%+.1f)", median(r.overhead)*100, slices.Min(r.overhead)*100, slices.Max(r.overhead)*100)
		}
		fmt.Printf("| %s | %s | %.1f µs | %.1f µs | %.2f (%.2f..%.2f)%s | %s |\n", c.name, c.dimension,
			median(r.extra)*1e6, median(r.metric)*1e6, median(r.ratio), slices.Min(r.ratio), slices.Max(r.ratio), mark, over)
	}
	fmt.Printf("\n%d of %d gated cells outside %.2f–%.2f (✗). Median of %d interleaved runs, %d TLS/plain (on/off) alternations each; edge CPU from /proc/PID/task/*/schedstat.\n",
		fails, gated, lo, hi, *runs, *chunks)
	if !*withOverhead {
		fmt.Println("(overhead not measured: -overhead=false)")
	}
	if *gate != "" && fails > 0 {
		return fmt.Errorf("%d of %d gated cells outside %.2f–%.2f", fails, gated, lo, hi)
	}
	return nil
}

// measureCell runs c's accuracy runs on e and its overhead runs on fresh pairs of edges.
func measureCell(dir, backend string, e *edge, c cell) (cellResult, error) {
	var r cellResult
	total := n(c.requests)
	per := max(1, total / *chunks)
	// Warm up both sides (connections to the target, code paths).
	for _, t := range []bool{true, false} {
		if err := c.load(e, t, max(per/4, 20)); err != nil {
			return r, err
		}
	}
	for i := range *runs {
		var split tlsSplit
		err := alternate(i, func(side int) error {
			t := side == 0
			return split.measure(e, t, func() error { return c.load(e, t, per) })
		})
		if err != nil {
			return r, err
		}
		reqs := float64(per * *chunks)
		x, m := (split.cpuTLS-split.cpuPlain)/reqs, split.metricTLS/reqs
		r.extra, r.metric, r.ratio = append(r.extra, x), append(r.metric, m), append(r.ratio, m/x)
		fmt.Fprintf(os.Stderr, "  %s run %d: extra %.1fµs/req, metric %.1fµs/req, ratio %.3f\n", c.name, i+1, x*1e6, m*1e6, m/x)
	}
	for i := range *runs {
		if !*withOverhead {
			break
		}
		o, err := cellOverhead(dir, backend, c, i, per)
		if err != nil {
			return r, err
		}
		r.overhead = append(r.overhead, o)
	}
	return r, nil
}

// cellOverhead starts an edge with tls_cost on and one with it off (the on edge starts
// calibrated from the shared cache), warms both up and returns CPU per request on / off − 1
// under c's TLS load, alternating -chunks times.
func cellOverhead(dir, backend string, c cell, run, per int) (float64, error) {
	var got [2]float64
	var edges [2]*edge
	for k, on := range []bool{true, false} {
		e, err := startEdge(dir, backend, edgeOptions{tlsCost: on, netHTTP: c.h2 || c.netHTTP})
		if err != nil {
			return 0, err
		}
		defer e.stop()
		edges[k] = e
		if err := c.load(e, true, max(per/4, 20)); err != nil {
			return 0, err
		}
	}
	err := alternate(run, func(k int) error {
		e := edges[k]
		c0 := e.cpu()
		if err := c.load(e, true, per); err != nil {
			return err
		}
		got[k] += e.cpu() - c0
		return nil
	})
	return got[0]/got[1] - 1, err
}

// startup measures what start-up costs: CPU per request, second by second, over the first
// 20 seconds of an edge loaded from the moment it serves (TLS keep-alive, 1 KiB), after a
// first start (no calibration cached: it calibrates meanwhile) and after a start that finds
// the calibration cached. -runs pairs; the median per second is printed.
func startup(dir, backend string) error {
	const seconds = 20
	kinds := []string{"first start (calibrates)", "cached calibration"}
	per := map[string][][]float64{} // kind → second → runs
	for _, k := range kinds {
		per[k] = make([][]float64, seconds)
	}
	for run := range *runs {
		cache := filepath.Join(dir, fmt.Sprintf("startup-cache-%d", run))
		for _, k := range kinds {
			e, err := startEdge(dir, backend, edgeOptions{tlsCost: true, cacheDir: cache, noWait: true})
			if err != nil {
				return err
			}
			for s := range seconds {
				c0 := e.cpu()
				res, err := loadgen.Run(context.Background(), loadgen.Options{Addr: e.https, TLS: true, Path: "/bytes?n=1024", BodyBytes: 1024,
					KeepAlive: true, Connections: *workers, Duration: time.Second})
				if err != nil {
					e.stop()
					return err
				}
				us := (e.cpu() - c0) / float64(max(1, res.Requests)) * 1e6
				per[k][s] = append(per[k][s], us)
				fmt.Fprintf(os.Stderr, "  run %d %s second %d: %d requests, %.1f µs CPU each\n", run+1, k, s+1, res.Requests, us)
			}
			// The first start writes the cache once its calibration is done.
			for deadline := time.Now().Add(2 * time.Minute); !e.logged("tlscost: calibrated") && time.Now().Before(deadline); {
				time.Sleep(100 * time.Millisecond)
			}
			e.stop()
		}
	}
	fmt.Println("| second after start | " + strings.Join(kinds, " | ") + " |")
	fmt.Println("|---|---|---|")
	for s := range seconds {
		fmt.Printf("| %d | %.1f µs | %.1f µs |\n", s+1, median(per[kinds[0]][s]), median(per[kinds[1]][s]))
	}
	// Steady state: the cached start's seconds 11–20 (the first start may still be
	// calibrating then, on a loaded machine).
	var steady []float64
	for s := 10; s < seconds; s++ {
		steady = append(steady, median(per[kinds[1]][s]))
	}
	ref := median(steady)
	for _, k := range kinds {
		mean := 0.0
		for s := range 10 {
			mean += median(per[k][s]) / 10
		}
		fmt.Printf("\n%s: first 10 s mean %.1f µs per request, %.2f× steady state (%.1f µs: the cached start's seconds 11–20)", k, mean, mean/ref, ref)
	}
	fmt.Printf("\n\nCPU per request of the edge process (the calibration's client runs in a child process, not counted). TLS keep-alive, 1 KiB, %d connections; median of %d runs.\n", *workers, *runs)
	return nil
}
