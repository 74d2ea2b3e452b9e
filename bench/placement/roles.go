package placement

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"edgeproxy/bench/loadgen"
)

// The benchmark's own processes are its binary re-executed with a role: `edgeproxy-bench
// -role backend|load ...` (`edgeproxy bench -role ...` runs that). The flags of each role
// are internal: the controller (Run) and bench/peers/run.sh write them.

// Backend serves GET /bytes?n=N (N bytes, at most 1 MiB, Content-Length set) with
// net/http on -plain (HTTP) and/or -tls (HTTPS with -cert/-key), until SIGTERM.
func Backend(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench -role backend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	plain := fs.String("plain", "", "plain-HTTP listen `address`")
	tlsAddr := fs.String("tls", "", "HTTPS listen `address`")
	certFile := fs.String("cert", "", "certificate `file` for -tls")
	keyFile := fs.String("key", "", "key `file` for -tls")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	body := make([]byte, 1<<20)
	for i := range body {
		body[i] = 'x'
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		n = min(max(n, 0), len(body))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(body[:n])
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errs := make(chan error, 2)
	var servers []*http.Server
	serve := func(addr string, conf *tls.Config) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: nil, TLSConfig: conf}
		// HTTP/1.1 only, as the edge's upstream and the load generator speak.
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		servers = append(servers, srv)
		go func() {
			if conf != nil {
				ln = tls.NewListener(ln, conf)
			}
			errs <- srv.Serve(ln)
		}()
		return nil
	}
	if *plain != "" {
		if err := serve(*plain, nil); err != nil {
			fmt.Fprintln(stderr, "backend:", err)
			return 1
		}
	}
	if *tlsAddr != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintln(stderr, "backend:", err)
			return 1
		}
		conf := &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"http/1.1"}}
		if err := serve(*tlsAddr, conf); err != nil {
			fmt.Fprintln(stderr, "backend:", err)
			return 1
		}
	}
	fmt.Fprintln(stderr, "backend: serving")
	select {
	case <-ctx.Done():
	case err := <-errs:
		fmt.Fprintln(stderr, "backend:", err)
		return 1
	}
	for _, s := range servers {
		_ = s.Close()
	}
	return 0
}

// LoadResult is what the load role prints, as one JSON object, at its end.
type LoadResult struct {
	Requests int     `json:"requests"`
	Seconds  float64 `json:"seconds"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	// CPU is the CPU seconds each process of -pids used over the measured window, by pid.
	CPU map[string]float64 `json:"cpu"`
	// SelfCPU is the load generator's own CPU seconds over the window.
	SelfCPU float64 `json:"self_cpu"`
	// TLSMetric is the increase of edgeproxy_tls_cpu_seconds_total at -metrics over the
	// window; -1 without -metrics.
	TLSMetric float64 `json:"tls_metric"`
}

// Load runs the load generator for a warm-up and a measured window, reading the CPU of
// the processes it is told (-pids) and an edge's TLS cost metric (-metrics) when the
// window opens and when it closes, and prints a LoadResult as JSON to stdout.
func Load(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench -role load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "server `host:port`")
	useTLS := fs.Bool("tls", false, "speak TLS")
	sni := fs.String("sni", "localhost", "TLS server name and Host header")
	size := fs.Int("bytes", 64, "response body size (GET /bytes?n=N)")
	keepAlive := fs.Bool("keepalive", true, "keep connections alive; false: a new connection (full handshake) per request")
	conns := fs.Int("c", 8, "connections")
	warmup := fs.Duration("warmup", time.Second, "warm-up before the measured window")
	duration := fs.Duration("duration", 5*time.Second, "measured window")
	pids := fs.String("pids", "", "comma-separated `pids` whose CPU to measure (a+b sums processes a and b)")
	metrics := fs.String("metrics", "", "edgeproxy metrics `host:port` for edgeproxy_tls_cpu_seconds_total")
	x25519 := fs.Bool("x25519", true, "offer only X25519 (else Go's default key shares)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var groups [][]int
	var keys []string
	if *pids != "" {
		for _, g := range strings.Split(*pids, ",") {
			keys = append(keys, g)
			var group []int
			for _, s := range strings.Split(g, "+") {
				pid, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil {
					fmt.Fprintf(stderr, "load: bad pid %q\n", s)
					return 2
				}
				group = append(group, pid)
			}
			groups = append(groups, group)
		}
	}
	readCPU := func() ([]float64, float64, error) {
		out := make([]float64, len(groups))
		for i, g := range groups {
			for _, pid := range g {
				c, err := ProcCPU(pid)
				if err != nil {
					return nil, 0, err
				}
				out[i] += c
			}
		}
		self, err := ProcCPU(os.Getpid())
		return out, self, err
	}
	readMetric := func() float64 {
		if *metrics == "" {
			return -1
		}
		v, err := scrape(*metrics, "edgeproxy_tls_cpu_seconds_total")
		if err != nil {
			return -1
		}
		return v
	}
	var cpu0 []float64
	var self0, metric0 float64
	var startErr error
	o := loadgen.Options{
		Addr: *addr, TLS: *useTLS, ServerName: *sni, Path: fmt.Sprintf("/bytes?n=%d", *size), BodyBytes: *size,
		KeepAlive: *keepAlive, Connections: *conns, Warmup: *warmup, Duration: *duration, Latencies: true,
		OnStart: func() {
			metric0 = readMetric()
			cpu0, self0, startErr = readCPU()
		},
	}
	if *x25519 {
		o.Curves = []tls.CurveID{tls.X25519}
	}
	res, err := loadgen.Run(context.Background(), o)
	if err == nil {
		err = startErr
	}
	if err != nil {
		fmt.Fprintln(stderr, "load:", err)
		return 1
	}
	cpu1, self1, err := readCPU()
	if err != nil {
		fmt.Fprintln(stderr, "load:", err)
		return 1
	}
	out := LoadResult{
		Requests: res.Requests, Seconds: res.Elapsed.Seconds(),
		P50us: float64(res.P50) / 1e3, P99us: float64(res.P99) / 1e3,
		CPU: map[string]float64{}, SelfCPU: self1 - self0, TLSMetric: -1,
	}
	if m1 := readMetric(); metric0 >= 0 && m1 >= 0 {
		out.TLSMetric = m1 - metric0
	}
	for i, key := range keys {
		out.CPU[key] = cpu1[i] - cpu0[i]
	}
	if err := json.NewEncoder(stdout).Encode(out); err != nil {
		return 1
	}
	return 0
}

// scrape returns the value of the unlabelled sample name at http://addr/metrics.
func scrape(addr, name string) (float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	res, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("placement: no sample " + name)
}
