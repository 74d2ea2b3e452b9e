package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// applyDerivedDefaults fills in defaults that depend on other keys.
func (c *Config) applyDerivedDefaults() {
	for _, p := range c.pools() {
		hc := &p.HealthCheck
		if !c.IsSet(c.poolPath(p.Name) + ".health_check.timeout") {
			hc.Timeout = min(5*time.Second, hc.Interval)
		}
	}
	c.applyACMEDefaults()
}

// checker collects problems, each placed at the key it is about.
type checker struct {
	c        *Config
	problems []Problem
	// failed are key paths that did not decode; checks about them, or about a key that
	// contains them, are skipped, so one mistake is reported once, not once per consequence.
	failed []string
}

func (k *checker) errorf(path, format string, args ...any) {
	for _, f := range k.failed {
		if related(path, f) {
			return
		}
	}
	k.problems = append(k.problems, Problem{File: k.c.File, Pos: k.c.PosOf(path), Message: fmt.Sprintf(format, args...)})
}

func (k *checker) warnf(path, format string, args ...any) {
	k.problems = append(k.problems, Problem{File: k.c.File, Pos: k.c.PosOf(path), Message: fmt.Sprintf(format, args...), Warning: true})
}

// related reports whether one key path contains the other (or they are equal).
func related(a, b string) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	return strings.HasPrefix(b, a) && (len(a) == len(b) || b[len(a)] == '.' || b[len(a)] == '[')
}

// check runs every check that needs only the configuration itself, skipping keys in failed.
func (c *Config) check(failed []string) []Problem {
	k := &checker{c: c, failed: failed}
	k.listen()
	k.tls()
	k.acme()
	k.storage()
	for _, p := range c.pools() {
		k.pool(c.poolPath(p.Name), p.Pool)
	}
	c.Resolved.Pools = c.pools()
	k.routes()
	k.passthrough()
	k.limits()
	k.forwarding()
	if h := c.Headers.HSTS; h != "" && !strings.HasPrefix(strings.TrimSpace(h), "max-age=") {
		k.errorf("headers.hsts", "headers.hsts must start with max-age=, e.g. \"max-age=31536000\"")
	}
	if n := c.Headers.MixedContentSample; n < 1 || n > 1000000 {
		k.errorf("headers.mixed_content_sample", "headers.mixed_content_sample must be 1..1000000 (one HTML response in N is scanned), got %d", n)
	}
	switch f := c.Log.Format; f {
	case "text":
		c.Resolved.LogFormat = LogText
	case "json":
		c.Resolved.LogFormat = LogJSON
	default:
		k.errorf("log.format", "log.format must be text or json, got %q", f)
	}
	return k.problems
}

func (k *checker) listen() {
	l := k.c.Listen
	switch l.HTTPMode {
	case "redirect":
		k.c.Resolved.HTTPMode = HTTPRedirect
	case "proxy":
		k.c.Resolved.HTTPMode = HTTPProxy
	default:
		k.errorf("listen.http_mode", "listen.http_mode must be redirect or proxy, got %q", l.HTTPMode)
	}
	if l.H2C && (l.HTTP == "" || l.HTTPMode != "proxy") {
		k.errorf("listen.h2c", "listen.h2c needs listen.http with http_mode: proxy: HTTP/2 in clear is served only where plain HTTP is proxied")
	}
	if l.HTTPS == "" && (l.HTTP == "" || l.HTTPMode != "proxy") {
		k.errorf("listen.https", "listen.https is empty: nothing would serve (an empty https listener is only allowed with listen.http and http_mode: proxy)")
	}
	for _, a := range []struct{ path, addr string }{
		{"listen.https", l.HTTPS}, {"listen.http", l.HTTP}, {"listen.metrics", l.Metrics},
	} {
		if a.addr == "" {
			continue
		}
		if err := checkListenAddr(a.addr); err != nil {
			k.errorf(a.path, "%s: %v", a.path, err)
		}
	}
	if l.Metrics != "" && checkListenAddr(l.Metrics) == nil && !isLoopbackListen(l.Metrics) {
		k.warnf("listen.metrics", "listen.metrics %q is not a loopback address: /metrics and /targets would be open to the network", l.Metrics)
	}
	if l.HTTPS != "" && l.HTTPS == l.HTTP || l.Metrics != "" && (l.Metrics == l.HTTPS || l.Metrics == l.HTTP) {
		k.errorf("listen", "listen addresses must differ")
	}
}

// checkListenAddr accepts "host:port" and ":port" with a numeric port.
func checkListenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (%v)", addr, unwrapAddrErr(err))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number 0-65535", addr, port)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q: invalid host %q", addr, host)
	}
	return nil
}

