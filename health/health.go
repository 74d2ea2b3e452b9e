// Package health runs active health checks against each target with the semantics of an
// AWS ALB target group: a GET of a path with a given Host header, an interval, a timeout,
// healthy and unhealthy thresholds and a status matcher, redirects not followed.
//
// The checker only writes state and reports changes (through Options.OnChange and the
// Observer); it never selects targets or proxies requests.
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
	"sort"
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
	// OnChange is called, from the target's check goroutine, whenever a target becomes
	// healthy or stops being healthy. Nil means no one is told.
	OnChange func(addr string, healthy bool)
	// OnProven is called after every check that brings the target's passes in a row to
	// HealthyThreshold or more: the evidence that ends a passive ejection (see
	// ResetPasses). Nil means no one is told.
	OnProven func(addr string)
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

// Checker checks a set of targets, one goroutine per target. Use New, then Start.
type Checker struct {
	opts atomic.Pointer[Options] // replaced whole by Reconfigure
	log  *slog.Logger

	// mu guards targets and ctx.
	mu      sync.Mutex
	ctx     context.Context
	targets map[string]*target
	wg      sync.WaitGroup
}

// target is one target's checking loop and its state.
type target struct {
	addr   string
	cancel context.CancelFunc

	// mu guards m and status.
	mu     sync.Mutex
	m      machine
	status Status
}

// New returns a checker with the given options. It checks nothing until Start.
func New(opts Options) *Checker {
	if opts.Transport == nil {
		opts.Transport = probeTransport(opts)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Checker{log: log, targets: map[string]*target{}}
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
// OnChange, OnProven, Observer and Logger of the original options stay, and so does the
// Transport unless the TLS settings changed.
func (c *Checker) Reconfigure(opts Options) {
	old := c.opts.Load()
	opts.OnChange, opts.OnProven, opts.Observer, opts.Logger = old.OnChange, old.OnProven, old.Observer, old.Logger
	if opts.Transport == nil {
		opts.Transport = old.Transport
		if opts.TLSConfig != old.TLSConfig {
			opts.Transport = probeTransport(opts)
		}
	}
	c.opts.Store(&opts)
}

// Start begins checking addrs; checks stop when ctx is done. Each target is checked at once
// (spread over a short random delay, so that many targets are never checked in step).
func (c *Checker) Start(ctx context.Context, addrs []string) {
	c.mu.Lock()
	c.ctx = ctx
	c.mu.Unlock()
	c.SetTargets(addrs)
}

// SetTargets changes the set of checked targets: new ones are checked at once and start in
// state Initial; removed ones stop being checked and show as Draining until Forget; the
// others keep their state.
func (c *Checker) SetTargets(addrs []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := map[string]bool{}
	for _, a := range addrs {
		keep[a] = true
		if t := c.targets[a]; t != nil && !t.draining() {
			continue
		}
		ctx, cancel := context.WithCancel(c.ctx)
		t := &target{addr: a, cancel: cancel, m: machine{state: Initial}}
		t.status = Status{Address: a, State: Initial, Reason: ReasonNone}
		c.targets[a] = t
		if o := c.opts.Load().Observer; o != nil {
			o.TargetHealthy(a, false)
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.loop(ctx, t)
		}()
	}
	for a, t := range c.targets {
		if !keep[a] {
			t.cancel()
			t.mu.Lock()
			t.status.State = Draining
			t.mu.Unlock()
		}
	}
}

// ResetPasses restarts addr's count of passes in a row, without changing its state: after
// a passive ejection, only checks from then on count as evidence of health.
func (c *Checker) ResetPasses(addr string) {
	c.mu.Lock()
	t := c.targets[addr]
	c.mu.Unlock()
	if t == nil {
		return
	}
	t.mu.Lock()
	t.m.passes = 0
	t.status.ConsecutivePasses = 0
	t.mu.Unlock()
}

// Forget drops a drained target from the statuses.
func (c *Checker) Forget(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.targets[addr]; t != nil && t.draining() {
		delete(c.targets, addr)
	}
}

func (t *target) draining() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status.State == Draining
}

// Wait blocks until every check goroutine has returned (after the Start context is done).
func (c *Checker) Wait() { c.wg.Wait() }

// Statuses returns every target's status, sorted by address.
func (c *Checker) Statuses() []Status {
	c.mu.Lock()
	out := make([]Status, 0, len(c.targets))
	for _, t := range c.targets {
		t.mu.Lock()
		out = append(out, t.status)
		t.mu.Unlock()
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// loop checks t every interval until ctx is done. The first check comes after a random
// delay below a quarter of the interval (at most 250ms); later ones every interval with ±5%
// jitter, so that targets drift apart instead of being checked in step.
func (c *Checker) loop(ctx context.Context, t *target) {
	timer := time.NewTimer(firstCheckDelay(c.opts.Load().Interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		c.checkOnce(ctx, t)
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

func (c *Checker) checkOnce(ctx context.Context, t *target) {
	opts := c.opts.Load()
	r := c.probe(ctx, opts, t.addr)
	if ctx.Err() != nil {
		return // stopped mid-check: not the target's fault
	}
	t.mu.Lock()
	prev := t.m.state
	changed := t.m.observe(r.pass, opts.HealthyThreshold, opts.UnhealthyThreshold)
	m := t.m
	t.status = Status{
		Address: t.addr, State: m.state, LastCheck: time.Now().UTC(), LastStatus: r.status,
		Reason: r.reason, Detail: r.detail, ConsecutivePasses: m.passes, ConsecutiveFailures: m.fails,
	}
	t.mu.Unlock()

	if o := opts.Observer; o != nil {
		o.HealthCheck(t.addr, r.pass, r.reason)
	}
	if r.pass && m.passes >= opts.HealthyThreshold && opts.OnProven != nil {
		opts.OnProven(t.addr)
	}
	if !changed {
		if !r.pass {
			c.log.Debug("health check failed", "target", t.addr, "reason", r.reason, "detail", r.detail, "in_a_row", m.fails)
		}
		return
	}
	healthy := m.state == Healthy
	switch {
	case healthy && prev == Initial:
		c.log.Info(fmt.Sprintf("target %s healthy: first check passed (status %d)", t.addr, r.status), "target", t.addr, "state", m.state)
	case healthy:
		c.log.Info(fmt.Sprintf("target %s healthy: status %d (%d in a row)", t.addr, r.status, m.passes), "target", t.addr, "state", m.state)
	default:
		c.log.Warn(fmt.Sprintf("target %s unhealthy: %s (%d in a row)", t.addr, r.detail, m.fails), "target", t.addr, "state", m.state, "reason", r.reason)
	}
	if o := opts.Observer; o != nil {
		o.TargetHealthy(t.addr, healthy)
	}
	if opts.OnChange != nil {
		opts.OnChange(t.addr, healthy)
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
