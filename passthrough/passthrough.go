// Package passthrough routes TLS connections by the server name (SNI) of their
// ClientHello, without terminating them, to targets of their own, as an AWS NLB does in
// front of targets that speak TLS themselves. It sits on the HTTPS listener, under the TLS
// layer: Listener peeks at each new connection's ClientHello (the bytes are kept and
// replayed, not consumed), splices a connection for a listed name to a healthy target as
// raw TCP, and hands every other connection, untouched, to the TLS listener above it.
//
// Each entry (Route) is a pool of its own (package pool): targets chosen round robin
// among the healthy ones, with its fail-open, and checked by TCP connect (health, with
// TCPConnect) with the configured interval and thresholds. A reload keeps each entry's
// pool, and so each target's health and the rotation.
package passthrough

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"edgeproxy/health"
	"edgeproxy/pool"
)

// Route sends the connections for ServerNames to Targets.
type Route struct {
	// ServerNames are exact names, compared without case and without a final dot.
	ServerNames []string
	// Targets are "host:port" addresses that speak TLS for those names.
	Targets []string
}

// Observer receives what passthrough does, for metrics. A nil Observer is valid and
// receives nothing. It is also the health.Observer of the passthrough targets.
type Observer interface {
	health.Observer
	// PassthroughOpened is called when a connection is spliced to target.
	PassthroughOpened(target string)
	// PassthroughClosed is called when a spliced connection ends, with the bytes relayed
	// from the client (in, the ClientHello included) and to it (out).
	PassthroughClosed(target string, in, out int64)
	// PassthroughFailed is called when a connection for a listed name could not reach
	// any target (target "none" when the route has none) and was closed.
	PassthroughFailed(target string)
}

// Options configure a Router.
type Options struct {
	Routes []Route
	// PeekTimeout bounds reading the ClientHello, from accept; a client silent that long
	// is closed. Zero means 10s (edgeproxy passes limits.read_header_timeout).
	PeekTimeout time.Duration
	// DialTimeout bounds connecting to a target. Zero means 5s.
	DialTimeout time.Duration
	// Health holds the check interval, timeout and thresholds; New makes the checks TCP
	// connects and sets their Observer and Logger.
	Health health.Options
	// Observer receives metrics; nil means none.
	Observer Observer
	// AccessLog writes one line per passed-through connection when it ends.
	AccessLog bool
	// Logger receives dial failures, health transitions and access lines; nil means none.
	Logger *slog.Logger
}

// Router is the SNI router. A nil *Router is valid and routes nothing: its Listener
// returns the inner listener, and its other methods do nothing. Use New.
type Router struct {
	opts  Options
	log   *slog.Logger
	table atomic.Pointer[table] // swapped whole by Update

	// poolsMu serialises Start and Update, and guards ctx.
	poolsMu sync.Mutex
	ctx     context.Context // set by Start

	// mu guards conns, the spliced connections (client side), and closed.
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // spliced connections
}

// table maps a server name to the pool of its route. It is never modified once
// published.
type table struct {
	byName map[string]*pool.Pool
	pools  []*pool.Pool // one per route, in order
}

