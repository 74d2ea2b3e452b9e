package mixedcontent

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

var scannerTests = []struct {
	name string
	html string
	want string // the URL found; "" for none
}{
	{"script double-quoted", `<html><head><script src="http://cdn.test/a.js"></script>`, "http://cdn.test/a.js"},
	{"script upper case", `<SCRIPT SRC='HTTP://cdn.test/A.js'></SCRIPT>`, "HTTP://cdn.test/A.js"},
	{"script unquoted", `<script src=http://cdn.test/a.js></script>`, "http://cdn.test/a.js"},
	{"script spaced attributes", "<script\ttype=\"text/javascript\"\n src = \"http://cdn.test/a.js\" defer>", "http://cdn.test/a.js"},
	{"script after text with <", `<p>1 < 2 and 3 <b>x</b></p><script src="http://cdn.test/a.js">`, "http://cdn.test/a.js"},
	{"script after << ", `<<script src="http://cdn.test/a.js">`, "http://cdn.test/a.js"},
	{"quoted > in another attribute", `<script data-x="a>b" src="http://cdn.test/a.js">`, "http://cdn.test/a.js"},
	{"apostrophe in an unquoted value", `<p title=it's>x</p><script src='http://cdn.test/a.js'>`, "http://cdn.test/a.js"},
	{"after a comment", `<!-- note --><script src="http://cdn.test/a.js">`, "http://cdn.test/a.js"},
	{"stylesheet double-quoted", `<link rel="stylesheet" href="http://cdn.test/a.css">`, "http://cdn.test/a.css"},
	{"stylesheet unquoted", `<link rel=stylesheet href=http://cdn.test/a.css>`, "http://cdn.test/a.css"},
	{"stylesheet href first, rel list, upper case", `<LINK HREF="http://cdn.test/a.css" REL="preload StyleSheet"/>`, "http://cdn.test/a.css"},
	{"stylesheet self-closed", `<link rel='stylesheet' href='http://cdn.test/a.css'/>`, "http://cdn.test/a.css"},
	{"script https", `<script src="https://cdn.test/a.js"></script>`, ""},
	{"script relative", `<script src="/static/a.js"></script>`, ""},
	{"script protocol-relative", `<script src="//cdn.test/a.js"></script>`, ""},
	{"inline script", `<script>var u = "http://cdn.test/";</script>`, ""},
	{"stylesheet https", `<link rel="stylesheet" href="https://cdn.test/a.css">`, ""},
	{"icon over http", `<link rel="icon" href="http://cdn.test/favicon.ico">`, ""},
	{"image over http", `<img src="http://cdn.test/a.png">`, ""},
	{"anchor over http", `<a href="http://cdn.test/">x</a>`, ""},
	{"scripts prefix of another tag", `<scripts src="http://cdn.test/a.js">`, ""},
	{"end tag", `</script src="http://cdn.test/a.js">`, ""},
}

// feedAll feeds parts in order and returns the URL found, copied out of the window.
func feedAll(parts ...[]byte) string {
	var s tagScanner
	for _, p := range parts {
		if url, ok := s.feed(p); ok {
			return string(url)
		}
	}
	return ""
}

func TestTagScanner(t *testing.T) {
	for _, tt := range scannerTests {
		t.Run(tt.name, func(t *testing.T) {
			if got := feedAll([]byte(tt.html)); got != tt.want {
				t.Errorf("got %q; want %q", got, tt.want)
			}
		})
	}
}

// A tag split across reads is found wherever the split falls, and byte by byte.
func TestTagScanner_SplitAcrossChunks(t *testing.T) {
	for _, tt := range scannerTests {
		t.Run(tt.name, func(t *testing.T) {
			b := []byte(tt.html)
			for i := 0; i <= len(b); i++ {
				if got := feedAll(b[:i], b[i:]); got != tt.want {
					t.Fatalf("split at %d (%q | %q): got %q; want %q", i, b[:i], b[i:], got, tt.want)
				}
			}
			parts := make([][]byte, len(b))
			for i := range b {
				parts[i] = b[i : i+1]
			}
			if got := feedAll(parts...); got != tt.want {
				t.Fatalf("byte by byte: got %q; want %q", got, tt.want)
			}
		})
	}
}

