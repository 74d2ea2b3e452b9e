// Package routing is the edge's listener rules, as an ALB has them: an ordered list of
// routes, each a set of conditions (host, path, method, header) and one action (forward to
// a pool, redirect, or a fixed response), evaluated in order, first match wins. Both data
// paths ask the same Table, so a request lands in the same pool whichever wire format
// carried it.
//
// Matching is done on a normalised request, so that no spelling of a request reaches a
// pool its route does not name: the host is compared case-insensitively, without its port
// or a trailing dot; the path with percent-encoded unreserved characters decoded and dot
// segments removed (RFC 3986 §6.2.2), so that "/api/%2e%2e/admin" is "/admin" for the
// rules as it is for a target that normalises paths. The request itself is forwarded as
// received.
package routing

import (
	"errors"
	"fmt"
	"strings"
)

// Route is one listener rule. A condition left empty matches every request; a route with
// no condition at all is a default route.
type Route struct {
	// Name identifies the route in logs, metrics (the route label) and validate's
	// messages.
	Name string
	// Hosts are host names, or patterns with one leading wildcard label
	// ("*.example.com" matches "api.example.com", not "example.com" nor
	// "a.b.example.com"). Compared case-insensitively; IDNs in their xn-- form.
	Hosts []string
	// PathPrefix matches paths that begin with it; Path matches one path exactly. At most
	// one of them is set. Case-sensitive, as an ALB's path patterns are.
	PathPrefix, Path string
	// Methods are HTTP methods (upper case), any of which matches.
	Methods []string
	// Headers are conditions on request fields: each must be present with one of its
	// values (compared case-insensitively).
	Headers []HeaderCondition

	// The action: exactly one of Pool, Redirect and FixedResponse.
	Pool          string
	Redirect      *Redirect
	FixedResponse *FixedResponse
}

// HeaderCondition matches a request whose field Name has one of Values.
type HeaderCondition struct {
	Name   string
	Values []string
}

// Redirect answers with a redirect, as an ALB's redirect action: each part left empty is
// kept from the request.
type Redirect struct {
	// Scheme is "https" or "http"; Host and Port replace the request's; Path replaces
	// the path (the query is kept).
	Scheme, Host, Port, Path string
	// Status is 301, 302, 307 or 308.
	Status int
}

// FixedResponse answers with a fixed status and body, as an ALB's fixed-response action.
type FixedResponse struct {
	Status      int
	ContentType string
	Body        string
}

// Table is a compiled, read-only list of routes. Use New; Match is safe for concurrent use.
type Table struct {
	routes []compiled
}

type compiled struct {
	r        *Route
	hosts    []hostPattern
	prefix   string
	exact    string
	hasPath  bool
	methods  []string
	headers  []HeaderCondition
	catchAll bool
}

type hostPattern struct {
	name     string // lower case; for a wildcard, the suffix after "*" (".example.com")
	wildcard bool
}

// New compiles routes. It returns an error naming the route for a malformed condition or
// action.
func New(routes []Route) (*Table, error) {
	t := &Table{routes: make([]compiled, 0, len(routes))}
	for i := range routes {
		r := &routes[i]
		c, err := compile(r)
		if err != nil {
			return nil, fmt.Errorf("routing: route %q: %w", r.Name, err)
		}
		t.routes = append(t.routes, c)
	}
	return t, nil
}

func compile(r *Route) (compiled, error) {
	c := compiled{r: r, prefix: r.PathPrefix, exact: r.Path, methods: r.Methods, headers: r.Headers}
	if err := checkAction(r); err != nil {
		return c, err
	}
	for _, h := range r.Hosts {
		p, err := ParseHostPattern(h)
		if err != nil {
			return c, err
		}
		c.hosts = append(c.hosts, p)
	}
	switch {
	case r.PathPrefix != "" && r.Path != "":
		return c, errors.New("path and path_prefix are exclusive")
	case r.PathPrefix != "":
		if !strings.HasPrefix(r.PathPrefix, "/") {
			return c, fmt.Errorf("path_prefix %q must begin with /", r.PathPrefix)
		}
		c.hasPath = true
	case r.Path != "":
		if !strings.HasPrefix(r.Path, "/") {
			return c, fmt.Errorf("path %q must begin with /", r.Path)
		}
		c.hasPath = true
	}
	for _, m := range r.Methods {
		if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, " \t") {
			return c, fmt.Errorf("method %q: want an upper-case HTTP method such as GET", m)
		}
	}
	c.headers = nil
	for _, h := range r.Headers {
		if h.Name == "" || len(h.Values) == 0 {
			return c, errors.New("a header condition needs a name and at least one value")
		}
		lowered := HeaderCondition{Name: h.Name}
		for _, v := range h.Values {
			lowered.Values = append(lowered.Values, strings.ToLower(v))
		}
		c.headers = append(c.headers, lowered)
	}
	c.catchAll = len(c.hosts) == 0 && !c.hasPath && len(c.methods) == 0 && len(c.headers) == 0
	return c, nil
}

