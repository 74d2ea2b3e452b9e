package h1

import (
	"bytes"
	"strings"
	"testing"
)

// decodeAll feeds in to a Chunked step bytes at a time, as reads would deliver it, and
// returns the data, the bytes consumed and the first error.
func decodeAll(c *Chunked, in []byte, step int) (string, int, error) {
	var data []byte
	n := 0
	for n < len(in) && !c.Done() {
		piece := in[n:min(n+step, len(in))]
		for len(piece) > 0 && !c.Done() {
			k, d, err := c.Decode(piece)
			data = append(data, d...)
			n += k
			piece = piece[k:]
			if err != nil {
				return string(data), n, err
			}
		}
	}
	return string(data), n, nil
}

func TestChunked(t *testing.T) {
	tests := []struct {
		name string
		in   string
		data string
		rest string // bytes after the body, not consumed
	}{
		{name: "one chunk", in: "5\r\nhello\r\n0\r\n\r\n", data: "hello"},
		{name: "two chunks", in: "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", data: "hello world"},
		{name: "empty body", in: "0\r\n\r\n"},
		{name: "upper-case hex", in: "A\r\n0123456789\r\n0\r\n\r\n", data: "0123456789"},
		{name: "lower-case hex", in: "a\r\n0123456789\r\n0\r\n\r\n", data: "0123456789"},
		{name: "leading zeros", in: "0005\r\nhello\r\n000\r\n\r\n", data: "hello"},
		{name: "extensions", in: "5;name=value;x\r\nhello\r\n0;last\r\n\r\n", data: "hello"},
		{name: "quoted extension", in: "5;a=\"b c\\\"d\"\r\nhello\r\n0\r\n\r\n", data: "hello"},
		{name: "whitespace before extension", in: "5 \t;a\r\nhello\r\n0\r\n\r\n", data: "hello"},
		{name: "data holding CRLF", in: "4\r\n\r\n\r\n\r\n0\r\n\r\n", data: "\r\n\r\n"},
		{name: "trailers", in: "5\r\nhello\r\n0\r\nX-Sum: abc\r\nEmpty:\r\nx: \t a b \r\n\r\n", data: "hello"},
		{name: "next message kept", in: "1\r\nx\r\n0\r\n\r\n", data: "x", rest: "GET / HTTP/1.1\r\n"},
		{name: "next message right after trailer", in: "0\r\nA: b\r\n\r\n", rest: "0\r\n\r\n"},
	}
	for _, tt := range tests {
		for _, step := range []int{1, 2, 3, 7, 1 << 20} {
			var c Chunked
			in := []byte(tt.in + tt.rest)
			data, n, err := decodeAll(&c, in, step)
			if err != nil || data != tt.data || n != len(tt.in) || !c.Done() {
				t.Errorf("%s, step %d: got %q, n %d, %v, done %v; want %q, n %d, done", tt.name, step, data, n, err, c.Done(), tt.data, len(tt.in))
			}
		}
		var c Chunked
		n, err := c.Scan([]byte(tt.in + tt.rest))
		if err != nil || n != len(tt.in) || !c.Done() {
			t.Errorf("%s: Scan got n %d, %v, done %v; want %d", tt.name, n, err, c.Done(), len(tt.in))
		}
		c.Reset()
		buf := []byte(tt.in + tt.rest)
		n, m, err := c.DecodeInPlace(buf)
		if err != nil || n != len(tt.in) || string(buf[:m]) != tt.data || string(buf[n:]) != tt.rest {
			t.Errorf("%s: DecodeInPlace got n %d, data %q, rest %q, %v", tt.name, n, buf[:m], buf[n:], err)
		}
	}
}

