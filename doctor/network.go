package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"edgeproxy/certs"
	"edgeproxy/config"
	"edgeproxy/health"
)

// checkListeners checks the metrics listener first: when a running edgeproxy answers
// there, that is evidence for the other listeners in use.
func (d *Doctor) checkListeners(ctx context.Context, s *site) []Result {
	l := s.cfg.Listen
	var out []Result
	for _, key := range []struct{ name, addr string }{
		{"metrics", l.Metrics}, {"https", l.HTTPS}, {"http", l.HTTP},
	} {
		if key.addr != "" {
			out = append(out, d.checkListener(ctx, s, key.name, key.addr))
		}
	}
	return out
}

// checkListener says whether addr can be bound, or is bound by this edgeproxy. It first
// dials the address: a listener there means the port is in use, and a probe (healthz,
// TLS certificate, challenge responder) tells whether it is edgeproxy's. Binding comes
// second, so that a user who may not bind a low port still learns whether it is in use.
func (d *Doctor) checkListener(ctx context.Context, s *site, key, addr string) Result {
	r := Result{Check: "listen." + key}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return Result{Status: Fail, Check: r.Check, Detail: fmt.Sprintf("%q is not host:port: fix listen.%s", addr, key)}
	}
	if port == "0" {
		return Result{Status: OK, Check: r.Check, Detail: addr + ": port 0 is chosen at start-up"}
	}
	dial := dialAddr(host, port)
	c, err := net.DialTimeout("tcp", dial, d.opts.Timeout)
	if err == nil {
		c.Close()
		if evidence := d.edgeEvidence(ctx, s, key, dial); evidence != "" {
			if key == "metrics" {
				s.edgeMetrics = dial
			}
			return Result{Status: OK, Check: r.Check, Detail: addr + " is already bound by this edgeproxy (" + evidence + ")"}
		}
		return Result{Status: Fail, Check: r.Check, Detail: fmt.Sprintf("%s is in use by another program (it does not answer as this edgeproxy): find it with `ss -ltnp 'sport = :%s'` and stop it, or change listen.%s", addr, port, key)}
	}
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		ln.Close()
		return Result{Status: OK, Check: r.Check, Detail: addr + " can be bound"}
	}
	switch {
	case errors.Is(err, syscall.EACCES):
		return Result{Status: Warn, Check: r.Check, Detail: fmt.Sprintf("nothing listens on %s, and this user may not bind it: ports below 1024 need CAP_NET_BIND_SERVICE, which the systemd unit grants (run doctor as root to be sure; or `setcap cap_net_bind_service=+ep` the binary)", addr)}
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return Result{Status: Fail, Check: r.Check, Detail: fmt.Sprintf("%s: no interface of this host has %s: listen on an address this host has, or \":%s\" for all (on EC2 the public IP is never on an interface: use \":%s\")", addr, host, port, port)}
	case errors.Is(err, syscall.EADDRINUSE):
		return Result{Status: Fail, Check: r.Check, Detail: fmt.Sprintf("%s is in use by another program: find it with `ss -ltnp 'sport = :%s'` and stop it, or change listen.%s", addr, port, key)}
	}
	return Result{Status: Fail, Check: r.Check, Detail: fmt.Sprintf("cannot bind %s: %v", addr, err)}
}

