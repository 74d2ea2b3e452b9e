// Package mixedcontent is the edge's answer to mixed content: an HTML page served over
// https that loads scripts or stylesheets over plain http, which browsers block. A Policy
// adds "Content-Security-Policy: upgrade-insecure-requests" and counts, on a sample of
// HTML responses, the pages that reference http:// scripts or stylesheets. Both wire
// formats of the data path use it: Apply wraps a net/http response, Start begins the
// fast path's scan of a response it relays itself.
package mixedcontent

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"edgeproxy/proxy/h1"
)

// Policy says what the edge does about mixed content. It can add
// "Content-Security-Policy: upgrade-insecure-requests" (the browser then fetches those
// resources over https instead), and it can count, on a sample of HTML responses, the
// pages that reference http:// scripts or stylesheets, so that the operator learns which
// pages to fix.
//
// A nil *Policy does nothing, and so does the zero value; its exported settings are
// read, never written, so one value may serve every request.
type Policy struct {
	// UpgradeInsecureRequests adds "Content-Security-Policy: upgrade-insecure-requests"
	// to HTML responses on https that carry no Content-Security-Policy of their own (a
	// site's own policy is never changed).
	UpgradeInsecureRequests bool
	// Report scans HTML responses for <script src="http://..."> and
	// <link rel="stylesheet" href="http://...">, counts each page that has one through
	// Observer, and logs the first such page of each path once (see maxReportedPaths).
	Report bool
	// SampleOneIn scans one HTML response in SampleOneIn; 0 and 1 mean every one.
	SampleOneIn int
	// ScanBytes bounds the scan of one response to its first ScanBytes bytes (where
	// <head> is); 0 means DefaultScanBytes. The body is never held back:
	// it is scanned as it streams to the client.
	ScanBytes int
	// Observer counts the pages found; nil means they are only logged.
	Observer Observer
	// Logger receives the once-per-path notice; nil means no logging.
	Logger *slog.Logger

	seq atomic.Uint64 // HTML responses seen, for sampling

	// reportedMu guards reported.
	reportedMu sync.Mutex
	reported   map[string]bool // paths logged; at most maxReportedPaths
}

// Observer counts HTML pages found to load http:// scripts or stylesheets;
// telemetry.Metrics implements it.
type Observer interface {
	MixedContentPage()
}

// DefaultScanBytes is the part of an HTML response scanned when
// Policy.ScanBytes is 0: a page's <head>, where scripts and stylesheets usually
// are, is well within it.
const DefaultScanBytes = 64 << 10

// maxReportedPaths bounds the paths remembered as logged. Paths come from requests, so
// beyond it new ones are no longer logged (the counter goes on), rather than let a site
// whose every 404 page loads an http:// script fill memory or the log.
const maxReportedPaths = 1024

// Apply runs on every response the net/http path proxies: it adds the CSP field and
// wraps the body in a scan when the response is sampled. A nil m does nothing.
func (m *Policy) Apply(resp *http.Response) {
	if m == nil || (!m.UpgradeInsecureRequests && !m.Report) || !isHTML(resp.Header) {
		return
	}
	// The proxy set X-Forwarded-Proto on the outgoing request from the client's
	// connection (or a trusted proxy's word), so it says whether the page is on https.
	if resp.Request == nil || resp.Request.Header.Get("X-Forwarded-Proto") != "https" {
		return
	}
	if m.UpgradeInsecureRequests && len(resp.Header.Values("Content-Security-Policy")) == 0 {
		resp.Header.Set("Content-Security-Policy", "upgrade-insecure-requests")
	}
	if !m.Report || resp.Body == nil || resp.Body == http.NoBody || resp.StatusCode < 200 || resp.StatusCode > 299 {
		return
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return // compressed: the markup is not readable without inflating it, which costs too much here
	}
	if n := m.SampleOneIn; n > 1 && m.seq.Add(1)%uint64(n) != 0 {
		return
	}
	b := mixedBodyPool.Get().(*mixedBody)
	b.rc, b.m, b.req = resp.Body, m, resp.Request
	b.left = m.ScanBytes
	if b.left <= 0 {
		b.left = DefaultScanBytes
	}
	resp.Body = b
}

// isHTML reports whether a response's Content-Type is HTML, without allocating.
func isHTML(h http.Header) bool { return isHTMLType(h.Get("Content-Type")) }

// isHTMLType reports whether a Content-Type value is HTML.
func isHTMLType(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(ct)
	return strings.EqualFold(ct, "text/html") || strings.EqualFold(ct, "application/xhtml+xml")
}

