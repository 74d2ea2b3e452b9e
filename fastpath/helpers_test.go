package fastpath

import (
	"net/http"
	"strconv"
	"time"

	"edgeproxy/pool"
	"edgeproxy/proxy"
)

// Options are the proxy options of a test server.
type Options = proxy.Options

type staticPicker struct{ t *pool.Target }

func (p staticPicker) Next() pool.Pick                   { return pool.Pick{Target: p.t} }
func (p staticPicker) NextExcept(*pool.Target) pool.Pick { return p.Next() }

func pickerForAddr(addr string) staticPicker { return staticPicker{&pool.Target{Addr: addr}} }

// healthyPool returns a pool over addrs, all healthy, with passive detection after 3
// failures.
func healthyPool(addrs ...string) *pool.Pool {
	return pool.New(pool.Config{Name: "test", Targets: addrs, Passive: pool.Passive{ConsecutiveFailures: 3, EjectionTime: time.Minute}}, pool.Options{})
}

// errorBody is the body of the edge's error page for code.
func errorBody(code int) string { return strconv.Itoa(code) + " " + http.StatusText(code) + "\n" }
