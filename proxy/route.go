package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"edgeproxy/proxy/h1"
	"edgeproxy/routing"
)

// Pool is one target group the handler sends requests to, with what the data path needs
// of it: the picker and passive health (a *pool.Pool is both), the net/http path's
// transport to its targets, whether they speak TLS, and its retry count.
type Pool struct {
	// Name is the pool's name, as routes name it and as the pool label of the metrics.
	Name string
	// Picker chooses targets; Passive learns every attempt's outcome (nil: none).
	Picker  Picker
	Passive PassiveReporter
	// Transport sends the net/http path's requests to the pool's targets; nil means
	// NewTransport(5s, 60s, nil).
	Transport http.RoundTripper
	// TargetTLS makes the requests to targets https.
	TargetTLS bool
	// Retries is as Options.Retries, for this pool.
	Retries int
}

// poolState is a Pool with its retry budget and no-op defaults filled in.
type poolState struct {
	Pool
	budget retryBudget
}

// route is one compiled route: its name and its action.
type route struct {
	name     string
	pool     *poolState // nil for a redirect or fixed response
	redirect *routing.Redirect
	fixed    *routing.FixedResponse
}

// noRoute is the route of a request no route matches: 404, counted as route "none".
var noRoute = &route{name: "none", fixed: &routing.FixedResponse{Status: http.StatusNotFound}}

// compileRoutes builds the handler's pools and routes from opts: opts.Pools and
// opts.Routes, or the single pool of opts' Picker fields with one default route.
func (h *Handler) compileRoutes(opts Options) {
	pools := opts.Pools
	if len(pools) == 0 {
		pools = []Pool{{Name: "pool", Picker: opts.Picker, Passive: opts.Passive, Transport: opts.Transport,
			TargetTLS: opts.TargetTLS, Retries: opts.Retries}}
	}
	byName := map[string]*poolState{}
	for _, p := range pools {
		ps := &poolState{Pool: p}
		if ps.Passive == nil {
			ps.Passive = nopPassive{}
		}
		if ps.Transport == nil {
			ps.Transport = NewTransport(5*time.Second, 60*time.Second, nil)
		}
		ps.budget.tokens.Store(budgetCap)
		byName[p.Name] = ps
	}
	h.table = opts.Routes
	if h.table == nil {
		h.table, _ = routing.New([]routing.Route{{Name: "default", Pool: pools[0].Name}})
	}
	rs := h.table.Routes()
	for _, r := range rs {
		h.routes = append(h.routes, &route{name: r.Name, pool: byName[r.Pool], redirect: r.Redirect, fixed: r.FixedResponse})
	}
	if len(rs) == 1 {
		r := rs[0]
		h.singleDefault = h.routes[0].pool != nil && len(r.Hosts) == 0 && r.Path == "" &&
			r.PathPrefix == "" && len(r.Methods) == 0 && len(r.Headers) == 0
	}
}

// routeAt is the compiled route of index i of the table, noRoute for -1 (or a route to a
// pool the handler was not given, which config validation prevents), misdirected for
// RouteMisdirected.
func (h *Handler) routeAt(i int) *route {
	if i == RouteMisdirected {
		return misdirected
	}
	if i < 0 || i >= len(h.routes) {
		return noRoute
	}
	if r := h.routes[i]; r.pool != nil || r.redirect != nil || r.fixed != nil {
		return r
	}
	return noRoute
}

// RouteFast returns the route of a request the fast path parsed, for Begin.
func (h *Handler) RouteFast(req *h1.Request) int {
	if h.singleDefault {
		return 0 // the one pool: no conditions to look at
	}
	host := req.Host
	i, _ := routing.Match(h.table, routing.Request[[]byte]{Host: host, Target: req.Target, Method: req.Method,
		Header: func(name string) ([]byte, bool) { return req.Header.Get(name) }})
	return i
}

// routeHTTP returns the route of a request net/http parsed.
func (h *Handler) routeHTTP(r *http.Request) int {
	if h.singleDefault {
		return 0
	}
	i, _ := routing.Match(h.table, routing.Request[string]{Host: r.Host, Target: r.RequestURI, Method: r.Method,
		Header: func(name string) (string, bool) {
			v, ok := r.Header[http.CanonicalHeaderKey(name)]
			if !ok || len(v) == 0 {
				return "", false
			}
			return v[0], true
		}})
	return i
}

// Action is what the edge answers itself for a route whose action is a redirect or a
// fixed response: the status, the fields and the body.
type Action struct {
	Status int
	// Location is the redirect target; "" for a fixed response.
	Location    string
	ContentType string
	Body        string
}

// action returns the answer of route r to a request for host and target on a TLS
// connection or not; ok is false for a route that forwards to a pool.
func (r *route) action(host, target string, isTLS bool) (a Action, ok bool) {
	switch {
	case r.fixed != nil:
		f := r.fixed
		ct := f.ContentType
		if ct == "" {
			ct = "text/plain; charset=utf-8"
		}
		body := f.Body
		if body == "" && f.Status >= 400 {
			body = errorBody(f.Status)
		}
		return Action{Status: f.Status, ContentType: ct, Body: body}, true
	case r.redirect != nil:
		rd := r.redirect
		scheme := rd.Scheme
		if scheme == "" {
			scheme = "http"
			if isTLS {
				scheme = "https"
			}
		}
		hostname, port := host, ""
		if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
			hostname, port = host[:i], host[i+1:]
		}
		if rd.Host != "" {
			hostname = rd.Host
		}
		if rd.Port != "" {
			port = rd.Port
		}
		if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
			port = ""
		}
		path, query := target, ""
		if i := strings.IndexByte(target, '?'); i >= 0 {
			path, query = target[:i], target[i:]
		}
		if rd.Path != "" {
			path = rd.Path
		}
		loc := scheme + "://" + hostname
		if port != "" {
			loc += ":" + port
		}
		loc += path + query
		return Action{Status: rd.Status, Location: loc, ContentType: "text/plain; charset=utf-8",
			Body: strconv.Itoa(rd.Status) + " " + http.StatusText(rd.Status) + "\n"}, true
	}
	return Action{}, false
}

// fields are the fields of a's response: Location for a redirect, then Content-Type and
// Cache-Control. n of the array are used.
func (a *Action) fields() (f [3][2]string, n int) {
	if a.Location != "" {
		f[n] = [2]string{"Location", a.Location}
		n++
	}
	f[n] = [2]string{"Content-Type", a.ContentType}
	f[n+1] = [2]string{"Cache-Control", "no-store"}
	return f, n + 2
}

// writeAction answers a through net/http.
func writeAction(w http.ResponseWriter, a Action) {
	f, n := a.fields()
	writeResponse(w, a.Status, f[:n], a.Body)
}

// AppendAction appends the whole response of a as the fast path writes it, with extra
// fields (HSTS) and, with closeAfter, Connection: close.
func AppendAction(dst []byte, a Action, extra h1.Header, closeAfter bool) []byte {
	f, n := a.fields()
	return appendResponse(dst, a.Status, f[:n], a.Body, extra, closeAfter)
}