func TestChunked_Refused(t *testing.T) {
	tests := []struct {
		name string
		in   string
		c    Chunked
		err  *Error
	}{
		{name: "empty size", in: "\r\n", err: errChunkSize},
		{name: "hex prefix", in: "0x5\r\nhello\r\n", err: errChunkSize},
		{name: "plus", in: "+5\r\nhello\r\n", err: errChunkSize},
		{name: "minus", in: "-5\r\nhello\r\n", err: errChunkSize},
		{name: "leading space", in: " 5\r\nhello\r\n", err: errChunkSize},
		{name: "non-hex", in: "5g\r\nhello\r\n", err: errChunkSize},
		{name: "underscore", in: "1_0\r\n", err: errChunkSize},
		{name: "overflow", in: "8000000000000000\r\n", err: errChunkOverflow},
		{name: "overflow long", in: "10000000000000000000\r\n", err: errChunkOverflow},
		{name: "trailing whitespace", in: "5 \r\nhello\r\n0\r\n\r\n", err: errChunkExt},
		{name: "whitespace then garbage", in: "5 x\r\n", err: errChunkExt},
		{name: "NUL in extension", in: "5;\x00\r\nhello\r\n", err: errChunkExt},
		{name: "bare LF in extension", in: "5;a\nhello\r\n0\r\n\r\n", err: errChunkExt},
		{name: "bare LF after size", in: "5\nhello\r\n0\r\n\r\n", err: errChunkSize},
		{name: "CR without LF after size", in: "5\r\rhello", err: errChunkCRLF},
		{name: "long extension", in: "5;" + strings.Repeat("a", 5000) + "\r\n", err: errChunkLine},
		{name: "long leading zeros", in: strings.Repeat("0", 100) + "5\r\n", c: Chunked{MaxLineBytes: 50}, err: errChunkLine},
		{name: "data too long", in: "5\r\nhelloX\r\n0\r\n\r\n", err: errChunkCRLF},
		{name: "data too short", in: "5\r\nhell\r\n0\r\n\r\n", err: errChunkCRLF},
		{name: "bare LF after data", in: "5\r\nhello\n0\r\n\r\n", err: errChunkCRLF},
		{name: "no CRLF after data", in: "5\r\nhello0\r\n\r\n", err: errChunkCRLF},
		{name: "trailer obs-fold", in: "0\r\nX: a\r\n b\r\n\r\n", err: errChunkTrailer},
		{name: "trailer space before colon", in: "0\r\nX : a\r\n\r\n", err: errChunkTrailer},
		{name: "trailer no colon", in: "0\r\nX\r\n\r\n", err: errChunkTrailer},
		{name: "trailer empty name", in: "0\r\n: a\r\n\r\n", err: errChunkTrailer},
		{name: "trailer NUL", in: "0\r\nX: \x00\r\n\r\n", err: errChunkTrailer},
		{name: "trailer bare LF", in: "0\r\nX: a\n\r\n", err: errChunkTrailer},
		{name: "trailer CR without LF", in: "0\r\nX: a\r\r\n", err: errChunkCRLF},
		{name: "final CR without LF", in: "0\r\n\rX", err: errChunkCRLF},
		{name: "final bare LF", in: "0\r\n\n", err: errChunkTrailer},
		{name: "trailer too large", in: "0\r\nX: " + strings.Repeat("a", 100) + "\r\n\r\n", c: Chunked{MaxTrailerBytes: 50}, err: errChunkTrailers},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, step := range []int{1, 1 << 20} {
				c := tt.c
				_, _, err := decodeAll(&c, []byte(tt.in), step)
				if err != tt.err {
					t.Errorf("step %d: got %v; want %v", step, err, tt.err)
				}
				// Once failed, it stays failed.
				if _, _, again := c.Decode([]byte("0\r\n\r\n")); again != tt.err {
					t.Errorf("step %d: after the error got %v; want %v", step, again, tt.err)
				}
			}
			c := tt.c
			if _, err := c.Scan([]byte(tt.in)); err != tt.err {
				t.Errorf("Scan: got %v; want %v", err, tt.err)
			}
		})
	}
}

// TestChunked_MaxSize checks that the largest size is accepted and its data streams.
func TestChunked_MaxSize(t *testing.T) {
	var c Chunked
	n, data, err := c.Decode([]byte("7fffffffffffffff\r\nabc"))
	if err != nil || n != 21 || string(data) != "abc" {
		t.Fatalf("got %d %q %v", n, data, err)
	}
	if c.size != 1<<63-1-3 {
		t.Errorf("got %d left", c.size)
	}
}

// TestChunked_Partial checks that a body cut short is neither done nor an error.
func TestChunked_Partial(t *testing.T) {
	in := []byte("5;x=y\r\nhello\r\n0\r\nA: b\r\n\r\n")
	for i := 0; i < len(in); i++ {
		var c Chunked
		n, err := c.Scan(in[:i])
		if err != nil || n != i || c.Done() {
			t.Fatalf("prefix %d: got n %d, %v, done %v", i, n, err, c.Done())
		}
	}
}

func TestChunked_NoAllocs(t *testing.T) {
	in := bytes.Repeat([]byte("3;e=1\r\nabc\r\n"), 50)
	in = append(in, "0\r\nT: v\r\n\r\n"...)
	var c Chunked
	allocs := testing.AllocsPerRun(100, func() {
		c.Reset()
		for rest := in; len(rest) > 0; {
			n, _, err := c.Decode(rest)
			if err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
	})
	if allocs != 0 {
		t.Errorf("got %v allocs; want 0", allocs)
	}
}
