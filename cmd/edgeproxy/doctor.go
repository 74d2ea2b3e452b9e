package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"edgeproxy/doctor"
)

// doctorCmd runs the checks of package doctor on a configuration and prints one line per
// check; it exits 1 if any fails, 2 on bad flags.
func doctorCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("doctor", "doctor [-config FILE] [-resolver ADDR] [-public-ip IP]", stderr)
	file := fs.String("config", defaultConfig, "configuration `file` to check")
	resolver := fs.String("resolver", "", "DNS server `address` (host:port, or host for port 53) to resolve tls.acme.domains with; empty means the system resolver")
	publicIP := fs.String("public-ip", "", "this host's public `IP` when no interface has it (EC2: the public or Elastic IP); the ACME domains must resolve to it")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of each network check")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	opts := doctor.Options{ConfigFile: *file, Resolver: *resolver, Timeout: *timeout}
	if *publicIP != "" {
		ip, err := netip.ParseAddr(*publicIP)
		if err != nil {
			fmt.Fprintf(stderr, "edgeproxy doctor: -public-ip %q is not an IP address\n", *publicIP)
			return 2
		}
		opts.PublicIP = ip.Unmap()
	}
	d, err := doctor.New(opts)
	if err != nil {
		fmt.Fprintf(stderr, "edgeproxy %v\n", err)
		return 2
	}
	results := d.Run(context.Background(), stdout)
	var counts [3]int
	for _, r := range results {
		counts[r.Status]++
	}
	fmt.Fprintf(stderr, "edgeproxy doctor: %d ok, %d warn, %d fail\n", counts[doctor.OK], counts[doctor.Warn], counts[doctor.Fail])
	if doctor.Failed(results) {
		return 1
	}
	return 0
}
