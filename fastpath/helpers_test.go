package fastpath

import (
	"net/http"
	"strconv"
	"time"

	"edgeproxy/balancer"
	"edgeproxy/proxy"
)

// Options are the proxy options of a test server.
type Options = proxy.Options

type staticPicker struct{ t *balancer.Target }

func (p staticPicker) Next() balancer.Pick                       { return balancer.Pick{Target: p.t} }
func (p staticPicker) NextExcept(*balancer.Target) balancer.Pick { return p.Next() }

func pickerForAddr(addr string) staticPicker { return staticPicker{&balancer.Target{Addr: addr}} }

// pool is a balancer over addrs, all healthy, with passive health on.
func pool(addrs ...string) *balancer.Balancer {
	b := balancer.New(addrs)
	for _, a := range addrs {
		b.SetHealthy(a, true)
	}
	b.SetPassive(&balancer.Passive{ConsecutiveFailures: 3, EjectionTime: time.Minute})
	return b
}

// errorBody is the body of the edge's error page for code.
func errorBody(code int) string { return strconv.Itoa(code) + " " + http.StatusText(code) + "\n" }