// A tag longer than the window is examined as far as the window holds.
func TestTagScanner_LongTag(t *testing.T) {
	long := strings.Repeat("x", 3*tagWindow)
	if got := feedAll([]byte(`<script src="http://cdn.test/a.js" integrity="` + long + `">`)); got != "http://cdn.test/a.js" {
		t.Errorf("src before a long attribute: got %q; want the URL", got)
	}
	if got := feedAll([]byte(`<script integrity="` + long + `" src="http://cdn.test/a.js">`)); got != "" {
		t.Errorf("src beyond the window: got %q; want none (documented limit)", got)
	}
	// The scanner is back in step after a long tag.
	if got := feedAll([]byte(`<div class="` + long + `"></div><script src="http://cdn.test/b.js">`)); got != "http://cdn.test/b.js" {
		t.Errorf("after a long tag: got %q; want http://cdn.test/b.js", got)
	}
}

type mixedCounter struct{ n atomic.Int64 }

func (c *mixedCounter) MixedContentPage() { c.n.Add(1) }

// reusableBody is a response body that can be rewound, so that measuring allocations
// measures the scan alone.
type reusableBody struct{ r bytes.Reader }

func (b *reusableBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *reusableBody) Close() error               { return nil }

func mixedResponse(page []byte) (*http.Response, *reusableBody) {
	body := &reusableBody{}
	body.r.Reset(page)
	req := httptest.NewRequest("GET", "/page", nil)
	req.Header.Set("X-Forwarded-Proto", "https")
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/html; charset=utf-8"}}, Body: body, Request: req}, body
}

// Sampling: one HTML response in SampleOneIn is scanned; the scan stops after ScanBytes.
func TestMixedContent_SampleAndBound(t *testing.T) {
	page := []byte(`<script src="http://app.test/marker.js"></script>`)
	counter := &mixedCounter{}
	mc := &Policy{Report: true, SampleOneIn: 3, Observer: counter}
	buf := make([]byte, 7)
	for range 9 {
		resp, body := mixedResponse(page)
		mc.Apply(resp)
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{resp.Body}, buf); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if body.r.Len() != 0 {
			t.Fatal("body not read to the end")
		}
	}
	if n := counter.n.Load(); n != 3 {
		t.Errorf("counted %d of 9 pages with SampleOneIn 3; want 3", n)
	}

	counter.n.Store(0)
	mc = &Policy{Report: true, ScanBytes: 64, Observer: counter}
	late := append(bytes.Repeat([]byte(" "), 64), page...)
	resp, _ := mixedResponse(late)
	mc.Apply(resp)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n := counter.n.Load(); n != 0 {
		t.Errorf("a script after ScanBytes was counted (%d); want 0", n)
	}
}

// The scan costs no allocation per response: the body wrapper and its window are pooled.
func TestMixedContent_NoAllocation(t *testing.T) {
	page := []byte(strings.Repeat("<p class=x>text</p>\n", 200) + `<link rel=stylesheet href="/a.css"><script src="/a.js"></script>`)
	mc := &Policy{UpgradeInsecureRequests: true, Report: true}
	resp, body := mixedResponse(page)
	buf := make([]byte, 512)
	allocs := testing.AllocsPerRun(100, func() {
		body.r.Reset(page)
		resp.Body = body
		resp.Header.Del("Content-Security-Policy")
		mc.Apply(resp)
		for {
			if _, err := resp.Body.Read(buf); err != nil {
				break
			}
		}
		resp.Body.Close()
	})
	if allocs > 1 { // the header value set on the response may allocate
		t.Errorf("%v allocations per response; want at most 1", allocs)
	}
}

func BenchmarkMixedContentScan(b *testing.B) {
	page := []byte(strings.Repeat("<div class=\"row\"><a href=\"/x\">link</a> text &amp; more</div>\n", 1000))
	mc := &Policy{Report: true}
	resp, body := mixedResponse(page)
	buf := make([]byte, 32<<10)
	b.ReportAllocs()
	b.SetBytes(int64(min(len(page), DefaultScanBytes)))
	for b.Loop() {
		body.r.Reset(page)
		resp.Body = body
		mc.Apply(resp)
		for {
			if _, err := resp.Body.Read(buf); err != nil {
				break
			}
		}
		resp.Body.Close()
	}
}