func isLoopbackListen(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func unwrapAddrErr(err error) string {
	if ae, ok := err.(*net.AddrError); ok {
		return ae.Err
	}
	return err.Error()
}

func (k *checker) tls() {
	t := k.c.TLS
	switch t.MinVersion {
	case "1.2":
		k.c.Resolved.MinVersion = tls.VersionTLS12
	case "1.3":
		k.c.Resolved.MinVersion = tls.VersionTLS13
	default:
		k.errorf("tls.min_version", "tls.min_version must be \"1.2\" or \"1.3\", got %q", t.MinVersion)
	}
	for i, cf := range t.Certificates {
		path := fmt.Sprintf("tls.certificates[%d]", i)
		if cf.Cert == "" {
			k.errorf(path, "%s: cert is required", path)
		}
		if cf.Key == "" {
			k.errorf(path, "%s: key is required", path)
		}
	}
	if k.c.Listen.HTTPS != "" && len(t.Certificates) == 0 && !t.SelfSigned && !t.ACME.Enabled() && !k.c.IsSet("tls.acme") {
		k.errorf("tls", "no certificate source: set tls.certificates, tls.self_signed or tls.acme")
	}
}

// pool checks the pool block at path (pool, or pools.NAME).
func (k *checker) pool(path string, p *Pool) {
	k.balanceName(path, p)
	if len(p.Targets) == 0 {
		k.errorf(path+".targets", "%s.targets is empty: list at least one backend as host:port", path)
	}
	seen := map[string]int{}
	for i, t := range p.Targets {
		tpath := fmt.Sprintf("%s.targets[%d]", path, i)
		if err := checkTargetAddr(t); err != nil {
			k.errorf(tpath, "%s.targets: %v", path, err)
			continue
		}
		if j, dup := seen[t]; dup {
			k.errorf(tpath, "%s.targets: %q is listed twice (also at index %d)", path, t, j)
		}
		seen[t] = i
	}
	hc := p.HealthCheck
	if !strings.HasPrefix(hc.Path, "/") {
		k.errorf(path+".health_check.path", "%s.health_check.path must start with /, got %q", path, hc.Path)
	}
	if strings.ContainsAny(hc.Host, " /\t") {
		k.errorf(path+".health_check.host", "%s.health_check.host %q is not a host name", path, hc.Host)
	}
	if hc.Interval < 100*time.Millisecond {
		k.errorf(path+".health_check.interval", "%s.health_check.interval must be at least 100ms, got %v", path, hc.Interval)
	}
	if hc.Timeout <= 0 {
		k.errorf(path+".health_check.timeout", "%s.health_check.timeout must be positive, got %v", path, hc.Timeout)
	} else if hc.Timeout > hc.Interval {
		k.errorf(path+".health_check.timeout", "%s.health_check.timeout %v exceeds interval %v", path, hc.Timeout, hc.Interval)
	}
	for _, th := range []struct {
		path string
		n    int
	}{{path + ".health_check.healthy_threshold", hc.HealthyThreshold}, {path + ".health_check.unhealthy_threshold", hc.UnhealthyThreshold}} {
		if th.n < 1 || th.n > 10 {
			k.errorf(th.path, "%s must be 1..10, got %d", th.path, th.n)
		}
	}
	k.positive(path+".connect_timeout", p.ConnectTimeout)
	k.positive(path+".response_header_timeout", p.ResponseHeaderTimeout)
	if p.Passive.ConsecutiveFailures < 0 {
		k.errorf(path+".passive.consecutive_failures", "%s.passive.consecutive_failures must be 0 (off) or more, got %d", path, p.Passive.ConsecutiveFailures)
	}
	if p.Passive.ConsecutiveFailures > 0 {
		k.positive(path+".passive.ejection_time", p.Passive.EjectionTime)
	}
	if p.Retries < 0 || p.Retries > 3 {
		k.errorf(path+".retries", "%s.retries must be 0..3, got %d", path, p.Retries)
	}
	if p.TLS != nil && p.TLS.InsecureSkipVerify {
		k.warnf(path+".tls.insecure_skip_verify", "%s.tls.insecure_skip_verify is on: the edge does not verify its targets' certificates, so anyone on the path can impersonate them", path)
	}
	if p.DeregistrationDelay < 0 {
		k.errorf(path+".deregistration_delay", "%s.deregistration_delay must not be negative, got %v", path, p.DeregistrationDelay)
	}
}

// checkTargetAddr accepts "host:port" with a port 1-65535 and a host that is an IP or a
// DNS name.
func checkTargetAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (%v)", addr, unwrapAddrErr(err))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number 1-65535", addr, port)
	}
	if host == "" {
		return fmt.Errorf("%q: missing host", addr)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !validDNSName(host) {
		return fmt.Errorf("%q: %q is neither an IP address nor a DNS name", addr, host)
	}
	return nil
}