// New returns a router for opts.Routes. It checks nothing until Start.
func New(opts Options) *Router {
	if opts.PeekTimeout <= 0 {
		opts.PeekTimeout = 10 * time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Router{opts: opts, log: log, conns: map[net.Conn]struct{}{}}
	r.table.Store(r.newTable(opts.Routes, opts.Health, &table{}))
	return r
}

// newTable builds the routing table for routes. A route keeps the pool of the old route
// that served one of its names (Update applies the route to it, so its targets keep
// their state); other routes get a new pool.
func (r *Router) newTable(routes []Route, h health.Options, old *table) *table {
	h.TCPConnect = true
	oldPool := map[*pool.Pool]bool{}
	for _, p := range old.pools {
		oldPool[p] = true
	}
	t := &table{byName: map[string]*pool.Pool{}}
	for _, rt := range routes {
		cfg := pool.Config{Name: "passthrough", Targets: rt.Targets, Health: h}
		if len(rt.ServerNames) > 0 {
			cfg.Name += " " + normalName(rt.ServerNames[0])
		}
		var p *pool.Pool
		for _, n := range rt.ServerNames {
			if q := old.byName[normalName(n)]; q != nil && oldPool[q] {
				p = q
				break
			}
		}
		if p != nil {
			delete(oldPool, p) // claimed: no other route takes it
			p.Update(cfg)
		} else {
			p = pool.New(cfg, r.poolOptions())
			if r.ctx != nil {
				p.Start(r.ctx)
			}
		}
		t.pools = append(t.pools, p)
		for _, n := range rt.ServerNames {
			t.byName[normalName(n)] = p
		}
	}
	for p := range oldPool { // routes gone: their pools stop checking and empty
		p.Update(pool.Config{Health: h})
		p.Wait()
	}
	return t
}

func (r *Router) poolOptions() pool.Options {
	opts := pool.Options{Logger: r.log.With("passthrough", true)}
	if r.opts.Observer != nil {
		opts.Observer = poolObserver{r.opts.Observer}
	}
	return opts
}

// poolObserver is the pool.Observer of the passthrough pools: they report no passive
// ejections, as spliced connections are not judged.
type poolObserver struct{ health.Observer }

func (poolObserver) PassiveEjection(string) {}

func normalName(n string) string {
	b := []byte(n)
	if len(b) > 0 && b[len(b)-1] == '.' {
		b = b[:len(b)-1]
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// Start begins the TCP-connect checks of the targets; they stop when ctx is done.
func (r *Router) Start(ctx context.Context) {
	if r == nil {
		return
	}
	r.poolsMu.Lock()
	defer r.poolsMu.Unlock()
	r.ctx = ctx
	for _, p := range r.table.Load().pools {
		p.Start(ctx)
	}
}

// Wait blocks until the checks have stopped (after the Start context is done).
func (r *Router) Wait() {
	if r == nil {
		return
	}
	for _, p := range r.table.Load().pools {
		p.Wait()
	}
}

// Update applies new routes and check settings (a reload). Each route keeps its pool
// (matched by server name), and targets that stay keep their health and their place in
// the rotation; connections already spliced are not touched.
func (r *Router) Update(routes []Route, h health.Options) {
	if r == nil {
		return
	}
	r.poolsMu.Lock()
	defer r.poolsMu.Unlock()
	r.table.Store(r.newTable(routes, h, r.table.Load()))
}

// Statuses returns the passthrough targets' health, each address once (a target of
// several routes is checked by each), sorted by address.
func (r *Router) Statuses() []health.Status {
	if r == nil {
		return nil
	}
	byAddr := map[string]health.Status{}
	for _, p := range r.table.Load().pools {
		for _, s := range p.Statuses() {
			if prev, ok := byAddr[s.Address]; !ok || prev.State == health.Draining {
				byAddr[s.Address] = s.Status // health only: passthrough balances connections, not requests
			}
		}
	}
	out := make([]health.Status, 0, len(byAddr))
	for _, s := range byAddr {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// Shutdown waits for the spliced connections to end until ctx is done, then closes
// those left. New connections are refused from the start of Shutdown.
func (r *Router) Shutdown(ctx context.Context) error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	<-done
	return ctx.Err()
}

// route returns the pool for a server name, or nil.
func (r *Router) route(name string) *pool.Pool {
	if name == "" {
		return nil
	}
	return r.table.Load().byName[name]
}

// splice relays c, whose first bytes hello were already read from it, to a target of b,
// until both sides are done. It owns c.
func (r *Router) splice(c net.Conn, hello []byte, name string, b *pool.Pool) {
	if !r.track(c) {
		c.Close()
		return
	}
	defer r.untrack(c)
	up, target, err := r.dial(b)
	if err != nil {
		c.Close()
		if o := r.opts.Observer; o != nil {
			o.PassthroughFailed(target)
		}
		r.log.Warn(fmt.Sprintf("passthrough %s: %v", name, err), "server_name", name, "target", target)
		return
	}
	if o := r.opts.Observer; o != nil {
		o.PassthroughOpened(target)
	}
	start := time.Now()
	in, out := relay(c, up, hello)
	c.Close()
	up.Close()
	if o := r.opts.Observer; o != nil {
		o.PassthroughClosed(target, in, out)
	}
	if r.opts.AccessLog {
		r.log.Info("passthrough", "client", c.RemoteAddr().String(), "server_name", name, "target", target,
			"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Microsecond))
	}
}

// dial connects to the next target of b, trying each target at most once: a refused
// connection has carried nothing yet, so another target may take it.
func (r *Router) dial(b *pool.Pool) (net.Conn, string, error) {
	d := net.Dialer{Timeout: r.opts.DialTimeout, KeepAlive: 30 * time.Second}
	var errs []error
	tried := map[*pool.Target]bool{}
	target := "none"
	for range len(b.Targets()) {
		t := b.Next().Target
		if t == nil {
			break
		}
		if tried[t] {
			// Round robin handed back one already tried: take the first untried one.
			t = nil
			for _, u := range b.Targets() {
				if !tried[u] {
					t = u
					break
				}
			}
			if t == nil {
				break
			}
		}
		tried[t] = true
		target = t.Addr
		up, err := d.Dial("tcp", t.Addr)
		if err == nil {
			return up, t.Addr, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, target, errors.New("no target")
	}
	return nil, target, errors.Join(errs...)
}

func (r *Router) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	r.wg.Add(1)
	return true
}

func (r *Router) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	r.wg.Done()
}

// relay copies between the client c (after hello, which goes first) and the target up
// in both directions, passing on half-closes, until both directions end; an error in
// one direction ends both. It returns the bytes relayed from and to the client.
func relay(c, up net.Conn, hello []byte) (in, out int64) {
	// Below the edge's wrappers (the connection limit) both sides are *net.TCPConn,
	// whose copies Go does with splice(2), without passing through user space.
	rc, rup := netConn(c), netConn(up)
	if _, err := up.Write(hello); err != nil {
		return 0, 0
	}
	in = int64(len(hello))
	done := make(chan int64, 1)
	go func() {
		n, err := io.Copy(rc, rup)
		if err != nil {
			c.Close()
			up.Close()
		} else {
			closeWrite(rc)
		}
		done <- n
	}()
	n, err := io.Copy(rup, rc)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.Close()
		up.Close()
	} else {
		closeWrite(rup)
	}
	return in + n, <-done
}

// netConn unwraps connections that expose the one below them (NetConn, as *tls.Conn
// does), for the kernel's splice.
func netConn(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		c = u.NetConn()
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
