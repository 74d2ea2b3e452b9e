// Command idleconns measures the memory an edge spends per idle keep-alive TLS
// connection: it starts edgeproxy (a separate process) in front of an in-process backend,
// has a client process (this program re-executed with -client) open N TLS connections,
// make one request on each and leave them idle, and reads the edge's resident set size
// from /proc before and after. It then closes the connections and checks the edge's
// goroutines return to their baseline.
//
//	go run ./bench/idleconns -edgeproxy /path/to/edgeproxy -n 5000
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
	flag.Parse()
	if *client != "" {
		runClient(*client, *n)
		return
	}
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "idleconns: -edgeproxy is required")
		os.Exit(2)
	}
	if err := run(*bin, *n, *fastPath); err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(1)
	}
}

func run(bin string, n int, fastPath bool) error {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go http.Serve(backend, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))

	https, metrics := fixture.FreeAddr(), fixture.FreeAddr()
	dir, err := os.MkdirTemp("", "idleconns")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "edge.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: {https: %q, metrics: %q}
tls: {self_signed: true}
pool:
  targets: [%q]
  health_check: {interval: 1s}
limits: {max_connections: %d, idle_timeout: 10m}
proxy: {fast_path: %v}
`, https, metrics, backend.Addr().String(), n+100, fastPath)), 0o600)
	edge := exec.Command(bin, "run", "-config", cfg)
	edge.Stderr = io.Discard
	if err := edge.Start(); err != nil {
		return err
	}
	defer edge.Process.Kill()
	if err := waitHTTP("http://" + metrics + "/healthz"); err != nil {
		return err
	}
	time.Sleep(1500 * time.Millisecond) // first health checks done; the heap settles
	rss0, g0 := rssKiB(edge.Process.Pid), goroutines(metrics)

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
	rss1, g1 := rssKiB(edge.Process.Pid), goroutines(metrics)
	stdin.Close() // the client closes its connections and exits
	cl.Wait()
	deadline := time.Now().Add(10 * time.Second)
	g2 := goroutines(metrics)
	for g2 > g0+5 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		g2 = goroutines(metrics)
	}
	fmt.Printf("idle TLS connections: %d, fast path %v (client: %s)\n", n, fastPath, strings.TrimSpace(line))
	fmt.Printf("edge RSS: %d KiB before, %d KiB with the connections open: %.1f KiB per connection\n",
		rss0, rss1, float64(rss1-rss0)/float64(n))
	fmt.Printf("edge goroutines: %d before, %d with the connections open, %d after they closed\n", g0, g1, g2)
	if g2 > g0+5 {
		return fmt.Errorf("goroutines did not return to baseline: %d vs %d", g2, g0)
	}
	return nil
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

func rssKiB(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(data)
	if m == nil {
		return 0
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

func goroutines(metrics string) int {
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^go_goroutines (\d+)`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.Atoi(string(m[1]))
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