// found records a page that loads url (a script or stylesheet) over http.
func (m *Policy) found(host, path string, url []byte) {
	if m.Observer != nil {
		m.Observer.MixedContentPage()
	}
	if m.Logger == nil {
		return
	}
	m.reportedMu.Lock()
	if m.reported == nil {
		m.reported = map[string]bool{}
	}
	seen, full := m.reported[path], len(m.reported) >= maxReportedPaths
	if !seen && !full {
		m.reported[path] = true
	}
	m.reportedMu.Unlock()
	if seen || full {
		return
	}
	if len(url) > 200 {
		url = url[:200]
	}
	fix := "browsers block it on an https page: use https:// (or a relative URL) in the page, or set headers.upgrade_insecure_requests: true"
	if m.UpgradeInsecureRequests {
		fix = "headers.upgrade_insecure_requests makes browsers fetch it over https; fix the page so that it does not depend on that"
	}
	m.Logger.Warn("mixed content: an HTML page loads a script or stylesheet over http://; "+fix,
		"host", host, "path", path, "url", string(url))
}

// mixedBody is a response body that scans what streams through it. It comes from
// mixedBodyPool and goes back there on Close: ReverseProxy closes a response body exactly
// once, after its last Read.
type mixedBody struct {
	rc   io.ReadCloser
	m    *Policy
	req  *http.Request
	left int  // bytes still to scan
	done bool // found, or scanned enough: pass the rest through
	s    tagScanner
}

var mixedBodyPool = sync.Pool{New: func() any { return new(mixedBody) }}

var _ io.ReadCloser = (*mixedBody)(nil)

func (b *mixedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 && !b.done {
		chunk := p[:n]
		if len(chunk) > b.left {
			chunk = chunk[:b.left]
		}
		b.left -= len(chunk)
		if url, ok := b.s.feed(chunk); ok {
			b.done = true
			b.m.found(b.req.Host, b.req.URL.Path, url)
		} else if b.left == 0 {
			b.done = true
		}
	}
	return n, err
}

func (b *mixedBody) Close() error {
	err := b.rc.Close()
	*b = mixedBody{} // nothing of this response stays in the pool
	mixedBodyPool.Put(b)
	return err
}

// tagWindow is the longest tag the scanner reads whole. A longer tag is examined as far
// as the window holds (the attributes that matter come early) and the rest is skipped.
const tagWindow = 1024

// tagScanner finds, in HTML that arrives in pieces, the first <script> whose src is an
// http:// URL or <link rel=stylesheet> whose href is one. It is not an HTML parser: it
// reads each tag into a fixed window and looks at its attributes; text between tags is
// skipped byte by byte. Tags inside comments and script text are read too, which only
// finds what a browser might also load (document.write of a script tag).
type tagScanner struct {
	inTag bool
	skip  bool // the tag overflowed the window and was examined: skip to its end
	quote byte // the open quote of an attribute value in the tag, or 0
	prev  byte // the last byte of the tag that was not a space, to tell a value's quote
	n     int  // bytes of the tag in win
	win   [tagWindow]byte
}

// feed scans p. It reports the URL found and true at the first mixed-content tag; the URL
// points into the scanner's window and is valid until the next call.
func (s *tagScanner) feed(p []byte) ([]byte, bool) {
	for i := 0; i < len(p); i++ {
		if !s.inTag {
			j := bytes.IndexByte(p[i:], '<')
			if j < 0 {
				return nil, false
			}
			i += j
			s.inTag, s.skip, s.quote, s.prev, s.n = true, false, 0, '<', 0
			continue
		}
		c := p[i]
		if s.n == 0 && !s.skip && !isLetter(c) {
			// "< b", "</p>", "<!--": not the start of a tag that can load anything.
			s.inTag = false
			if c == '<' {
				i-- // "<<script": the tag starts at the second '<'
			}
			continue
		}
		switch {
		case s.quote != 0:
			if c == s.quote {
				s.quote = 0
			}
		case c == '>':
			s.inTag = false
			if !s.skip {
				if url, ok := mixedTag(s.win[:s.n]); ok {
					return url, true
				}
			}
			continue
		case (c == '"' || c == '\'') && s.prev == '=':
			s.quote = c
		}
		if !isSpace(c) {
			s.prev = c
		}
		if s.skip {
			continue
		}
		if s.n == len(s.win) {
			s.skip = true
			if url, ok := mixedTag(s.win[:s.n]); ok {
				s.inTag = false
				return url, true
			}
			continue
		}
		s.win[s.n] = c
		s.n++
	}
	return nil, false
}

// mixedTag looks at one tag (the bytes between '<' and '>') and returns the http:// URL
// it loads, if it is a script or a stylesheet link that does.
func mixedTag(tag []byte) ([]byte, bool) {
	name, rest := nextToken(tag)
	isScript := equalFold(name, "script")
	if !isScript && !equalFold(name, "link") {
		return nil, false
	}
	var src, href []byte
	stylesheet := false
	for len(rest) > 0 {
		var attr, val []byte
		attr, val, rest = nextAttr(rest)
		switch {
		case isScript && equalFold(attr, "src"):
			src = val
		case !isScript && equalFold(attr, "href"):
			href = val
		case !isScript && equalFold(attr, "rel"):
			stylesheet = stylesheet || hasToken(val, "stylesheet")
		}
	}
	url := src
	if !isScript {
		if !stylesheet {
			return nil, false
		}
		url = href
	}
	url = bytes.TrimLeft(url, " \t\n\r\f")
	if len(url) >= 7 && equalFold(url[:7], "http://") {
		return url, true
	}
	return nil, false
}

