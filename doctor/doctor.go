// Package doctor runs `edgeproxy doctor`: from the box edgeproxy runs on, it checks the
// set-up mistakes that make a first move to HTTPS fail, and says for each what to fix. The
// configuration is valid; each listener can be bound (or is already bound by this
// edgeproxy); each ACME domain resolves to this host, and each ACME IP address is this
// host's (a site on the self-signed certificate hears that IP-address certificates
// exist); the ACME directory answers, and offers tls.acme.profile; the fleet's Redis
// (tls.acme.storage.redis) answers and what it holds opens with this replica's key; the
// ACME domains and pool.health_check.host are covered by a certificate that is not due
// for renewal; each target passes the health check (and a 400 is explained as Django's
// ALLOWED_HOSTS); and the last failed ACME order, if any, is translated into its likely
// cause: a closed port 80/443, or DNS pointing elsewhere.
//
// Every check is read-only: nothing is ordered, bound for longer than a test, or written.
// Each network check is bounded by Options.Timeout. The only hosts contacted are the
// configured ones (listeners, targets, the ACME directory, Redis) and the DNS resolver.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"edgeproxy/config"
)

// Status is the verdict of one check.
type Status int

const (
	// OK means nothing to do.
	OK Status = iota
	// Warn means it may work, or may not, for a reason the line explains; the exit
	// status stays 0.
	Warn
	// Fail means it will not work as configured; `edgeproxy doctor` exits 1.
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	default:
		return "fail"
	}
}

// Result is one check's line: `STATUS  CHECK  detail`. More holds further lines (the
// problems of an invalid configuration), printed indented below it.
type Result struct {
	Status Status
	// Check names what was checked: "config", "listen.https", "dns:app.test",
	// "ip:203.0.113.7", "tls", "acme.directory", "storage.redis", "cert:app.test", "target:127.0.0.1:8000",
	// "acme.last_error".
	Check string
	// Detail is what was found and, unless Status is OK, the fix in a sentence.
	Detail string
	More   []string
}

// String formats r as printed, without a trailing newline.
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-4s  %-24s  %s", r.Status, r.Check, r.Detail)
	for _, m := range r.More {
		b.WriteString("\n      " + m)
	}
	return b.String()
}

// Failed reports whether any result is a Fail.
func Failed(results []Result) bool {
	for _, r := range results {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

// Options configure a Doctor.
type Options struct {
	// ConfigFile is the configuration to check. Required.
	ConfigFile string
	// Resolver is the DNS server ("host:port", or "host" for port 53) that resolves the
	// ACME domains; empty means the system resolver.
	Resolver string
	// PublicIP is this host's public address when no interface has it (on EC2 the public
	// and Elastic IPs are NATed); the zero value means not given. ACME domains must
	// resolve to it or to an interface's address.
	PublicIP netip.Addr
	// Timeout bounds each network check; 0 means 5s.
	Timeout time.Duration

	// interfaceAddrs lists this host's addresses; tests replace it.
	interfaceAddrs func() ([]netip.Addr, error)
	// now is the clock for certificate expiry; tests replace it.
	now func() time.Time
}

// Doctor runs the checks of one configuration. Use New.
type Doctor struct {
	opts     Options
	resolver *net.Resolver
}

// New checks opts and returns a Doctor.
func New(opts Options) (*Doctor, error) {
	if opts.ConfigFile == "" {
		return nil, errors.New("doctor: no configuration file")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.interfaceAddrs == nil {
		opts.interfaceAddrs = interfaceAddrs
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	d := &Doctor{opts: opts, resolver: net.DefaultResolver}
	if r := opts.Resolver; r != "" {
		addr := r
		if _, _, err := net.SplitHostPort(r); err != nil {
			addr = net.JoinHostPort(strings.Trim(r, "[]"), "53")
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return nil, fmt.Errorf("doctor: -resolver %q is not host:port", r)
		}
		dialer := &net.Dialer{Timeout: opts.Timeout}
		d.resolver = &net.Resolver{
			PreferGo: true,
			// Every query goes to the given server, whatever /etc/resolv.conf says.
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, addr)
			},
		}
	}
	return d, nil
}

// Run runs every check, writing each line to w (nil means nowhere) as soon as it is
// known, and returns the results. Checks after the configuration's need a configuration
// that at least parses: when it does not, Run stops there.
func (d *Doctor) Run(ctx context.Context, w io.Writer) []Result {
	var results []Result
	emit := func(rs ...Result) {
		for _, r := range rs {
			results = append(results, r)
			if w != nil {
				fmt.Fprintln(w, r)
			}
		}
	}
	cfg, rs := d.checkConfig()
	emit(rs...)
	if cfg == nil {
		return results
	}
	s := d.newSite(cfg)
	emit(d.checkListeners(ctx, s)...)
	for _, name := range s.acmeDomains {
		emit(d.checkDNS(ctx, name))
	}
	for _, ip := range s.acmeIPs {
		emit(d.checkIP(ip))
	}
	if r := d.noDomainHint(s); r != nil {
		emit(*r)
	}
	if cfg.TLS.ACME.Enabled() {
		emit(d.checkDirectory(ctx, s))
	}
	if r := cfg.TLS.ACME.Storage.Redis; r != nil {
		emit(d.checkStorage(ctx, r))
	}
	for _, name := range s.names() {
		emit(d.checkCertificate(s, name))
	}
	for _, t := range cfg.Pool.Targets {
		emit(d.checkTarget(ctx, s, t))
	}
	for i, p := range cfg.Passthrough {
		for _, t := range p.Targets {
			emit(d.checkPassthroughTarget(ctx, i, p, t))
		}
	}
	if cfg.TLS.ACME.Enabled() {
		emit(d.checkLastError(s))
	}
	return results
}

// checkConfig loads the configuration with every check, environment included. When only
// the environment checks fail (a key file unreadable, say), the rest of the checks still
// run on the configuration as parsed.
func (d *Doctor) checkConfig() (*config.Config, []Result) {
	file := d.opts.ConfigFile
	cfg, err := config.Load(file)
	if err == nil {
		rs := []Result{{Status: OK, Check: "config", Detail: file + " is valid"}}
		for _, p := range cfg.Warnings {
			rs = append(rs, Result{Status: Warn, Check: "config", Detail: p.String()})
		}
		return cfg, rs
	}
	var cerr *config.Error
	if !errors.As(err, &cerr) {
		return nil, []Result{{Status: Fail, Check: "config", Detail: fmt.Sprintf("%v: give the file edgeproxy runs with, as -config FILE", err)}}
	}
	r := Result{Status: Fail, Check: "config",
		Detail: fmt.Sprintf("%s has %d problem(s); fix each at the line and column shown (edgeproxy validate -config %s lists them too):", file, len(cerr.Problems), file)}
	for _, p := range cerr.Problems {
		r.More = append(r.More, p.String())
	}
	cfg, err = config.LoadSyntax(file)
	if err != nil {
		r.More = append(r.More, "(the other checks need a configuration that parses; run doctor again once it does)")
		return nil, []Result{r}
	}
	// Keep the files that do load (listed above are those that do not), for the checks
	// of certificates and CAs.
	_ = cfg.CheckEnvironment()
	return cfg, []Result{r}
}

// interfaceAddrs returns the addresses of this host's interfaces.
func interfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// roughly formats a duration in days, hours or minutes, for people.
func roughly(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", int(d.Hours()))
	case d >= 2*time.Minute:
		return fmt.Sprintf("%d minutes", int(d.Minutes()))
	default:
		return d.Round(time.Second).String()
	}
}