func checkAction(r *Route) error {
	n := 0
	if r.Pool != "" {
		n++
	}
	if r.Redirect != nil {
		n++
		switch r.Redirect.Status {
		case 301, 302, 307, 308:
		default:
			return fmt.Errorf("redirect status %d: want 301, 302, 307 or 308", r.Redirect.Status)
		}
		if s := r.Redirect.Scheme; s != "" && s != "http" && s != "https" {
			return fmt.Errorf("redirect scheme %q: want http or https", s)
		}
	}
	if r.FixedResponse != nil {
		n++
		if s := r.FixedResponse.Status; s < 200 || s > 599 {
			return fmt.Errorf("fixed_response status %d: want 200-599", s)
		}
	}
	if n != 1 {
		return errors.New("want exactly one action: pool, redirect or fixed_response")
	}
	return nil
}

// ParseHostPattern checks a host condition: an ASCII host name (IDNs in their xn-- form),
// or one with a leading "*." label.
func ParseHostPattern(h string) (hostPattern, error) {
	name := strings.ToLower(strings.TrimSuffix(h, "."))
	p := hostPattern{name: name}
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		p = hostPattern{name: "." + rest, wildcard: true}
		name = rest
	}
	if name == "" || strings.Contains(name, "*") {
		return p, fmt.Errorf("host %q: want a name, or one leading wildcard label as in *.example.com", h)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return p, fmt.Errorf("host %q: only letters, digits, '-' and '.' (write an IDN in its xn-- form)", h)
		}
	}
	if strings.Contains(name, "..") || strings.HasPrefix(name, ".") {
		return p, fmt.Errorf("host %q: empty label", h)
	}
	return p, nil
}

// Request is what the rules look at. S is string (net/http) or []byte (the fast path), so
// that neither converts to match.
type Request[S ~string | ~[]byte] struct {
	// Host is the Host field (or :authority), port included if sent.
	Host S
	// Target is the request target as received (origin form, or absolute form).
	Target S
	// Method is the request method.
	Method S
	// Header returns the value of the request field name (canonical or any case, as the
	// wire format stores it), and whether it is present.
	Header func(name string) (S, bool)
}

// Match returns the index of the first route whose conditions req meets and that route,
// or -1 and nil when none does (a table with a default route always matches).
func Match[S ~string | ~[]byte](t *Table, req Request[S]) (int, *Route) {
	host := normalHost(req.Host)
	var path S
	var norm []byte
	pathDone := false
	for i := range t.routes {
		c := &t.routes[i]
		if c.catchAll {
			return i, c.r
		}
		if len(c.methods) > 0 && !containsMethod(c.methods, req.Method) {
			continue
		}
		if len(c.hosts) > 0 && !matchHost(c.hosts, host) {
			continue
		}
		if c.hasPath {
			if !pathDone {
				path, norm = normalPath(req.Target)
				pathDone = true
			}
			if !matchPath(c, path, norm) {
				continue
			}
		}
		if len(c.headers) > 0 && !matchHeaders(c.headers, req.Header) {
			continue
		}
		return i, c.r
	}
	return -1, nil
}

// Routes returns the table's routes in order.
func (t *Table) Routes() []*Route {
	out := make([]*Route, len(t.routes))
	for i := range t.routes {
		out[i] = t.routes[i].r
	}
	return out
}

func containsMethod[S ~string | ~[]byte](methods []string, m S) bool {
	for _, x := range methods {
		if string(m) == x {
			return true
		}
	}
	return false
}

func matchHost[S ~string | ~[]byte](patterns []hostPattern, host S) bool {
	if len(host) == 0 {
		return false
	}
	for _, p := range patterns {
		if !p.wildcard {
			if equalFoldASCII(host, p.name) {
				return true
			}
			continue
		}
		// One label, then the suffix: "api" + ".example.com".
		n := len(host) - len(p.name)
		if n <= 0 || !equalFoldASCII(host[n:], p.name) {
			continue
		}
		label := host[:n]
		oneLabel := true
		for j := 0; j < len(label); j++ {
			if label[j] == '.' || label[j] >= 0x80 {
				oneLabel = false
				break
			}
		}
		if oneLabel {
			return true
		}
	}
	return false
}

func matchPath[S ~string | ~[]byte](c *compiled, path S, norm []byte) bool {
	if norm != nil {
		if c.exact != "" {
			return string(norm) == c.exact
		}
		return len(norm) >= len(c.prefix) && string(norm[:len(c.prefix)]) == c.prefix
	}
	if c.exact != "" {
		return string(path) == c.exact
	}
	return len(path) >= len(c.prefix) && string(path[:len(c.prefix)]) == c.prefix
}

// matchHeaders reports whether every condition holds; conds' values are lower case.
func matchHeaders[S ~string | ~[]byte](conds []HeaderCondition, get func(string) (S, bool)) bool {
	if get == nil {
		return false
	}
	for _, hc := range conds {
		v, ok := get(hc.Name)
		if !ok {
			return false
		}
		found := false
		for _, want := range hc.Values {
			if equalFoldASCII(v, want) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// equalFoldASCII reports whether s equals lower, ASCII case-insensitively (lower is a
// host condition, already lower case, or a certificate's name, which may not be). A byte
// outside ASCII never matches, so a host in Unicode matches no host condition.
func equalFoldASCII[S ~string | ~[]byte](s S, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c, l := s[i], lower[i]
		if c >= 0x80 {
			return false
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= l && l <= 'Z' {
			l += 'a' - 'A'
		}
		if c != l {
			return false
		}
	}
	return true
}
