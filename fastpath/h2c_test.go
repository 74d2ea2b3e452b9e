package fastpath

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// chunkConn is a connection whose reads return the given chunks, one a read, then EOF.
type chunkConn struct {
	net.Conn
	chunks []string
	reads  int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	c.reads++
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	if c.chunks[0] = c.chunks[0][n:]; c.chunks[0] == "" {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

// gateOutput is what net/http would read through a gate over chunks (the first being
// what the fast path had read already) until the gate's EOF.
func gateOutput(t *testing.T, state *tls.ConnectionState, h2c bool, chunks ...string) string {
	t.Helper()
	g := newGateConn(&chunkConn{chunks: chunks[1:]}, state, nil, []byte(chunks[0]), 16<<10, h2c)
	out, err := io.ReadAll(g)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// The start of an HTTP/2 connection: the preface, then an empty SETTINGS frame.
const h2Start = h2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"

// With h2c, a plain connection that starts with the HTTP/2 preface passes the gate as it
// is, whether the preface arrives whole or in pieces (the first of them a complete
// HTTP/1.1-looking head, "PRI * HTTP/2.0\r\n\r\n", which the gate must not judge alone).
func TestGate_H2CPrefacePassesUnchecked(t *testing.T) {
	for _, chunks := range [][]string{
		{h2Start},
		{"", h2Start},
		{"PRI * HTTP/2.0\r\n\r\nS", "M\r\n\r\n", h2Start[len(h2Preface):]},
		{"P", "RI", " * HTTP/2.0\r\n\r\nSM\r\n\r", "\n" + h2Start[len(h2Preface):]},
	} {
		if got := gateOutput(t, nil, true, chunks...); got != h2Start {
			t.Errorf("chunks %q: gate let through %q; want the bytes unchanged", chunks, got)
		}
	}
}

// After the preface, small reads (HTTP/2's frame headers are 9 bytes) are served from a
// buffer, one read of the connection for what arrived at once, and large reads go
// straight to the connection: h2c costs the system calls HTTP/2 over TLS does.
func TestGate_H2CSmallReadsAreBuffered(t *testing.T) {
	frames := strings.Repeat("\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x01\x00\x00", 10) // WINDOW_UPDATEs
	big := strings.Repeat("d", gateReadSize)
	conn := &chunkConn{chunks: []string{h2Preface, frames, big}}
	g := newGateConn(conn, nil, nil, nil, 16<<10, true)
	var got []byte
	p := make([]byte, 9)
	for len(got) < len(h2Preface)+len(frames) {
		n, err := g.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p[:n]...)
	}
	if string(got) != h2Preface+frames {
		t.Fatalf("read %q; want the preface and the frames", got)
	}
	if conn.reads != 2 {
		t.Errorf("%d reads of the connection for the preface and the frames; want 2", conn.reads)
	}
	large := make([]byte, gateReadSize)
	if n, err := io.ReadFull(g, large); err != nil || string(large[:n]) != big {
		t.Fatalf("large read: %d bytes, %v", n, err)
	}
	if conn.reads != 3 {
		t.Errorf("%d reads of the connection after a large read; want 3", conn.reads)
	}
}

// Without h2c, or on a TLS connection, or when the bytes only look like the preface, the
// gate refuses them as today: the request line "PRI * HTTP/2.0" is HTTP/1.1's 505.
func TestGate_PrefaceRefusedWithoutH2COrWhenWrong(t *testing.T) {
	refused := string(refusalHead(505))
	for _, tt := range []struct {
		name   string
		state  *tls.ConnectionState
		h2c    bool
		chunks []string
	}{
		{"h2c off", nil, false, []string{h2Start}},
		{"TLS", &tls.ConnectionState{}, true, []string{h2Start}},
		{"wrong byte", nil, true, []string{"PRI * HTTP/2.0\r\n\r\nSX\r\n\r\n"}},
		{"wrong byte, split", nil, true, []string{"PRI * HTTP/2.0\r\n", "\r\nSM\r\r\n\r\n"}},
	} {
		if got := gateOutput(t, tt.state, tt.h2c, tt.chunks...); got != refused {
			t.Errorf("%s: gate let through %q; want the 505 refusal %q", tt.name, got, refused)
		}
	}
}

// With h2c, HTTP/1.1 heads are checked as without: a good one passes, a bad one is
// refused.
func TestGate_H2CKeepsCheckingHTTP1(t *testing.T) {
	good := "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	if got := gateOutput(t, nil, true, "G", good[1:]); got != good {
		t.Errorf("gate let through %q; want %q", got, good)
	}
	if got := gateOutput(t, nil, true, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"); got != string(refusalHead(400)) {
		t.Errorf("gate let through %q; want the 400 refusal", got)
	}
}

// startH2CServer is startServer on a plain listener with h2c on or off.
func startH2CServer(t *testing.T, fast, h2c bool, opts Options) *testServer {
	t.Helper()
	return startServerWith(t, fast, opts, false, 60*time.Second, func(so *ServerOptions) {
		if h2c {
			var p http.Protocols
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
			so.HTTP.Protocols = &p
			so.H2C = true
		}
	})
}

// An HTTP/2 client with prior knowledge (h2c) is served HTTP/2 on a plain listener with
// H2C, with the fast path on and off; HTTP/1.1 on the same listener keeps its path.
func TestServer_H2CPriorKnowledge(t *testing.T) {
	b := startRawBackend(t)
	for _, fast := range []bool{true, false} {
		s := startH2CServer(t, fast, true, Options{Picker: pickerForAddr(b.ln.Addr().String())})
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &p}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		for range 2 { // the second on the same HTTP/2 connection
			resp, err := client.Get("http://" + s.addr + "/")
			if err != nil {
				t.Fatalf("fast=%v: %v", fast, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 || resp.StatusCode != 200 || string(body) != "hello" {
				t.Errorf("fast=%v: got %s %d %q; want HTTP/2.0 200 hello", fast, resp.Proto, resp.StatusCode, body)
			}
		}
		resps := exchange(t, s.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false, "GET")
		if len(resps) != 1 || resps[0].StatusCode != 200 || resps[0].ProtoMajor != 1 {
			t.Errorf("fast=%v: HTTP/1.1 got %d responses %v; want one 200", fast, len(resps), resps)
		}
		// The access log line is written once the response is out: the client can read the
		// response before it is there.
		logs := s.logs.String()
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs, `proto=HTTP/1.1`) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			logs = s.logs.String()
		}
		if !strings.Contains(logs, `proto=HTTP/2.0`) || !strings.Contains(logs, `proto=HTTP/1.1`) {
			t.Errorf("fast=%v: access log lacks the HTTP/2 or the HTTP/1.1 request:\n%s", fast, logs)
		}
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, "proto=HTTP/1.1") && fast != strings.Contains(line, "engine=fast") {
				t.Errorf("fast=%v: HTTP/1.1 served by the wrong path: %s", fast, line)
			}
		}
	}
}

// Without H2C the preface is refused as an HTTP/1.1 head (505), and with it bytes that
// only start like the preface are too, on both paths.
func TestServer_PrefaceRefusedWithoutH2C(t *testing.T) {
	b := startRawBackend(t)
	for _, tt := range []struct {
		name string
		h2c  bool
		raw  string
	}{
		{"h2c off", false, h2Start},
		{"wrong preface", true, "PRI * HTTP/2.0\r\n\r\nXM\r\n\r\n"},
	} {
		for _, fast := range []bool{true, false} {
			s := startH2CServer(t, fast, tt.h2c, Options{Picker: pickerForAddr(b.ln.Addr().String())})
			resps := exchange(t, s.addr, tt.raw, false, "GET")
			if len(resps) != 1 || resps[0].StatusCode != 505 {
				t.Errorf("%s, fast=%v: got %v; want one 505", tt.name, fast, resps)
			}
		}
	}
	if reqs := b.requests(); len(reqs) != 0 {
		t.Errorf("the target saw %q; want nothing", reqs)
	}
}