// dialAddr is where to reach a listener on host:port from this host: a wildcard listener
// ("", 0.0.0.0, ::) answers on 127.0.0.1 (Go's wildcard listeners take IPv4 too).
func dialAddr(host, port string) string {
	if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// edgeEvidence returns how the listener at dial shows it is this edgeproxy's, or "".
func (d *Doctor) edgeEvidence(ctx context.Context, s *site, key, dial string) string {
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	client := &http.Client{
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	get := func(url, host string) (*http.Response, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, "", err
		}
		if host != "" {
			req.Host = host
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return resp, string(body), nil
	}
	switch key {
	case "metrics":
		resp, body, err := get("http://"+dial+"/healthz", "")
		if err != nil || resp.StatusCode != http.StatusOK || body != "ok\n" {
			return ""
		}
		resp, body, err = get("http://"+dial+"/targets", "")
		var targets []health.Status
		if err != nil || resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &targets) != nil {
			return ""
		}
		return "its /healthz and /targets answer"
	case "https":
		leaf, err := d.peerLeaf(ctx, dial, s.siteName())
		if err == nil && s.ours(leaf) {
			return "a TLS handshake there shows its certificate"
		}
	case "http":
		// The challenge responder and the redirect answer in words of their own.
		host := s.siteName()
		if host == "" {
			host = "localhost"
		}
		if resp, body, err := get("http://"+dial+"/.well-known/acme-challenge/edgeproxy-doctor", host); err == nil {
			if strings.Contains(body, "ACME order in progress for") || strings.Contains(body, "not an ACME domain of this server") ||
				resp.StatusCode == http.StatusPermanentRedirect && body == "308 Permanent Redirect\n" {
				return "it answers as edgeproxy's plain-HTTP listener"
			}
		}
	}
	if s.edgeMetrics != "" {
		return "presumably: the edgeproxy whose metrics listener answers on " + s.edgeMetrics + " holds it"
	}
	return ""
}

// peerLeaf returns the certificate the TLS server at addr presents for serverName.
func (d *Doctor) peerLeaf(ctx context.Context, addr, serverName string) (*x509.Certificate, error) {
	dialer := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: d.opts.Timeout},
		// Not verified here: the certificate is compared with the configured ones.
		Config: &tls.Config{ServerName: serverName, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
	}
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	certs := c.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	return certs[0], nil
}

