// Package loadgen is the benchmarks' HTTP/1.1 load generator: a fixed number of client
// connections sending GET requests back to back, over plain TCP or TLS, either kept alive
// or one new connection per request. With a new connection per request and no session
// cache every TLS connection is a full handshake — what `wrk -H 'Connection: close'`
// cannot do, as it resumes sessions.
//
// It serves bench/tlscost (a fixed request count), `edgeproxy bench` and bench/peers (a
// warm-up, then a measured window with latencies). Traffic goes only where Options.Addr
// says, and every run is bounded in time.
package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options describe one run.
type Options struct {
	// Addr is the server's host:port. Required.
	Addr string
	// TLS speaks TLS to Addr, HTTP/1.1 by ALPN, certificates not verified.
	TLS bool
	// ServerName is the SNI (and the Host header when Host is empty); "" means "localhost".
	ServerName string
	// Host is the Host header; "" means ServerName.
	Host string
	// Path is the request target; "" means "/".
	Path string
	// BodyBytes is the response body size every response must have; negative means any.
	BodyBytes int
	// KeepAlive keeps each connection for the next request; false opens a new connection
	// per request, with "Connection: close", and reads the server's close before closing.
	KeepAlive bool
	// Resume gives each connection a TLS session cache, so that new connections resume;
	// false makes every handshake a full one.
	Resume bool
	// Curves are the key exchanges the client offers, in order; nil means Go's default
	// (X25519MLKEM768 first). The peer comparison offers only X25519.
	Curves []tls.CurveID
	// MaxVersion caps the TLS version the client offers (tls.VersionTLS12); zero means
	// Go's default (TLS 1.3).
	MaxVersion uint16
	// Connections is the number of concurrent connections (workers). Zero means 1.
	Connections int
	// Requests stops the run after this many requests; zero means no count limit.
	Requests int
	// Warmup is sent before the measured window and not counted; OnStart is called when
	// the window opens. Zero means none.
	Warmup time.Duration
	// Duration ends the measured window; zero means no time limit (Requests must be set).
	Duration time.Duration
	// OnStart, if not nil, is called once when the measured window opens (after Warmup),
	// for the caller to read CPU counters; requests from then on are counted.
	OnStart func()
	// Latencies records each measured request's latency for Result's percentiles.
	Latencies bool
	// Timeout bounds the whole run; zero means Warmup+Duration+30s, or 5 minutes for a
	// count-bounded run.
	Timeout time.Duration
}

// Result is what a run measured, within the measured window.
type Result struct {
	Requests int
	Elapsed  time.Duration
	// P50 and P99 are latency percentiles (zero unless Options.Latencies).
	P50, P99 time.Duration
}

// RPS is requests per second over the measured window.
func (r Result) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Run sends the load and returns what it measured. The first failing request ends the
// run with its error: a benchmark whose requests fail measures nothing worth printing.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Addr == "" || o.Requests <= 0 && o.Duration <= 0 {
		return Result{}, errors.New("loadgen: need Addr, and Requests or Duration")
	}
	workers := max(o.Connections, 1)
	if o.ServerName == "" {
		o.ServerName = "localhost"
	}
	if o.Host == "" {
		o.Host = o.ServerName
	}
	if o.Path == "" {
		o.Path = "/"
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
		if o.Duration > 0 {
			timeout = o.Warmup + o.Duration + 30*time.Second
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	conn := ""
	if !o.KeepAlive {
		conn = "Connection: close\r\n"
	}
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: edgeproxy-loadgen\r\n%s\r\n", o.Path, o.Host, conn))

	// The window: measuring (0 before it opens), and its start and end in nanoseconds
	// since begin.
	begin := time.Now()
	var measuring atomic.Bool
	var windowStart time.Time
	var startOnce sync.Once
	openWindow := func() {
		startOnce.Do(func() {
			if o.OnStart != nil {
				o.OnStart()
			}
			windowStart = time.Now()
			measuring.Store(true)
		})
	}
	if o.Warmup <= 0 {
		openWindow()
	}
	var end time.Time
	if o.Duration > 0 {
		end = begin.Add(o.Warmup + o.Duration)
	}

	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	lat := make([][]time.Duration, workers)
	counts := make([]int, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}, ServerName: o.ServerName,
				CurvePreferences: o.Curves, MaxVersion: o.MaxVersion}
			if o.Resume {
				cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			}
			var c net.Conn
			var br *bufio.Reader
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for {
				if o.Requests > 0 && next.Add(1) > int64(o.Requests) {
					return
				}
				now := time.Now()
				if !measuring.Load() && now.Sub(begin) >= o.Warmup {
					openWindow()
				}
				if !end.IsZero() && !now.Before(end) {
					return
				}
				if err := ctx.Err(); err != nil {
					errs <- err
					return
				}
				counted := measuring.Load()
				t0 := now
				if c == nil {
					d := &net.Dialer{Timeout: 5 * time.Second}
					nc, err := d.Dial("tcp", o.Addr)
					if err == nil && o.TLS {
						tc := tls.Client(nc, cfg)
						_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
						if err = tc.Handshake(); err != nil {
							nc.Close()
						}
						nc = tc
					}
					if err != nil {
						errs <- err
						return
					}
					c = nc
					if br == nil {
						br = bufio.NewReaderSize(c, 64<<10)
					} else {
						br.Reset(c)
					}
				}
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := c.Write(req); err != nil {
					errs <- err
					return
				}
				res, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- err
					return
				}
				n, err := io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if err != nil || res.StatusCode != 200 || o.BodyBytes >= 0 && n != int64(o.BodyBytes) {
					errs <- fmt.Errorf("loadgen: status %d, %d bytes, %v", res.StatusCode, n, err)
					return
				}
				if !o.KeepAlive {
					// Read the server's close (close_notify) and FIN before closing, as a
					// browser does (this also reads a TLS 1.3 session ticket); the server
					// closes first, so TIME_WAIT stays on its side, not on our ports.
					_, _ = io.Copy(io.Discard, br)
					c.Close()
					c = nil
				}
				if counted {
					done := time.Now()
					if !end.IsZero() && done.After(end) {
						return // finished after the window closed: not counted
					}
					counts[w]++
					if o.Latencies {
						lat[w] = append(lat[w], done.Sub(t0))
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return Result{}, err
	}
	var r Result
	if windowStart.IsZero() {
		return r, nil
	}
	stop := time.Now()
	if !end.IsZero() && stop.After(end) {
		stop = end
	}
	r.Elapsed = stop.Sub(windowStart)
	var all []time.Duration
	for w := range workers {
		r.Requests += counts[w]
		all = append(all, lat[w]...)
	}
	if len(all) > 0 {
		slices.Sort(all)
		r.P50 = all[len(all)*50/100]
		r.P99 = all[min(len(all)*99/100, len(all)-1)]
	}
	return r, nil
}
