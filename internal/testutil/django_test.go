package testutil

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// noRedirect is a client that returns redirects instead of following them.
var noRedirect = &http.Client{
	Timeout: 10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// get sends GET rawURL with the Host header host and returns status, headers
// and body.
func get(t *testing.T, rawURL, host string, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", rawURL, err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

type whoami struct {
	Instance        string `json:"instance"`
	IsSecure        bool   `json:"is_secure"`
	Host            string `json:"host"`
	RemoteAddr      string `json:"remote_addr"`
	Client          string `json:"client"`
	XForwardedFor   string `json:"x_forwarded_for"`
	XForwardedProto string `json:"x_forwarded_proto"`
	XForwardedHost  string `json:"x_forwarded_host"`
	Path            string `json:"path"`
	Method          string `json:"method"`
}

func getWhoami(t *testing.T, d *Django, host string, hdr map[string]string) whoami {
	t.Helper()
	code, _, body := get(t, d.URL("/whoami?x=1"), host, hdr)
	if code != http.StatusOK {
		t.Fatalf("/whoami: status %d: %s", code, body)
	}
	var w whoami
	if err := json.Unmarshal([]byte(body), &w); err != nil {
		t.Fatalf("/whoami: %v: %s", err, body)
	}
	return w
}

func TestDjango(t *testing.T) {
	RequireDjango(t)
	start := time.Now()
	d := StartDjango(t, LoopbackAddr(t, "127.0.0.1"), DjangoOptions{Instance: "alpha"})
	t.Logf("Django ready on %s in %v", d.Addr, time.Since(start).Round(time.Millisecond))
	if d.Host != "app.test" {
		t.Errorf("Host = %q", d.Host)
	}

	w := getWhoami(t, d, "app.test", nil)
	want := whoami{Instance: "alpha", Host: "app.test", RemoteAddr: "127.0.0.1", Client: "127.0.0.1", Path: "/whoami?x=1", Method: "GET"}
	if w != want {
		t.Errorf("/whoami = %+v, want %+v", w, want)
	}
	w = getWhoami(t, d, "app.test", map[string]string{
		"X-Forwarded-For":   "192.0.2.7, 127.0.0.9",
		"X-Forwarded-Proto": "https",
		"X-Forwarded-Host":  "app.test",
	})
	if !w.IsSecure || w.Client != "192.0.2.7" || w.XForwardedProto != "https" || w.XForwardedHost != "app.test" {
		t.Errorf("/whoami behind a proxy = %+v", w)
	}

	if code, _, body := get(t, d.URL("/"), "app.test", nil); code != 200 || body != "ok alpha" {
		t.Errorf("/ = %d %q", code, body)
	}
	if code, _, _ := get(t, d.URL("/whoami"), "evil.test", nil); code != http.StatusBadRequest {
		t.Errorf("/whoami with a foreign Host: status %d, want 400", code)
	}
	if code, _, _ := get(t, d.URL("/whoami"), "app.test", map[string]string{"X-Forwarded-Host": "evil.test"}); code != http.StatusBadRequest {
		t.Errorf("/whoami with a foreign X-Forwarded-Host: status %d, want 400", code)
	}

	code, hdr, _ := get(t, d.URL("/admin/"), "app.test", nil)
	if code != http.StatusFound || hdr.Get("Location") != "/admin/login/?next=/admin/" {
		t.Errorf("/admin/ = %d Location %q, want 302 to /admin/login/?next=/admin/", code, hdr.Get("Location"))
	}
	code, _, body := get(t, d.URL("/admin/login/?next=/admin/"), "app.test", nil)
	if code != http.StatusOK || !strings.Contains(body, "Log in") {
		t.Errorf("/admin/login/ = %d, body has no log-in form:\n%.300s", code, body)
	}

	code, hdr, body = get(t, d.URL("/mixed?port=8080"), "app.test", nil)
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") ||
		!strings.Contains(body, `<script src="http://app.test:8080/static-marker.js"></script>`) {
		t.Errorf("/mixed = %d %q:\n%s", code, hdr.Get("Content-Type"), body)
	}
	code, hdr, body = get(t, d.URL("/static-marker.js"), "app.test", nil)
	if code != 200 || hdr.Get("Content-Type") != "application/javascript" || !strings.Contains(body, "MARKER-LOADED") {
		t.Errorf("/static-marker.js = %d %q: %s", code, hdr.Get("Content-Type"), body)
	}

	// Bodies, with and without Content-Length.
	for _, chunked := range []bool{false, true} {
		payload := strings.Repeat("0123456789", 300_000) // 3 MB, above Django's in-memory limit
		req, _ := http.NewRequest(http.MethodPost, d.URL("/post"), io.NopCloser(strings.NewReader(payload)))
		req.Host = "app.test"
		if !chunked {
			req.ContentLength = int64(len(payload))
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var pr struct {
			Length           int    `json:"length"`
			TransferEncoding string `json:"transfer_encoding"`
		}
		err = json.NewDecoder(resp.Body).Decode(&pr)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || pr.Length != len(payload) {
			t.Errorf("POST /post (chunked=%v): %d %+v %v", chunked, resp.StatusCode, pr, err)
		}
	}

	// A crash, then a restart on the same address.
	d.Kill()
	if _, err := http.Get(d.URL("/")); err == nil {
		t.Errorf("Django still answers after Kill")
	}
	start = time.Now()
	d.Start()
	t.Logf("Django restarted in %v", time.Since(start).Round(time.Millisecond))
	if w := getWhoami(t, d, "app.test", nil); w.Instance != "alpha" {
		t.Errorf("after restart: %+v", w)
	}

	// A graceful stop lets an in-flight request finish.
	var wg sync.WaitGroup
	wg.Add(1)
	var slowCode int
	var slowBody string
	go func() {
		defer wg.Done()
		req, _ := http.NewRequest(http.MethodGet, d.URL("/slow?ms=1500"), nil)
		req.Host = "app.test"
		resp, err := noRedirect.Do(req)
		if err != nil {
			slowBody = err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slowCode, slowBody = resp.StatusCode, string(b)
	}()
	time.Sleep(300 * time.Millisecond)
	start = time.Now()
	d.Stop()
	t.Logf("graceful stop took %v", time.Since(start).Round(time.Millisecond))
	wg.Wait()
	if slowCode != 200 || slowBody != "slow done" {
		t.Errorf("/slow during Stop = %d %q", slowCode, slowBody)
	}
	d.Stop() // no-op
	d.Start()
	WaitHTTPHost(t, d.URL("/"), "app.test", nil, 200, 5*time.Second)
}

func TestDjangoSecondLoopbackAddress(t *testing.T) {
	RequireDjango(t)
	a := StartDjango(t, LoopbackAddr(t, "127.0.0.1"), DjangoOptions{Instance: "one"})
	b := StartDjango(t, LoopbackAddr(t, "127.0.0.2"), DjangoOptions{
		Instance:     "two",
		AllowedHosts: []string{"other.test", ".app.test"},
		Workers:      2,
		Threads:      2,
	})
	if b.Host != "other.test" {
		t.Errorf("Host = %q", b.Host)
	}
	if w := getWhoami(t, a, "app.test", nil); w.Instance != "one" {
		t.Errorf("first: %+v", w)
	}
	for _, host := range []string{"other.test", "app.test", "www.app.test"} {
		w := getWhoami(t, b, host, nil)
		if w.Instance != "two" || w.Host != host || w.RemoteAddr != "127.0.0.1" {
			t.Errorf("second, Host %s: %+v", host, w)
		}
	}
	if code, _, _ := get(t, a.URL("/"), "other.test", nil); code != 400 {
		t.Errorf("first with Host other.test: %d, want 400", code)
	}

	// gunicorn dying on its own (not through Kill) is seen, and Start works.
	if err := syscall.Kill(-b.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.Running() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if b.Running() {
		t.Fatalf("Running() still true after the process group was killed")
	}
	b.Start()
	if w := getWhoami(t, b, "other.test", nil); w.Instance != "two" {
		t.Errorf("after restart: %+v", w)
	}
}

// TestDjangoMigrateAdminLogin logs in to the admin with the superuser that
// Migrate creates, through Django's CSRF protection.
func TestDjangoMigrateAdminLogin(t *testing.T) {
	RequireDjango(t)
	start := time.Now()
	d := StartDjango(t, LoopbackAddr(t, "127.0.0.1"), DjangoOptions{Migrate: true, CSRFTrustedOrigins: []string{"app.test"}})
	t.Logf("migrated and started in %v", time.Since(start).Round(time.Millisecond))

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	// The cookie jar keys cookies on the URL's host, so address the site by
	// IP and set Host per request.
	do := func(method, path string, form url.Values) (*http.Response, string) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, d.URL(path), body)
		req.Host = "app.test"
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Referer", "http://app.test/admin/login/")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	_, page := do("GET", "/admin/login/?next=/admin/", nil)
	m := regexp.MustCompile(`name="csrfmiddlewaretoken" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the login page")
	}
	form := url.Values{"csrfmiddlewaretoken": {m[1]}, "username": {DjangoAdminUser}, "password": {"wrong"}, "next": {"/admin/"}}
	if resp, body := do("POST", "/admin/login/?next=/admin/", form); resp.StatusCode != 200 || !strings.Contains(body, "correct username and password") {
		t.Errorf("wrong password: %d\n%.400s", resp.StatusCode, body)
	}
	form.Set("password", DjangoAdminPassword)
	resp, body := do("POST", "/admin/login/?next=/admin/", form)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/admin/" {
		t.Fatalf("login: %d Location %q\n%.400s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	if resp, body := do("GET", "/admin/", nil); resp.StatusCode != 200 || !strings.Contains(body, "Site administration") {
		t.Errorf("/admin/ after login: %d\n%.300s", resp.StatusCode, body)
	}
}