// nextToken returns the tag name at the start of tag and what follows it.
func nextToken(tag []byte) (name, rest []byte) {
	i := 0
	for i < len(tag) && !isSpace(tag[i]) && tag[i] != '/' {
		i++
	}
	return tag[:i], tag[i:]
}

// nextAttr reads one attribute (name, and value if any: quoted, or unquoted up to the
// next space) from s. It returns a nil name when none is left.
func nextAttr(s []byte) (name, val, rest []byte) {
	i := 0
	for i < len(s) && (isSpace(s[i]) || s[i] == '/') {
		i++
	}
	start := i
	for i < len(s) && !isSpace(s[i]) && s[i] != '=' && s[i] != '/' {
		i++
	}
	if i == start {
		if i < len(s) {
			return s[i:i], nil, s[i+1:] // a stray '=': skip it
		}
		return nil, nil, nil
	}
	name = s[start:i]
	j := i
	for j < len(s) && isSpace(s[j]) {
		j++
	}
	if j >= len(s) || s[j] != '=' {
		return name, nil, s[i:]
	}
	j++
	for j < len(s) && isSpace(s[j]) {
		j++
	}
	if j < len(s) && (s[j] == '"' || s[j] == '\'') {
		q := s[j]
		end := bytes.IndexByte(s[j+1:], q)
		if end < 0 {
			return name, s[j+1:], nil // cut off by the window
		}
		return name, s[j+1 : j+1+end], s[j+2+end:]
	}
	k := j
	for k < len(s) && !isSpace(s[k]) {
		k++
	}
	return name, s[j:k], s[k:]
}

// hasToken reports whether the space-separated list s holds token (lower case), ignoring
// case.
func hasToken(s []byte, token string) bool {
	for len(s) > 0 {
		var tok []byte
		tok, s = nextToken(bytes.TrimLeft(s, " \t\n\r\f"))
		if equalFold(tok, token) {
			return true
		}
		if len(tok) == 0 && len(s) > 0 {
			s = s[1:] // a '/' in the list
		}
	}
	return false
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

// equalFold compares ASCII case-insensitively without allocating; lower is lower case.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// Active reports whether m does anything.
func (m *Policy) Active() bool {
	return m != nil && (m.UpgradeInsecureRequests || m.Report)
}

// Start is Apply for the fast path, on a response to an https request: it returns extra
// plus the CSP field when the page gets one, and a scan of the body when this response is
// sampled for the report (nil otherwise). The caller feeds the body to the scan as it
// relays it and calls Finish.
func (m *Policy) Start(resp *h1.Response, extra h1.Header, host, target []byte) (h1.Header, *Scan) {
	ct, _ := resp.Header.Get("Content-Type")
	if !isHTMLType(string(ct)) {
		return extra, nil
	}
	if _, hasCSP := resp.Header.Get("Content-Security-Policy"); m.UpgradeInsecureRequests && !hasCSP {
		// A new slice: extra may be the handler's shared HSTS field.
		extra = append(extra[:len(extra):len(extra)], h1.Field{Name: []byte("Content-Security-Policy"), Value: []byte("upgrade-insecure-requests")})
	}
	if !m.Report || resp.Status < 200 || resp.Status > 299 || resp.Framing == h1.FramingNone {
		return extra, nil
	}
	if ce, ok := resp.Header.Get("Content-Encoding"); ok && !strings.EqualFold(string(ce), "identity") {
		return extra, nil
	}
	if n := m.SampleOneIn; n > 1 && m.seq.Add(1)%uint64(n) != 0 {
		return extra, nil
	}
	sc := scanPool.Get().(*Scan)
	sc.m, sc.host = m, string(host)
	sc.path = string(target)
	if i := strings.IndexByte(sc.path, '?'); i >= 0 {
		sc.path = sc.path[:i]
	}
	sc.left = m.ScanBytes
	if sc.left <= 0 {
		sc.left = DefaultScanBytes
	}
	return extra, sc
}

// Scan is the fast path's scan of one response body, like mixedBody's. A nil *Scan
// is valid and scans nothing.
type Scan struct {
	m          *Policy
	host, path string
	left       int
	done       bool
	s          tagScanner
}

var scanPool = sync.Pool{New: func() any { return new(Scan) }}

// Feed scans the next body bytes.
func (sc *Scan) Feed(p []byte) {
	if sc == nil || sc.done || len(p) == 0 {
		return
	}
	if len(p) > sc.left {
		p = p[:sc.left]
	}
	sc.left -= len(p)
	if url, ok := sc.s.feed(p); ok {
		sc.done = true
		sc.m.found(sc.host, sc.path, url)
	} else if sc.left == 0 {
		sc.done = true
	}
}

// Finish returns the scan to its pool; a nil scan is fine.
func (sc *Scan) Finish() {
	if sc == nil {
		return
	}
	*sc = Scan{}
	scanPool.Put(sc)
}