func validDNSName(name string) bool {
	if len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

func (k *checker) limits() {
	l := k.c.Limits
	k.positive("limits.read_header_timeout", l.ReadHeaderTimeout)
	k.positive("limits.idle_timeout", l.IdleTimeout)
	if l.MaxHeaderBytes < 4096 || l.MaxHeaderBytes > 1<<20 {
		k.errorf("limits.max_header_bytes", "limits.max_header_bytes must be 4096..1048576, got %d", l.MaxHeaderBytes)
	}
	if l.MaxConnections < 1 {
		k.errorf("limits.max_connections", "limits.max_connections must be at least 1, got %d", l.MaxConnections)
	}
	if l.MaxBodyBytes < 0 {
		k.errorf("limits.max_body_bytes", "limits.max_body_bytes must be 0 (unlimited) or positive, got %d", l.MaxBodyBytes)
	}
	if l.ShutdownTimeout < 0 {
		k.errorf("limits.shutdown_timeout", "limits.shutdown_timeout must not be negative, got %v", l.ShutdownTimeout)
	}
}

func (k *checker) positive(path string, d time.Duration) {
	if d <= 0 {
		k.errorf(path, "%s must be positive, got %v", path, d)
	}
}

func (k *checker) forwarding() {
	k.c.Resolved.TrustedProxies = nil
	for i, s := range k.c.Forwarding.TrustedProxies {
		p, err := parsePrefix(s)
		if err != nil {
			k.errorf(fmt.Sprintf("forwarding.trusted_proxies[%d]", i), "forwarding.trusted_proxies: %v", err)
			continue
		}
		k.c.Resolved.TrustedProxies = append(k.c.Resolved.TrustedProxies, p)
	}
}

// parsePrefix parses a CIDR, or a single IP as the prefix holding only that address.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", s)
		}
		return p.Masked(), nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	return netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()), nil
}

// CheckEnvironment runs the checks that look at this machine: certificate files exist,
// parse, and match their keys; CA files hold certificates. What loads is kept in
// c.Resolved (the certificates, the CA pools), so the edge does not read the files again;
// Resolved.FilesLoaded is set when everything did. It returns errors and warnings; Load
// treats any error as fatal.
func (c *Config) CheckEnvironment() []Problem {
	k := &checker{c: c}
	r := &c.Resolved
	r.FilesLoaded, r.Certificates, r.ACMERoots, r.UpstreamRoots, r.PoolRoots = false, nil, nil, nil, nil
	unset := k.unsetPathVars()
	for _, p := range c.pools() {
		if t := p.TLS; t != nil && t.CA != "" {
			path := c.poolPath(p.Name) + ".tls.ca"
			roots, err := loadCARoots(t.CA)
			if err != nil {
				k.errorf(path, "%s: %v", path, err)
			}
			if r.PoolRoots == nil {
				r.PoolRoots = map[string]*x509.CertPool{}
			}
			r.PoolRoots[p.Name] = roots
		}
	}
	r.UpstreamRoots = r.PoolRoots[SinglePool]
	for i, cf := range c.TLS.Certificates {
		path := fmt.Sprintf("tls.certificates[%d]", i)
		if cf.Cert == "" || cf.Key == "" {
			continue // reported by check
		}
		if unset[path+".cert"] || unset[path+".key"] {
			continue // reported by unsetPathVars
		}
		pair, err := loadCertificate(cf)
		if err != nil {
			k.errorf(path+".cert", "%s: %v", path, err)
			continue
		}
		r.Certificates = append(r.Certificates, LoadedCertificate{Files: cf, Certificate: pair})
	}
	k.acmeEnvironment(unset)
	k.storageEnvironment(unset)
	k.passthroughEnvironment()
	k.routeHostsEnvironment()
	sortProblems(k.problems)
	var errs []Problem
	for _, p := range k.problems {
		if !p.Warning {
			errs = append(errs, p)
		} else {
			c.Warnings = append(c.Warnings, p)
		}
	}
	r.FilesLoaded = len(errs) == 0
	return errs
}

// loadCertificate reads a certificate chain and key, checks that they belong together and
// parses the leaf. The error says which file is at fault.
func loadCertificate(cf CertificateFiles) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(cf.Cert)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cannot read cert: %v", unwrapPathErr(err))
	}
	keyPEM, err := os.ReadFile(cf.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cannot read key: %v", unwrapPathErr(err))
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return tls.Certificate{}, fmt.Errorf("key %s does not match cert %s", cf.Key, cf.Cert)
		}
		return tls.Certificate{}, fmt.Errorf("cert %s / key %s: %v", cf.Cert, cf.Key, strings.TrimPrefix(err.Error(), "tls: "))
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("cert %s: %v", cf.Cert, err)
		}
	}
	return pair, nil
}

func unwrapPathErr(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Path + ": " + pe.Err.Error()
	}
	return err.Error()
}