// checkDNS says whether name resolves to this host: to an interface's address, or to
// Options.PublicIP.
func (d *Doctor) checkDNS(ctx context.Context, name string) Result {
	r := Result{Check: "dns:" + name}
	via := ""
	if d.opts.Resolver != "" {
		via = " (via " + d.opts.Resolver + ")"
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	ips, err := d.resolver.LookupNetIP(ctx, "ip", name)
	if err != nil || len(ips) == 0 {
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s does not resolve%s: %v. Create an A record (and AAAA if this host has IPv6) pointing at this host's public address; the CA must reach it. No domain yet? tls.acme.ip_addresses gets a certificate for the box's IP address", name, via, lookupErr(err))
		return r
	}
	local, err := d.opts.interfaceAddrs()
	if err != nil {
		r.Status = Warn
		r.Detail = fmt.Sprintf("%s → %s%s, but this host's addresses are unknown (%v)", name, joinAddrs(ips), via, err)
		return r
	}
	return classifyDNS(name, via, ips, local, d.opts.PublicIP)
}

// checkIP checks that an address of tls.acme.ip_addresses is this host's: the CA
// validates it by connecting to it.
func (d *Doctor) checkIP(ip netip.Addr) Result {
	r := Result{Check: "ip:" + ip.String()}
	local, err := d.opts.interfaceAddrs()
	switch {
	case ip.IsLoopback() || slices.Contains(local, ip) || ip == d.opts.PublicIP:
		r.Status = OK
		r.Detail = fmt.Sprintf("%s is this host's: the CA validates it on port 443 (TLS-ALPN-01) or 80 (HTTP-01)", ip)
	case d.opts.PublicIP.IsValid():
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s is not this host's public IP %s (-public-ip) nor an interface's: list this box's own address in tls.acme.ip_addresses", ip, d.opts.PublicIP)
	case err != nil:
		r.Status = Warn
		r.Detail = fmt.Sprintf("this host's addresses are unknown (%v): make sure %s is this box's public IP", err, ip)
	default:
		r.Status = Warn
		r.Detail = fmt.Sprintf("no interface of this host has %s. On EC2 the public (Elastic) IP is NATed and never on an interface, so this is fine if %s is this instance's (say so with -public-ip)", ip, ip)
	}
	return r
}

// noDomainHint is a line for a site served to the network only with the self-signed
// certificate (or none): without a domain name yet, a trusted certificate for the box's
// IP address is possible; nil when certificates are configured, or HTTPS is on loopback
// (local use).
func (d *Doctor) noDomainHint(s *site) *Result {
	t := s.cfg.TLS
	if s.cfg.Listen.HTTPS == "" || t.ACME.Enabled() || len(t.Certificates) > 0 {
		return nil
	}
	if host, _, err := net.SplitHostPort(s.cfg.Listen.HTTPS); err == nil {
		if ip, err := netip.ParseAddr(host); host == "localhost" || err == nil && ip.IsLoopback() {
			return nil
		}
	}
	ip := "PUBLIC_IP"
	if d.opts.PublicIP.IsValid() {
		ip = d.opts.PublicIP.String()
	} else if local, err := d.opts.interfaceAddrs(); err == nil {
		for _, a := range local {
			if a.IsGlobalUnicast() && !a.IsPrivate() {
				ip = a.String()
				break
			}
		}
	}
	return &Result{Status: Warn, Check: "tls",
		Detail: fmt.Sprintf("only the self-signed certificate answers: browsers warn on every visit. No domain name yet? Let's Encrypt issues trusted six-day certificates for IP addresses, renewed automatically: tls.acme: {ip_addresses: [%s], profile: shortlived} (with listen.https on port 443; see docs/acme.md)", ip)}
}

// classifyDNS judges the addresses name resolves to against this host's: its interfaces'
// (local) and its public IP, if given.
func classifyDNS(name, via string, ips, local []netip.Addr, publicIP netip.Addr) Result {
	r := Result{Check: "dns:" + name}
	var here, elsewhere []netip.Addr
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.IsLoopback() || slices.Contains(local, ip) || ip == publicIP {
			here = append(here, ip)
		} else {
			elsewhere = append(elsewhere, ip)
		}
	}
	public := publicIP.IsValid()
	switch {
	case len(elsewhere) == 0:
		r.Status = OK
		r.Detail = fmt.Sprintf("%s → %s%s: this host", name, joinAddrs(ips), via)
	case len(here) > 0:
		r.Status = Warn
		r.Detail = fmt.Sprintf("%s → %s%s: %s is this host, %s is not. The CA may validate against any of them: remove the records that point elsewhere", name, joinAddrs(ips), via, joinAddrs(here), joinAddrs(elsewhere))
	case public:
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s → %s%s, not this host's public IP %s (-public-ip) nor an interface's: DNS points elsewhere. Point the A record at %s, or run edgeproxy on the box it points at", name, joinAddrs(ips), via, publicIP, publicIP)
	default:
		r.Status = Warn
		r.Detail = fmt.Sprintf("%s → %s%s, which no interface of this host has. On EC2 the public IP is NATed and never on an interface, so this is fine if %s is this instance's public or Elastic IP (say so with -public-ip); otherwise DNS points elsewhere: fix the A record", name, joinAddrs(ips), via, joinAddrs(elsewhere))
	}
	return r
}

func joinAddrs(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.Unmap().String()
	}
	return strings.Join(s, ", ")
}

func lookupErr(err error) string {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		switch {
		case dnsErr.IsNotFound:
			return "no such name"
		case dnsErr.IsTimeout:
			return "the resolver did not answer in time"
		}
		return dnsErr.Err
	}
	if err == nil {
		return "no address"
	}
	return err.Error()
}

