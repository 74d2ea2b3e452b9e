package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"edgeproxy/config"
)

// healthcheckCmd asks the running edge's metrics listener for /healthz: exit 0 on 200,
// else 1 with the reason. It is the Docker image's HEALTHCHECK, so it needs no shell or
// curl, and exits only 0 or 1 (Docker reserves 2).
//
// It reads the configuration for syntax only (config.LoadSyntax): it needs just
// listen.metrics, and the files the edge reads (key files from systemd's
// ${CREDENTIALS_DIRECTORY}, say) need not be readable by whoever runs the check.
func healthcheckCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("healthcheck", "healthcheck [-config FILE] [-timeout D]", stderr)
	file := fs.String("config", defaultConfig, "configuration `file` of the running edge (for listen.metrics)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this `duration`")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "edgeproxy healthcheck: "+format+"\n", a...)
		return 1
	}
	cfg, err := config.LoadSyntax(*file)
	if err != nil {
		return fail("%v", err)
	}
	url, err := healthzURL(cfg.Listen.Metrics)
	if err != nil {
		return fail("%s: %v", *file, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fail("%v", err)
	}
	// No proxy from the environment: the edge is on this host.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fail("%v (is edgeproxy running?)", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fail("GET %s: %s %q", url, resp.Status, body)
	}
	fmt.Fprintf(stdout, "ok: GET %s: %s\n", url, resp.Status)
	return 0
}

// healthzURL is the /healthz URL of the metrics listener addr. A listener on every
// address (":9180", "0.0.0.0:9180", "[::]:9180") is asked on 127.0.0.1: Go's wildcard
// listeners accept IPv4 too.
func healthzURL(addr string) (string, error) {
	if addr == "" {
		return "", errors.New("listen.metrics is empty: the health check needs the metrics listener (/healthz); set listen.metrics, e.g. \"127.0.0.1:9180\"")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("listen.metrics %q: %v", addr, err)
	}
	if port == "0" {
		return "", fmt.Errorf("listen.metrics %q: port 0 is chosen at start-up and cannot be found from the config", addr)
	}
	if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}
