// Package health runs active health checks against each target with the semantics of an
// AWS ALB target group: a GET of a path with a given Host header, an interval, a timeout,
// healthy and unhealthy thresholds and a status matcher, redirects not followed.
//
// The package probes and judges; it does not keep the targets. A Target is one target's
// health (its threshold state machine and last check) and has exactly one owner: the
// pool package holds one per pooled target, next to that target's balancing state, and
// a Checker runs the probe loop of each Target it is given, feeding results into it and
// reporting transitions through Hooks and the Observer. The checker never selects targets
// or proxies requests.
package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Matcher decides which status codes pass; config.Matcher implements it.
type Matcher interface {
	Match(code int) bool
	String() string
}

// Observer receives every check result and every state change, for metrics. A nil Observer
// is valid and receives nothing.
type Observer interface {
	// HealthCheck is called after each check; reason is ReasonNone for a pass.
	HealthCheck(target string, pass bool, reason string)
	// TargetHealthy is called at start (false) and on each change of healthy/unhealthy.
	TargetHealthy(target string, healthy bool)
}

// Options configure a Checker. Zero durations and thresholds are not valid; the config
// package supplies the defaults.
type Options struct {
	Path string
	// Host is the Host header of each check; empty means the target's address.
	Host               string
	Interval           time.Duration
	Timeout            time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
	Matcher            Matcher
	// Observer receives results for metrics; nil means none.
	Observer Observer
	// Logger receives transitions; nil means no logging.
	Logger *slog.Logger
	// TLSConfig, when set, makes the checks HTTPS with it, for targets that speak TLS.
	TLSConfig *tls.Config
	// Transport sends the checks; nil means a transport without keep-alive, so that every
	// check opens a connection as an ALB's does.
	Transport http.RoundTripper
	// TCPConnect makes each check a TCP connect, as an NLB's TCP health check: it passes
	// when the target accepts a connection within Timeout, which is then closed. Path,
	// Host, Matcher, TLSConfig and Transport are not used. False means HTTP(S) checks.
	TCPConnect bool
}

