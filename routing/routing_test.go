package routing

import (
	"net/http"
	"path"
	"strings"
	"testing"
)

// albExample is a routing table after the ALB documentation's listener-rule examples:
// host-based, path-based, a fixed response, a redirect, methods and a header, and a
// default route.
func albExample(t testing.TB) *Table {
	t.Helper()
	tab, err := New([]Route{
		{Name: "maintenance", Path: "/lb-status", FixedResponse: &FixedResponse{Status: 200, ContentType: "text/plain", Body: "ok"}},
		{Name: "old-blog", Hosts: []string{"blog.example.com"}, Redirect: &Redirect{Host: "www.example.com", Path: "/blog/", Status: 301}},
		{Name: "api-writes", Hosts: []string{"api.example.com"}, Methods: []string{"POST", "PUT", "DELETE"}, Pool: "api-writer"},
		{Name: "api", Hosts: []string{"api.example.com"}, Pool: "api"},
		{Name: "canary", Hosts: []string{"*.example.com"}, Headers: []HeaderCondition{{Name: "X-Canary", Values: []string{"on"}}}, Pool: "canary"},
		{Name: "images", PathPrefix: "/img/", Pool: "images"},
		{Name: "tenants", Hosts: []string{"*.example.com"}, Pool: "tenants"},
		{Name: "default", Pool: "django"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

type req struct {
	host, target, method string
	header               http.Header
}

func match(tab *Table, r req) string {
	if r.method == "" {
		r.method = "GET"
	}
	_, route := Match(tab, Request[string]{Host: r.host, Target: r.target, Method: r.method,
		Header: func(name string) (string, bool) {
			v := r.header.Values(name)
			if len(v) == 0 {
				return "", false
			}
			return v[0], true
		}})
	// The fast path asks with bytes: the same answer.
	_, routeB := Match(tab, Request[[]byte]{Host: []byte(r.host), Target: []byte(r.target), Method: []byte(r.method),
		Header: func(name string) ([]byte, bool) {
			v := r.header.Values(name)
			if len(v) == 0 {
				return nil, false
			}
			return []byte(v[0]), true
		}})
	if route != routeB {
		panic("string and []byte requests matched different routes")
	}
	if route == nil {
		return ""
	}
	return route.Name
}

func TestMatch_FirstMatchWinsInOrder(t *testing.T) {
	tab := albExample(t)
	tests := []struct {
		r    req
		want string
	}{
		{req{host: "www.example.com", target: "/lb-status"}, "maintenance"},
		{req{host: "www.example.com", target: "/lb-status/x"}, "tenants"},
		{req{host: "blog.example.com", target: "/2024/post"}, "old-blog"},
		{req{host: "api.example.com", target: "/v1/orders", method: "POST"}, "api-writes"},
		{req{host: "api.example.com", target: "/v1/orders"}, "api"},
		{req{host: "shop.example.com", target: "/", header: http.Header{"X-Canary": {"ON"}}}, "canary"},
		{req{host: "shop.example.com", target: "/", header: http.Header{"X-Canary": {"off"}}}, "tenants"},
		{req{host: "shop.example.com", target: "/img/logo.png"}, "images"},
		{req{host: "example.com", target: "/"}, "default"},
		{req{host: "a.b.example.com", target: "/"}, "default"},
		{req{host: "", target: "/"}, "default"},
	}
	for _, tt := range tests {
		if got := match(tab, tt.r); got != tt.want {
			t.Errorf("%s %s%s: route %q; want %q", tt.r.method, tt.r.host, tt.r.target, got, tt.want)
		}
	}
}

func TestMatch_HostIsNormalised(t *testing.T) {
	tab := albExample(t)
	for host, want := range map[string]string{
		"API.Example.COM":        "api",
		"api.example.com:8443":   "api",
		"api.example.com.":       "api",
		"api.example.com.:443":   "api",
		"ápi.example.com":        "default", // Unicode matches no host condition: IDNs are written as xn--
		"xn--pi-lia.example.com": "tenants",
		"[::1]:8443":             "default",
		"api.example.com:1:2":    "default", // not a host:port
	} {
		if got := match(tab, req{host: host, target: "/"}); got != want {
			t.Errorf("Host %q: route %q; want %q", host, got, want)
		}
	}
}

func TestMatch_PathIsNormalised(t *testing.T) {
	tab, err := New([]Route{
		{Name: "admin", PathPrefix: "/admin", Pool: "admin"},
		{Name: "api", PathPrefix: "/api/", Pool: "api"},
		{Name: "default", Pool: "django"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]string{
		"/api/users":               "api",
		"/api/users?x=/admin":      "api",
		"/api/%2e%2e/admin/":       "admin",
		"/api/%2E%2E/admin/":       "admin",
		"/api/../admin":            "admin",
		"/api/./users":             "api",
		"/api//../admin":           "admin",
		"/api%2F..%2Fadmin":        "admin",
		"/%61pi/users":             "api",
		"//api/users":              "api",
		"/api":                     "default",
		"http://x.test/api/users":  "api",
		"https://x.test/admin?q=1": "admin",
		"http://x.test":            "default",
		"*":                        "default",
		"/../../admin":             "admin",
	} {
		if got := match(tab, req{host: "x.test", target: target}); got != want {
			t.Errorf("target %q: route %q; want %q", target, got, want)
		}
	}
}

func TestNew_RefusesMalformedRoutes(t *testing.T) {
	for _, r := range []Route{
		{Name: "no action"},
		{Name: "two actions", Pool: "a", FixedResponse: &FixedResponse{Status: 200}},
		{Name: "bad wildcard", Hosts: []string{"api.*.com"}, Pool: "a"},
		{Name: "two wildcards", Hosts: []string{"*.*.example.com"}, Pool: "a"},
		{Name: "unicode host", Hosts: []string{"bücher.example"}, Pool: "a"},
		{Name: "relative path", PathPrefix: "api/", Pool: "a"},
		{Name: "path and prefix", Path: "/a", PathPrefix: "/b", Pool: "a"},
		{Name: "lower-case method", Methods: []string{"get"}, Pool: "a"},
		{Name: "redirect status", Redirect: &Redirect{Status: 200}},
		{Name: "fixed status", FixedResponse: &FixedResponse{Status: 99}},
		{Name: "empty header", Headers: []HeaderCondition{{Name: "X"}}, Pool: "a"},
	} {
		if _, err := New([]Route{r}); err == nil || !strings.Contains(err.Error(), r.Name) {
			t.Errorf("%s: error %v; want one naming the route", r.Name, err)
		}
	}
}

func TestUnreachable_ReportsShadowedRoutes(t *testing.T) {
	tab, err := New([]Route{
		{Name: "api", Hosts: []string{"*.example.com"}, Pool: "a"},
		{Name: "api-v1", Hosts: []string{"api.example.com"}, PathPrefix: "/v1", Pool: "b"}, // shadowed by api
		{Name: "img", PathPrefix: "/img/", Pool: "c"},
		{Name: "img-png", PathPrefix: "/img/png/", Methods: []string{"GET"}, Pool: "d"}, // shadowed by img
		{Name: "get", Methods: []string{"GET"}, Pool: "e"},
		{Name: "post", Methods: []string{"POST"}, Pool: "f"}, // reachable
		{Name: "default", Pool: "g"},
		{Name: "after-default", Path: "/x", Pool: "h"}, // shadowed by default
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range tab.Unreachable() {
		got = append(got, tab.Routes()[s.Route].Name+"<"+tab.Routes()[s.By].Name)
	}
	if want := "api-v1<api img-png<img after-default<default"; strings.Join(got, " ") != want {
		t.Errorf("unreachable %v; want %s", got, want)
	}
}

// FuzzMatch: no spelling of a request reaches a route whose conditions its normal form
// does not meet, nor skips an earlier route it meets. The normal form here is computed
// independently: path.Clean of the once-decoded path.
func FuzzMatch(f *testing.F) {
	for _, s := range []string{"/api/users", "/api/%2e%2e/admin", "/api%2F..%2Fadmin", "//api//x", "/img/../img/a", "http://h/api/x?y", "/%zz/api", "/api/.%2e/admin"} {
		f.Add("api.example.com:443", s, "GET")
	}
	f.Add("API.EXAMPLE.COM.", "/img/x", "POST")
	f.Add("a.b.example.com", "/", "PUT")
	f.Add("0.eXAmple.Com", "%2Fadmin", "0") // not origin-form: decoding must not invent a path
	tab, err := New([]Route{
		{Name: "admin", Hosts: []string{"*.example.com"}, PathPrefix: "/admin", Pool: "admin"},
		{Name: "api", Hosts: []string{"api.example.com"}, PathPrefix: "/api/", Methods: []string{"GET"}, Pool: "api"},
		{Name: "img", Path: "/img/a", Pool: "img"},
		{Name: "default", Pool: "django"},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, host, target, method string) {
		i, r := Match(tab, Request[string]{Host: host, Target: target, Method: method})
		j, _ := Match(tab, Request[[]byte]{Host: []byte(host), Target: []byte(target), Method: []byte(method)})
		if i != j {
			t.Fatalf("string and bytes disagree: %d vs %d", i, j)
		}
		if r == nil {
			t.Fatal("a table with a default route matched nothing")
		}
		view, ok := referencePath(target)
		// One trailing dot is the absolute form of a name; "example.com.." is no
		// spelling of example.com (an empty label), so only one comes off.
		h := strings.ToLower(normalHost(host))
		meets := func(r *Route) bool {
			if len(r.Methods) > 0 && r.Methods[0] != method {
				return false
			}
			if len(r.Hosts) > 0 {
				if !isASCII(h) {
					return false // host conditions are ASCII (IDNs as xn--)
				}
				p := strings.ToLower(r.Hosts[0])
				if rest, wild := strings.CutPrefix(p, "*."); wild {
					label, found := strings.CutSuffix(h, "."+rest)
					if !found || label == "" || strings.Contains(label, ".") {
						return false
					}
				} else if h != p {
					return false
				}
			}
			if r.PathPrefix != "" && !(ok && strings.HasPrefix(view, r.PathPrefix)) {
				return false
			}
			if r.Path != "" && !(ok && view == r.Path) {
				return false
			}
			return true
		}
		if !meets(r) {
			t.Fatalf("Host %q target %q method %q matched %q, whose conditions its normal form %q does not meet", host, target, method, r.Name, view)
		}
		for k := 0; k < i; k++ {
			if earlier := tab.Routes()[k]; meets(earlier) {
				t.Fatalf("Host %q target %q: matched %q though the earlier %q's conditions hold (normal form %q)", host, target, r.Name, earlier.Name, view)
			}
		}
	})
}

// referencePath is how a normalising server sees a target's path: the part before the
// query, decoded once, cleaned. ok is false for a target with no path.
func referencePath(target string) (string, bool) {
	p := target
	if !strings.HasPrefix(p, "/") {
		scheme, rest, found := strings.Cut(p, "://")
		if !found || strings.ContainsAny(scheme, "/?#") {
			return "", false
		}
		k := strings.IndexAny(rest, "/?")
		if k < 0 || rest[k] == '?' {
			return "", false
		}
		p = rest[k:]
	}
	if k := strings.IndexAny(p, "?#"); k >= 0 {
		p = p[:k]
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			if d, ok := unhex2(p[i+1], p[i+2]); ok {
				b.WriteByte(d)
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	dec := b.String()
	if dec == "" || dec[0] != '/' {
		return "", false
	}
	clean := path.Clean(dec)
	// A path that ends in a directory ("/", "/." or "/..") keeps its trailing slash, as
	// RFC 3986 §5.2.4 keeps it.
	if (strings.HasSuffix(dec, "/") || strings.HasSuffix(dec, "/.") || strings.HasSuffix(dec, "/..")) && clean != "/" {
		clean += "/"
	}
	return clean, true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// BenchmarkMatch_50Routes: a request that falls through 49 host and path routes to the
// default one, as the fast path asks (bytes). The budget is 1 µs.
func BenchmarkMatch_50Routes(b *testing.B) {
	var routes []Route
	for i := range 49 {
		routes = append(routes, Route{Name: "r", Hosts: []string{"site" + string(rune('a'+i%26)) + ".example.com"}, PathPrefix: "/app/" + string(rune('a'+i%26)), Pool: "p"})
	}
	routes = append(routes, Route{Name: "default", Pool: "django"})
	tab, err := New(routes)
	if err != nil {
		b.Fatal(err)
	}
	req := Request[[]byte]{Host: []byte("www.example.com:443"), Target: []byte("/accounts/login/?next=/admin/"), Method: []byte("GET")}
	b.ReportAllocs()
	for b.Loop() {
		if _, r := Match(tab, req); r == nil {
			b.Fatal("no route")
		}
	}
}