// checkDirectory says whether the ACME directory answers, trusting tls.acme.ca_roots
// when set, as the edge does.
func (d *Doctor) checkDirectory(ctx context.Context, s *site) Result {
	a := s.cfg.TLS.ACME
	r := Result{Check: "acme.directory"}
	if a.CARoots != "" && s.cfg.Resolved.ACMERoots == nil {
		r.Status = Fail
		r.Detail = fmt.Sprintf("tls.acme.ca_roots %s did not load (the config check says why)", a.CARoots)
		return r
	}
	client := ACMEClient(s.cfg.Resolved.ACMERoots)
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 2*d.opts.Timeout)
	defer cancel()
	dir, err := certs.FetchDirectory(ctx, a.Directory, client)
	var unknown x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var urlErr *url.Error
	switch {
	case errors.As(err, &unknown) || errors.As(err, &hostErr):
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s: its certificate is not trusted (%v): for a private CA or Pebble, set tls.acme.ca_roots to its root", a.Directory, unwrapURLErr(err))
		return r
	case errors.As(err, &urlErr):
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s does not answer (%v): let this host make outbound HTTPS (port 443) connections (security group egress, firewall, HTTPS_PROXY), and check the URL", a.Directory, unwrapURLErr(err))
		return r
	case err != nil:
		r.Status = Fail
		r.Detail = fmt.Sprintf("%v: check tls.acme.directory (Let's Encrypt: %s)", err, config.LetsEncryptURL)
		return r
	}
	if err := dir.CheckProfile(a.Profile); err != nil {
		r.Status = Fail
		r.Detail = "tls.acme.profile: " + err.Error()
		return r
	}
	r.Status = OK
	r.Detail = a.Directory + " answers; " + describeDirectory(dir)
	return r
}

// describeDirectory says what the CA offers of ARI and profiles.
func describeDirectory(dir *certs.Directory) string {
	var parts []string
	if dir.RenewalInfo != "" {
		parts = append(parts, "renewal information (ARI): renewals follow the CA's windows")
	} else {
		parts = append(parts, "no renewal information (ARI): renewals when a third of the lifetime remains")
	}
	if names := dir.ProfileNames(); len(names) > 0 {
		parts = append(parts, "profiles: "+strings.Join(names, ", "))
	}
	return strings.Join(parts, "; ")
}

// ACMEClient is an HTTP client for the CA of a (trusting tls.acme.ca_roots), as the
// edge's ACME client: it honours HTTPS_PROXY too. `validate` and doctor use it.
func ACMEClient(roots *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone() // the edge's ACME client honours HTTPS_PROXY too
	if roots != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr}
}

// CheckACMEProfile asks the CA of cfg whether it offers tls.acme.profile, for `edgeproxy
// validate`: nil when no profile is set or the CA offers it; an error Problem, listing the
// CA's profiles, when it does not; a warning Problem when the CA cannot be asked.
func CheckACMEProfile(ctx context.Context, cfg *config.Config) *config.Problem {
	a := cfg.TLS.ACME
	if !a.Enabled() || a.Profile == "" {
		return nil
	}
	p := &config.Problem{File: cfg.File, Pos: cfg.PosOf("tls.acme.profile")}
	client := ACMEClient(cfg.Resolved.ACMERoots)
	defer client.CloseIdleConnections()
	dir, err := certs.FetchDirectory(ctx, a.Directory, client)
	if err == nil {
		if err := dir.CheckProfile(a.Profile); err != nil {
			p.Message = "tls.acme.profile: " + err.Error()
			return p
		}
		return nil
	}
	p.Warning = true
	p.Message = fmt.Sprintf("tls.acme.profile %q not checked: cannot read %s (%v); `edgeproxy doctor` says why", a.Profile, a.Directory, unwrapURLErr(err))
	return p
}

