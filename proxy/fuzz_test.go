package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"edgeproxy/pool"
)

// captureTransport records the request that would reach the target.
type captureTransport struct{ out *http.Request }

func (c *captureTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.out = r
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: r, ProtoMajor: 1, ProtoMinor: 1}, nil
}

// FuzzHeaderRewriting feeds arbitrary client headers through the handler and checks the
// header policy on what reaches the target: the client address is the only
// X-Forwarded-For, no forwarding header of the client survives, nothing named in
// Connection passes, and Host is the client's.
func FuzzHeaderRewriting(f *testing.F) {
	f.Add("X-Forwarded-For", "6.6.6.6", "Connection", "X-Forwarded-For, keep-alive", "app.test")
	f.Add("Forwarded", "for=1.2.3.4;proto=http", "X-Real-Ip", "1.1.1.1", "example.com:8443")
	f.Add("Te", "trailers", "Connection", "Te", "[::1]:443")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, host string) {
		if !validField(k1, v1) || !validField(k2, v2) {
			return // net/http refuses such a request before any handler sees it
		}
		ct := &captureTransport{}
		h := New(Options{Picker: staticPicker{&pool.Target{Addr: "127.0.0.1:8000"}}, Transport: ct})
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = "192.0.2.1:4242"
		req.Host = host
		req.Header.Add(k1, v1)
		req.Header.Add(k2, v2)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if ct.out == nil {
			return // refused before reaching a target
		}
		out := ct.out.Header
		if got := out.Values("X-Forwarded-For"); len(got) != 1 || got[0] != "192.0.2.1" {
			t.Fatalf("X-Forwarded-For %q; want exactly the client address", got)
		}
		wantHosts := 1
		if host == "" {
			wantHosts = 0 // no Host, no X-Forwarded-Host (as on the fast path)
		}
		if out.Get("Forwarded") != "" || out.Get("X-Forwarded-Proto") != "http" || len(out.Values("X-Forwarded-Host")) != wantHosts {
			t.Fatalf("forwarding headers not rebuilt: %v", out)
		}
		for _, c := range req.Header.Values("Connection") {
			for _, name := range strings.Split(c, ",") {
				name = http.CanonicalHeaderKey(strings.Trim(name, " \t"))
				if name != "" && name != "Te" && name != "X-Forwarded-For" && name != "X-Forwarded-Host" && name != "X-Forwarded-Proto" && len(out.Values(name)) > 0 {
					t.Fatalf("%s named in Connection reached the target", name)
				}
			}
		}
		if out.Get("Connection") != "" || out.Get("Keep-Alive") != "" || out.Get("Proxy-Connection") != "" {
			t.Fatalf("hop-by-hop headers reached the target: %v", out)
		}
		if ct.out.Host != host {
			t.Fatalf("Host %q; want the client's %q", ct.out.Host, host)
		}
	})
}

// validField reports whether a header field could arrive through net/http's server: the
// name a token, the value without control characters other than tab.
func validField(name, value string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
