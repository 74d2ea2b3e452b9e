// Command idleconns measures the memory an edge spends per idle keep-alive TLS
// connection: it starts edgeproxy (a separate process) in front of an in-process backend,
// has a client process (this program re-executed with -client) open N TLS connections,
// make one request on each and leave them idle, and reads the edge's resident set size
// from /proc before and after. It then closes the connections and checks the edge's
// goroutines return to their baseline.
//
//	go run ./bench/idleconns -edgeproxy /path/to/edgeproxy -n 5000
//	go run ./bench/idleconns -peer nginx -n 5000   # nginx measured the same way
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"edgeproxy/internal/testutil/fixture"
)

func main() {
	bin := flag.String("edgeproxy", "", "edgeproxy binary (required unless -client)")
	n := flag.Int("n", 5000, "idle connections")
	client := flag.String("client", "", "internal: act as the client against this address")
	fastPath := flag.Bool("fast-path", true, "proxy.fast_path of the edge (false: everything through net/http)")
	peer := flag.String("peer", "edgeproxy", "the proxy measured: edgeproxy or nginx (measured the same way, all its processes)")
	flag.Parse()
	if *client != "" {
		runClient(*client, *n)
		return
	}
	if *bin == "" && *peer == "edgeproxy" {
		fmt.Fprintln(os.Stderr, "idleconns: -edgeproxy is required")
		os.Exit(2)
	}
	if err := run(*peer, *bin, *n, *fastPath); err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(1)
	}
}

// proxyUnderTest is a running proxy: its processes (for their memory) and, for edgeproxy,
// a goroutine count that must come back to its baseline when the connections close.
type proxyUnderTest struct {
	name       string
	pids       func() []int
	goroutines func() int // -1 when the proxy has no such count
	// memory splits a Go process's memory into heap and stacks, in KiB (nil for nginx).
	memory func() (heap, stacks float64)
	stop   func()
}

func run(peer, bin string, n int, fastPath bool) error {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go http.Serve(backend, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))

	dir, err := os.MkdirTemp("", "idleconns")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cert, err := fixture.SelfSigned(fixture.CertOptions{Hosts: []string{"bench.test"}})
	if err != nil {
		return err
	}
	certFile, keyFile, err := fixture.WriteFiles(dir, "bench", cert)
	if err != nil {
		return err
	}
	https := fixture.FreeAddr()
	var p *proxyUnderTest
	switch peer {
	case "edgeproxy":
		p, err = startEdge(bin, dir, https, certFile, keyFile, backend.Addr().String(), n, fastPath)
	case "nginx":
		p, err = startNginx(dir, https, certFile, keyFile, backend.Addr().String(), n)
	default:
		err = fmt.Errorf("unknown -peer %q (edgeproxy or nginx)", peer)
	}
	if err != nil {
		return err
	}
	defer p.stop()
	time.Sleep(1500 * time.Millisecond) // first health checks done; the heap settles
	rss0, g0 := rssKiB(p.pids()), p.goroutines()
	var heap0, stacks0 float64
	if p.memory != nil {
		heap0, stacks0 = p.memory()
	}

	self, _ := os.Executable()
	cl := exec.Command(self, "-client", https, "-n", strconv.Itoa(n))
	cl.Stderr = os.Stderr
	stdin, _ := cl.StdinPipe()
	stdout, _ := cl.StdoutPipe()
	if err := cl.Start(); err != nil {
		return err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		return fmt.Errorf("client: %q %v", line, err)
	}
	time.Sleep(2 * time.Second)
	rss1, g1 := rssKiB(p.pids()), p.goroutines()
	if p.memory != nil {
		heap1, stacks1 := p.memory()
		defer fmt.Printf("%s: of which Go heap in use %.1f KiB and goroutine stacks %.1f KiB per connection\n",
			p.name, (heap1-heap0)/float64(n), (stacks1-stacks0)/float64(n))
	}
	stdin.Close() // the client closes its connections and exits
	cl.Wait()
	fmt.Printf("%s: idle TLS connections: %d (client: %s)\n", p.name, n, strings.TrimSpace(line))
	fmt.Printf("%s: RSS of all its processes: %d KiB before, %d KiB with the connections open: %.1f KiB per connection\n",
		p.name, rss0, rss1, float64(rss1-rss0)/float64(n))
	if g0 < 0 {
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	g2 := p.goroutines()
	for g2 > g0+5 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		g2 = p.goroutines()
	}
	fmt.Printf("%s: goroutines: %d before, %d with the connections open, %d after they closed\n", p.name, g0, g1, g2)
	if g2 > g0+5 {
		return fmt.Errorf("goroutines did not return to baseline: %d vs %d", g2, g0)
	}
	return nil
}

