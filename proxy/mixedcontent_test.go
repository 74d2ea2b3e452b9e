package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"edgeproxy/internal/testutil"
	"edgeproxy/mixedcontent"
)

type mixedCounter struct{ n atomic.Int64 }

func (c *mixedCounter) MixedContentPage() { c.n.Add(1) }

// A page on https that loads an http:// script gets upgrade-insecure-requests when it has
// no policy of its own, and is counted and logged once per path; other responses are left
// alone.
func TestMixedContent(t *testing.T) {
	page := `<!DOCTYPE html><html><head><script src="http://app.test/marker.js"></script></head></html>`
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/json":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"html": "<script src=\"http://app.test/x.js\">"}`)
			return
		case "/own-csp":
			w.Header().Set("Content-Security-Policy", "default-src 'self'")
		case "/clean":
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, `<script src="/static/a.js"></script>`)
			return
		case "/gzip":
			w.Header().Set("Content-Encoding", "gzip")
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, page)
	}))
	defer backend.Close()
	counter := &mixedCounter{}
	logs := &testutil.Buffer{}
	mc := &mixedcontent.Policy{UpgradeInsecureRequests: true, Report: true, Observer: counter, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	front := frontend(t, Options{Picker: pickerFor(backend), MixedContent: mc})
	plain := httptest.NewServer(New(Options{Picker: pickerFor(backend), MixedContent: mc}))
	defer plain.Close()

	tests := []struct {
		name, url, wantCSP string
		wantCounted        int64
	}{
		{"html page", front.URL + "/page", "upgrade-insecure-requests", 1},
		{"same page again", front.URL + "/page", "upgrade-insecure-requests", 1},
		{"own policy kept", front.URL + "/own-csp", "default-src 'self'", 1},
		{"not html", front.URL + "/json", "", 0},
		{"clean page", front.URL + "/clean", "upgrade-insecure-requests", 0},
		{"compressed page not scanned", front.URL + "/gzip", "upgrade-insecure-requests", 0},
		{"plain http: not a mixed-content page", plain.URL + "/page", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := counter.n.Load()
			resp, err := front.Client().Get(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got := strings.Join(resp.Header.Values("Content-Security-Policy"), " | "); got != tt.wantCSP {
				t.Errorf("Content-Security-Policy %q; want %q", got, tt.wantCSP)
			}
			if got := counter.n.Load() - before; got != tt.wantCounted {
				t.Errorf("counted %d; want %d", got, tt.wantCounted)
			}
			if tt.url == front.URL+"/page" && string(body) != page {
				t.Errorf("body changed: %q", body)
			}
		})
	}
	if n := strings.Count(logs.String(), "mixed content:"); n != 2 {
		t.Errorf("logged %d times; want 2 (once for /page, once for /own-csp):\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "path=/page url=http://app.test/marker.js") {
		t.Errorf("log lacks the path and URL:\n%s", logs)
	}
}

// Options off: nothing added, nothing counted.
func TestMixedContent_Off(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<script src="http://app.test/marker.js"></script>`)
	}))
	defer backend.Close()
	counter := &mixedCounter{}
	for name, mc := range map[string]*mixedcontent.Policy{"nil": nil, "zero": {Observer: counter}} {
		front := frontend(t, Options{Picker: pickerFor(backend), MixedContent: mc})
		resp, err := front.Client().Get(front.URL)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if csp := resp.Header.Get("Content-Security-Policy"); csp != "" {
			t.Errorf("%s: Content-Security-Policy %q; want none", name, csp)
		}
	}
	if n := counter.n.Load(); n != 0 {
		t.Errorf("counted %d; want 0", n)
	}
}