// Status is one target's health as shown by /targets.
type Status struct {
	Address             string    `json:"address"`
	State               State     `json:"state"`
	LastCheck           time.Time `json:"last_check"`
	LastStatus          int       `json:"last_status"`
	Reason              string    `json:"reason"`
	Detail              string    `json:"detail,omitempty"`
	ConsecutivePasses   int       `json:"consecutive_passes"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
}

// Checker probes targets with one set of options, one goroutine per target (see Run). It
// keeps no target state of its own: that is each Target's. Use New.
type Checker struct {
	opts atomic.Pointer[Options] // replaced whole by Reconfigure
	log  *slog.Logger
}

// Target is one target's health: the threshold state machine and the last check, as
// /targets shows them. It is the only copy of that state; its owner (a pool) keeps it for
// as long as the target is configured, across reloads. Use NewTarget.
type Target struct {
	healthy atomic.Bool // state == Healthy, for readers that take no lock

	// mu guards m and status.
	mu     sync.Mutex
	m      machine
	status Status
}

// NewTarget returns the health of a new target at addr, in state Initial.
func NewTarget(addr string) *Target {
	return &Target{m: machine{state: Initial}, status: Status{Address: addr, State: Initial, Reason: ReasonNone}}
}

// Healthy reports whether the target is in state Healthy.
func (t *Target) Healthy() bool { return t.healthy.Load() }

// Status returns the target's state and last check.
func (t *Target) Status() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status
}

// Set puts the target in state s without a check, keeping its counts and last check:
// Healthy for a target of a pool without active checks, Draining for one a reload
// removed.
func (t *Target) Set(s State) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m.state = s
	t.status.State = s
	t.healthy.Store(s == Healthy)
}

// ResetPasses restarts the count of passes in a row, without changing the state: after
// a passive ejection, only checks from then on count as evidence of health.
func (t *Target) ResetPasses() {
	t.mu.Lock()
	t.m.passes = 0
	t.status.ConsecutivePasses = 0
	t.mu.Unlock()
}

// record applies one probe result and returns the state before, the machine after and
// whether the state changed.
func (t *Target) record(r result, opts *Options) (prev State, m machine, changed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	prev = t.m.state
	changed = t.m.observe(r.pass, opts.HealthyThreshold, opts.UnhealthyThreshold)
	m = t.m
	t.status = Status{
		Address: t.status.Address, State: m.state, LastCheck: time.Now().UTC(), LastStatus: r.status,
		Reason: r.reason, Detail: r.detail, ConsecutivePasses: m.passes, ConsecutiveFailures: m.fails,
	}
	t.healthy.Store(m.state == Healthy)
	return prev, m, changed
}

// Hooks tell the owner of a Target what its checks found. Nil hooks are not called.
type Hooks struct {
	// OnChange is called, from the target's check goroutine, whenever the target
	// becomes healthy or stops being healthy.
	OnChange func(healthy bool)
	// OnProven is called after every check that brings the target's passes in a row to
	// HealthyThreshold or more: the evidence that ends a passive ejection (see
	// Target.ResetPasses).
	OnProven func()
}

// New returns a checker with the given options. It checks nothing until Run.
func New(opts Options) *Checker {
	if opts.Transport == nil {
		opts.Transport = probeTransport(opts)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Checker{log: log}
	c.opts.Store(&opts)
	return c
}

// probeTransport opens a new connection for every check, as an ALB's checks do, so a
// target that stopped accepting connections fails at once.
func probeTransport(opts Options) *http.Transport {
	return &http.Transport{
		DialContext:            (&net.Dialer{Timeout: opts.Timeout}).DialContext,
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 64 << 10,
		TLSClientConfig:        opts.TLSConfig,
		TLSHandshakeTimeout:    opts.Timeout,
	}
}

// Reconfigure applies new check settings (path, host, interval, timeout, thresholds,
// matcher, TLS) from the next check on; targets keep their state and counts. The
// Observer and Logger of the original options stay, and so does the Transport unless
// the TLS settings changed.
func (c *Checker) Reconfigure(opts Options) {
	old := c.opts.Load()
	opts.Observer, opts.Logger = old.Observer, old.Logger
	if opts.Transport == nil {
		opts.Transport = old.Transport
		if opts.TLSConfig != old.TLSConfig {
			opts.Transport = probeTransport(opts)
		}
	}
	c.opts.Store(&opts)
}

// Run checks t, whose address is addr, until ctx is done, feeding every result into t
// and telling h of its transitions. It first reports t's state to the Observer. The
// first check comes at once (after a short random delay, so that many targets are never
// checked in step).
func (c *Checker) Run(ctx context.Context, addr string, t *Target, h Hooks) {
	if o := c.opts.Load().Observer; o != nil {
		o.TargetHealthy(addr, t.Healthy())
	}
	c.loop(ctx, addr, t, h)
}

// loop checks t every interval until ctx is done. The first check comes after a random
// delay below a quarter of the interval (at most 250ms); later ones every interval with ±5%
// jitter, so that targets drift apart instead of being checked in step.
func (c *Checker) loop(ctx context.Context, addr string, t *Target, h Hooks) {
	timer := time.NewTimer(firstCheckDelay(c.opts.Load().Interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		c.checkOnce(ctx, addr, t, h)
		timer.Reset(nextCheckDelay(c.opts.Load().Interval))
	}
}

// firstCheckDelay is a random delay below a quarter of the interval, at most 250ms: every
// target is checked at start, but not all at the same instant.
func firstCheckDelay(interval time.Duration) time.Duration {
	return time.Duration(rand.Int64N(int64(min(interval/4, 250*time.Millisecond)) + 1))
}

// nextCheckDelay is the interval ±5%, so that targets checked together drift apart.
func nextCheckDelay(interval time.Duration) time.Duration {
	return interval - interval/20 + time.Duration(rand.Int64N(int64(interval/10)+1))
}

// result is the outcome of one probe.
type result struct {
	pass   bool
	status int    // 0 when no response
	reason string // a Reason constant
	detail string // for logs: "status 400 not in 200-399"
}

func (c *Checker) checkOnce(ctx context.Context, addr string, t *Target, h Hooks) {
	opts := c.opts.Load()
	r := c.probe(ctx, opts, addr)
	if ctx.Err() != nil {
		return // stopped mid-check: not the target's fault
	}
	prev, m, changed := t.record(r, opts)

	if o := opts.Observer; o != nil {
		o.HealthCheck(addr, r.pass, r.reason)
	}
	if r.pass && m.passes >= opts.HealthyThreshold && h.OnProven != nil {
		h.OnProven()
	}
	if !changed {
		if !r.pass {
			c.log.Debug("health check failed", "target", addr, "reason", r.reason, "detail", r.detail, "in_a_row", m.fails)
		}
		return
	}
	healthy := m.state == Healthy
	switch {
	case healthy && prev == Initial:
		c.log.Info(fmt.Sprintf("target %s healthy: first check passed (status %d)", addr, r.status), "target", addr, "state", m.state)
	case healthy:
		c.log.Info(fmt.Sprintf("target %s healthy: status %d (%d in a row)", addr, r.status, m.passes), "target", addr, "state", m.state)
	default:
		c.log.Warn(fmt.Sprintf("target %s unhealthy: %s (%d in a row)", addr, r.detail, m.fails), "target", addr, "state", m.state, "reason", r.reason)
	}
	if o := opts.Observer; o != nil {
		o.TargetHealthy(addr, healthy)
	}
	if h.OnChange != nil {
		h.OnChange(healthy)
	}
}

// probe sends one check. A panic in it (a bug) counts as a failed check, not a dead process.
func (c *Checker) probe(ctx context.Context, opts *Options, addr string) (r result) {
	defer func() {
		if p := recover(); p != nil {
			r = result{reason: ReasonFailedHealthChecks, detail: fmt.Sprintf("internal error: %v", p)}
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if opts.TCPConnect {
		return probeTCP(ctx, opts, addr)
	}
	scheme := "http://"
	if opts.TLSConfig != nil {
		scheme = "https://"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+addr+opts.Path, nil)
	if err != nil {
		return result{reason: ReasonFailedHealthChecks, detail: err.Error()}
	}
	host := opts.Host
	if host == "" {
		host = addr
	}
	req.Host = host
	req.Header.Set("User-Agent", "edgeproxy-HealthChecker/1.0")
	client := &http.Client{
		Transport: opts.Transport,
		// Redirects are results, not instructions: Django's /admin answers 302.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			return result{reason: ReasonTimeout, detail: fmt.Sprintf("no response within %v", opts.Timeout)}
		}
		return result{reason: ReasonFailedHealthChecks, detail: connError(err)}
	}
	// Bounded and drained, so a chatty target cannot hold the checker.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if !opts.Matcher.Match(resp.StatusCode) {
		detail := fmt.Sprintf("status %d not in %s", resp.StatusCode, opts.Matcher)
		if resp.StatusCode == http.StatusBadRequest {
			detail += fmt.Sprintf(" (Django's ALLOWED_HOSTS probably rejects Host %q: set pool.health_check.host to the site's name)", host)
		}
		return result{status: resp.StatusCode, reason: ReasonResponseCodeMismatch, detail: detail}
	}
	return result{pass: true, status: resp.StatusCode, reason: ReasonNone}
}

// probeTCP is a TCP-connect check: a connection accepted within the timeout passes.
func probeTCP(ctx context.Context, opts *Options, addr string) result {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			return result{reason: ReasonTimeout, detail: fmt.Sprintf("no connection within %v", opts.Timeout)}
		}
		return result{reason: ReasonFailedHealthChecks, detail: connError(err)}
	}
	c.Close()
	return result{pass: true, reason: ReasonNone}
}

// Result is the outcome of one check, as CheckOnce reports it.
type Result struct {
	Pass   bool
	Status int    // 0 when there was no response
	Reason string // ReasonNone for a pass, else the ALB reason code
	Detail string // for people: "status 400 not in 200-399 (Django's ALLOWED_HOSTS ...)"
}

// CheckOnce sends one check to addr with the settings of opts (Path, Host, Timeout,
// Matcher, TLSConfig, Transport) exactly as a Checker's loop does, and returns its
// outcome without keeping any state: for one-off diagnostics such as `edgeproxy doctor`.
func CheckOnce(ctx context.Context, opts Options, addr string) Result {
	if opts.Transport == nil {
		tr := probeTransport(opts)
		defer tr.CloseIdleConnections()
		opts.Transport = tr
	}
	r := (&Checker{}).probe(ctx, &opts, addr)
	return Result{Pass: r.pass, Status: r.status, Reason: r.reason, Detail: r.detail}
}

// connError shortens a client error to its cause ("dial tcp 127.0.0.2:8000: connect:
// connection refused").
func connError(err error) string {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner.Error()
		}
	}
	return err.Error()
}
