package e2e

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// The request-smuggling classics and the RFC 9112 hygiene cases, sent over TLS on a raw
// socket to an edge in front of real Django: each gets its status, the connection is
// closed, and Django's access log shows that nothing arrived. On both data paths.
func TestSmuggling_RefusedBeforeTheTarget(t *testing.T) {
	cases := []struct {
		name   string
		raw    string
		status int
	}{
		{"CL.TE", "POST /post HTTP/1.1\r\nHost: app.test\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED", 400},
		{"TE.CL", "POST /post HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400},
		{"TE.TE obfuscated", "POST /post HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n", 400},
		{"unknown transfer coding", "POST /post HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"space before colon", "POST /post HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400},
		{"conflicting Content-Length", "POST /post HTTP/1.1\r\nHost: app.test\r\nContent-Length: 8\r\nContent-Length: 7\r\n\r\nSMUGGLED", 400},
		{"invalid field name", "GET /whoami HTTP/1.1\r\nHost: app.test\r\nX(Smuggled): 1\r\n\r\n", 400},
		{"obs-fold", "GET /whoami HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\n X-Smuggled: 1\r\n\r\n", 400},
		{"bare LF", "GET /whoami HTTP/1.1\nHost: app.test\n\n", 400},
		{"smuggled second request", "GET /whoami HTTP/1.1\r\nHost: app.test\r\n\r\nPOST /post HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	}
	forEachEngine(t, func(t *testing.T, engine string) {
		testutil.RequireDjango(t)
		django := testutil.StartDjango(t, testutil.LoopbackAddr(t, "127.0.0.2"), testutil.DjangoOptions{
			AllowedHosts: []string{"app.test"}, AccessLog: true,
		})
		cfg, _ := edgeConfig(t, []string{django.Addr}, "app.test", engine)
		e := startEdge(t, cfg)
		e.waitState(t, django.Addr, "healthy", 5*time.Second)
		for _, tc := range cases {
			before := strings.Count(django.Output(), `"POST /post`) + strings.Count(django.Output(), `"GET /whoami`)
			conn, err := tls.Dial("tcp", e.HTTPS, &tls.Config{InsecureSkipVerify: true, ServerName: "app.test", NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, tc.raw)
			br := bufio.NewReader(conn)
			var statuses []int
			for {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					break
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statuses = append(statuses, resp.StatusCode)
			}
			conn.Close()
			time.Sleep(100 * time.Millisecond) // let gunicorn log what it got
			after := strings.Count(django.Output(), `"POST /post`) + strings.Count(django.Output(), `"GET /whoami`)
			wantReached := 0
			if tc.name == "smuggled second request" {
				wantReached = 1 // the valid first request
			}
			if len(statuses) == 0 || statuses[len(statuses)-1] != tc.status {
				t.Errorf("%s: statuses %v; want the last to be %d", tc.name, statuses, tc.status)
			}
			if after-before != wantReached {
				t.Errorf("%s: %d request(s) reached Django; want %d\n%s", tc.name, after-before, wantReached, django.Output())
			}
		}
	})
}