// startEdge runs edgeproxy with its shipped defaults (TLS cost, metrics, health checks)
// and the same certificate nginx gets.
func startEdge(bin, dir, https, certFile, keyFile, backend string, n int, fastPath bool) (*proxyUnderTest, error) {
	metrics := fixture.FreeAddr()
	cfg := filepath.Join(dir, "edge.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: {https: %q, metrics: %q}
tls: {certificates: [{cert: %q, key: %q}]}
pool:
  targets: [%q]
  health_check: {interval: 1s}
limits: {max_connections: %d, idle_timeout: 10m}
proxy: {fast_path: %v}
`, https, metrics, certFile, keyFile, backend, n+100, fastPath)), 0o600)
	edge := exec.Command(bin, "run", "-config", cfg)
	edge.Stderr = io.Discard
	if err := edge.Start(); err != nil {
		return nil, err
	}
	if err := waitHTTP("http://" + metrics + "/healthz"); err != nil {
		edge.Process.Kill()
		return nil, err
	}
	return &proxyUnderTest{
		name:       fmt.Sprintf("edgeproxy (fast path %v)", fastPath),
		pids:       func() []int { return []int{edge.Process.Pid} },
		goroutines: func() int { return goroutines(metrics) },
		memory: func() (float64, float64) {
			return gauge(metrics, "go_memstats_heap_inuse_bytes") / 1024, gauge(metrics, "go_memstats_stack_inuse_bytes") / 1024
		},
		stop: func() { edge.Process.Kill(); edge.Wait() },
	}, nil
}

// startNginx runs nginx as bench/peers configures it (one worker, TLS 1.3, an upstream
// keep-alive pool), with room for n connections.
func startNginx(dir, https, certFile, keyFile, backend string, n int) (*proxyUnderTest, error) {
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes 1;
worker_rlimit_nofile %d;
daemon off;
pid %s/nginx.pid;
error_log %s/nginx-error.log warn;
events { worker_connections %d; }
http {
    access_log off;
    keepalive_timeout 10m;
    client_body_temp_path %s/body;
    proxy_temp_path %s/proxy;
    upstream backends { server %s; keepalive 16; }
    server {
        listen %s ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`, 2*n+200, dir, dir, n+100, dir, dir, backend, https, certFile, keyFile)), 0o600)
	ngx := exec.Command("nginx", "-c", conf, "-e", filepath.Join(dir, "nginx-error.log"))
	ngx.Stderr = os.Stderr
	if err := ngx.Start(); err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		if c, err := tls.Dial("tcp", https, &tls.Config{InsecureSkipVerify: true}); err == nil {
			c.Close()
			break
		}
		if i == 100 {
			ngx.Process.Kill()
			return nil, fmt.Errorf("nginx never answered on %s", https)
		}
		time.Sleep(100 * time.Millisecond)
	}
	master := ngx.Process.Pid
	return &proxyUnderTest{
		name:       "nginx (1 worker)",
		pids:       func() []int { return append([]int{master}, children(master)...) },
		goroutines: func() int { return -1 },
		stop:       func() { ngx.Process.Signal(os.Interrupt); ngx.Wait() },
	}, nil
}

// children lists the processes whose parent is pid (nginx's workers).
func children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

func runClient(addr string, n int) {
	conf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}, ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	conns := make([]*tls.Conn, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		c, err := tls.Dial("tcp", addr, conf)
		if err != nil {
			fmt.Fprintf(os.Stderr, "client: connection %d: %v\n", i, err)
			os.Exit(1)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			fmt.Fprintf(os.Stderr, "client: request %d: %v\n", i, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		conns = append(conns, c)
	}
	fmt.Printf("ready: %d connections opened in %v\n", n, time.Since(start).Round(time.Millisecond))
	io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
	for _, c := range conns {
		c.Close()
	}
}

// rssKiB is the resident set size of pids, summed.
func rssKiB(pids []int) int {
	total := 0
	for _, pid := range pids {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(data); m != nil {
			v, _ := strconv.Atoi(string(m[1]))
			total += v
		}
	}
	return total
}

func goroutines(metrics string) int {
	return int(gauge(metrics, "go_goroutines"))
}

// gauge reads one unlabelled gauge of the edge's /metrics; -1 when it cannot.
func gauge(metrics, name string) float64 {
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func waitHTTP(url string) error {
	for i := 0; i < 100; i++ {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s never answered", url)
}