func unwrapURLErr(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

// checkTarget sends one health check to target as the edge would.
func (d *Doctor) checkTarget(ctx context.Context, s *site, target string) Result {
	hc := s.cfg.Pool.HealthCheck
	r := Result{Check: "target:" + target}
	opts := health.Options{Path: hc.Path, Host: hc.Host, Timeout: min(hc.Timeout, d.opts.Timeout), Matcher: hc.Matcher}
	if t := s.cfg.Pool.TLS; t != nil {
		conf := &tls.Config{ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
		if t.CA != "" {
			if s.cfg.Resolved.UpstreamRoots == nil {
				r.Status = Fail
				r.Detail = fmt.Sprintf("pool.tls.ca %s did not load (the config check says why)", t.CA)
				return r
			}
			conf.RootCAs = s.cfg.Resolved.UpstreamRoots
		}
		opts.TLSConfig = conf
	}
	host := hc.Host
	if host == "" {
		host = target
	}
	res := health.CheckOnce(ctx, opts, target)
	req := fmt.Sprintf("GET %s (Host: %s)", hc.Path, host)
	switch {
	case res.Pass:
		r.Status = OK
		r.Detail = fmt.Sprintf("%s answers %d", req, res.Status)
	case res.Status == http.StatusBadRequest:
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s answers 400: Django's ALLOWED_HOSTS probably rejects Host %q. ", req, host)
		switch name := s.siteName(); {
		case hc.Host != "":
			r.Detail += fmt.Sprintf("Add %s to ALLOWED_HOSTS, or set pool.health_check.host to a name it lists", hc.Host)
		case name != "":
			r.Detail += fmt.Sprintf("Set pool.health_check.host: %s (the site's name, which ALLOWED_HOSTS lists) — an ALB target group's health check has the same trap", name)
		default:
			r.Detail += "Set pool.health_check.host to the site's name, one that ALLOWED_HOSTS lists"
		}
	case res.Status != 0:
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s: %s: fix the page, or point pool.health_check.path at one that answers 200 (Django: /admin/login/), or widen pool.health_check.matcher", req, res.Detail)
	case res.Reason == health.ReasonTimeout:
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s: %s: is the backend overloaded, or is the address wrong?", req, res.Detail)
	case strings.Contains(res.Detail, "connection refused"):
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s: connection refused: nothing listens on %s; start the backend there (gunicorn --bind %s) or fix pool.targets", req, target, target)
	default:
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s: %s", req, res.Detail)
	}
	return r
}

// checkPassthroughTarget says whether a passthrough target speaks TLS for its entry's
// names: the edge hands it the client's ClientHello as is, so the target must terminate
// TLS itself, with a certificate for each name (the edge's health check only connects).
func (d *Doctor) checkPassthroughTarget(ctx context.Context, entry int, p config.Passthrough, target string) Result {
	r := Result{Check: "passthrough:" + target}
	path := fmt.Sprintf("passthrough[%d].targets", entry)
	if len(p.ServerNames) == 0 {
		r.Status, r.Detail = Fail, fmt.Sprintf("passthrough[%d] has no server_names", entry)
		return r
	}
	var detail []string
	for _, name := range p.ServerNames {
		leaf, err := d.peerLeaf(ctx, target, name)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			r.Status, r.Detail = Fail, fmt.Sprintf("connection refused: nothing listens on %s; start the TLS backend there or fix %s", target, path)
			return r
		case err != nil && isNotTLS(err):
			r.Status, r.Detail = Fail, fmt.Sprintf("a TLS handshake for %s: %v: the target does not speak TLS; a passthrough target terminates TLS itself (a plain HTTP backend belongs in pool.targets)", name, err)
			return r
		case err != nil:
			r.Status, r.Detail = Fail, fmt.Sprintf("a TLS handshake for %s: %v", name, err)
			return r
		}
		if err := leaf.VerifyHostname(name); err != nil {
			r.Status = Fail
			r.Detail = fmt.Sprintf("its certificate does not cover %s (covers %s): clients asking for %s will refuse it", name, strings.Join(leaf.DNSNames, ", "), name)
			return r
		}
		left := leaf.NotAfter.Sub(d.opts.now())
		if left <= 0 {
			r.Status, r.Detail = Fail, fmt.Sprintf("its certificate for %s EXPIRED %s ago (%s)", name, roughly(-left), leaf.NotAfter.Format(time.RFC3339))
			return r
		}
		detail = append(detail, fmt.Sprintf("%s (valid %s more)", name, roughly(left)))
	}
	r.Status = OK
	r.Detail = "speaks TLS with a certificate for " + strings.Join(detail, ", ")
	return r
}

// isNotTLS tells a handshake that failed because the peer answered in something other
// than TLS (plain HTTP, most often).
func isNotTLS(err error) bool {
	var rh tls.RecordHeaderError
	return errors.As(err, &rh)
}
