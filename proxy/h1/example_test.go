package h1_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"edgeproxy/proxy/h1"
)

// Example sketches the fast path's connection loop: read a head, parse it, hand
// declined requests to net/http, rewrite the head for the upstream and forward a
// chunked body unchanged, keeping whatever follows for the next round. Upstream
// responses go the same way through ParseResponse and AppendResponseHead.
func Example() {
	client := strings.NewReader("" +
		"POST /submit HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n" +
		"5\r\nhello\r\n0\r\n\r\n" +
		"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	var upstream bytes.Buffer

	// Per connection, from pools in the real loop; nothing below allocates per request.
	buf := make([]byte, 0, 64<<10)
	out := make([]byte, 0, 4<<10)
	var req h1.Request
	var body h1.Chunked
	opts := &h1.RequestHeadOptions{ClientIP: netip.MustParseAddr("192.0.2.1"), Proto: "https", ForwardedHost: true}

	// fill appends what the client sends next to buf.
	fill := func() bool {
		n, err := client.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		return err != io.EOF
	}
	for next := 0; ; {
		ready, nx := h1.ScanHead(buf, next, 0)
		if next = nx; !ready {
			if !fill() {
				return // client gone between requests
			}
			continue
		}
		n, err := h1.ParseRequest(buf, &req, h1.Limits{})
		if herr := (*h1.Error)(nil); errors.As(err, &herr) {
			fmt.Println("answer", herr.Status, "and close")
			return
		}
		if req.Declined != h1.DeclineNone {
			fmt.Println("hand over to net/http:", req.Declined)
			return
		}
		out = h1.AppendRequestHead(out[:0], &req, opts)
		upstream.Write(out)
		rest := buf[n:]
		switch req.Framing {
		case h1.FramingChunked:
			for body.Reset(); !body.Done(); {
				k, err := body.Scan(rest)
				if err != nil {
					fmt.Println("answer 400 and close:", err)
					return
				}
				upstream.Write(rest[:k]) // the chunks as received
				if rest = rest[k:]; !body.Done() {
					buf = buf[:0]
					if !fill() {
						return
					}
					rest = buf
				}
			}
		case h1.FramingLength:
			// Copy req.ContentLength bytes: rest first, then reads.
		}
		fmt.Print(strings.ReplaceAll(upstream.String(), "\r\n", "\n")) // CRLF shown as line breaks
		upstream.Reset()
		// ... ParseResponse, AppendResponseHead, body to the client ...
		if !req.KeepAlive {
			return
		}
		buf = buf[:copy(buf, rest)] // a pipelined request may follow
		next = 0
	}
	// Output:
	// POST /submit HTTP/1.1
	// Host: example.com
	// Transfer-Encoding: chunked
	// X-Forwarded-For: 192.0.2.1
	// X-Forwarded-Proto: https
	// X-Forwarded-Host: example.com
	//
	// 5
	// hello
	// 0
	//
	// hand over to net/http: upgrade
}
