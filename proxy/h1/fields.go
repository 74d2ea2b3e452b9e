package h1

import (
	"bytes"
	"encoding/binary"
)

// Byte classes, built once.
const (
	classTchar  = 1 << iota // tchar (RFC 9110 §5.6.2): a token byte
	classValue              // field-vchar, SP or HTAB (RFC 9110 §5.5): a field value byte
	classTarget             // a request-target byte: visible ASCII or obs-text
	classHost               // a Host byte: reg-name, IP-literal and port characters
	classHex                // HEXDIG
)

var classes = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		alnum := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9'
		if alnum || bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), b) >= 0 {
			t[c] |= classTchar
		}
		if b >= 0x20 && b != 0x7f || b == '\t' {
			t[c] |= classValue
		}
		if b > 0x20 && b != 0x7f {
			t[c] |= classTarget
		}
		// unreserved / sub-delims / ":" / "[" / "]" / "%" (RFC 3986 host and port).
		if alnum || bytes.IndexByte([]byte("-._~!$&'()*+,;=:[]%"), b) >= 0 {
			t[c] |= classHost
		}
		if '0' <= b && b <= '9' || 'a' <= b && b <= 'f' || 'A' <= b && b <= 'F' {
			t[c] |= classHex
		}
	}
	return t
}()

// lower maps ASCII upper case to lower case and every other byte to itself.
var lower = func() (t [256]byte) {
	for c := range t {
		t[c] = byte(c)
		if 'A' <= c && c <= 'Z' {
			t[c] = byte(c + 'a' - 'A')
		}
	}
	return t
}()

// equalFold reports whether b equals s, ASCII case-insensitively; s must be lower case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if lower[b[i]] != s[i] {
			return false
		}
	}
	return true
}

// equalFoldAny reports whether b equals s, ASCII case-insensitively.
func equalFoldAny(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if lower[b[i]] != lower[s[i]] {
			return false
		}
	}
	return true
}

// equalFoldBytes reports whether a equals b, ASCII case-insensitively.
func equalFoldBytes(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lower[a[i]] != lower[b[i]] {
			return false
		}
	}
	return true
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if classes[c]&classTchar == 0 {
			return false
		}
	}
	return true
}

// trimOWS removes leading and trailing SP and HTAB.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// nextElement splits the first element off a comma-separated list (RFC 9110 §5.6.1),
// returning it with OWS trimmed (possibly empty) and the rest of the list.
func nextElement(list []byte) (elem, rest []byte) {
	if i := bytes.IndexByte(list, ','); i >= 0 {
		return trimOWS(list[:i]), list[i+1:]
	}
	return trimOWS(list), nil
}

// ScanHead reports whether buf holds enough of a head for ParseRequest or ParseResponse
// to give an answer other than ErrIncomplete: the blank line that ends the head, a line
// not ended by CRLF, or maxHeadBytes (zero or negative: DefaultMaxHeadBytes) without an
// end. It exists for heads that arrive in many reads: parsing after each read rescans
// the head from its start, which costs time quadratic in its length when a client
// trickles it in byte by byte; ScanHead resumes where it stopped. Pass from 0 at first
// and then the next returned by the previous call on the same, grown, buffer; once it
// reports ready, parse buf.
func ScanHead(buf []byte, from, maxHeadBytes int) (ready bool, next int) {
	if maxHeadBytes <= 0 {
		maxHeadBytes = DefaultMaxHeadBytes
	}
	if from < 0 || from > len(buf) {
		from = 0
	}
	for i := from; ; {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			break
		}
		p := i + j
		if p == 0 || buf[p-1] != '\r' || p == 1 || p >= 3 && buf[p-2] == '\n' || p >= maxHeadBytes {
			return true, p
		}
		i = p + 1
	}
	return len(buf) >= maxHeadBytes, len(buf)
}

// firstLine returns the start line of buf without its CRLF and the offset after it.
func firstLine(buf []byte, maxHead int) ([]byte, int, fault) {
	i := bytes.IndexByte(buf, '\n')
	switch {
	case i < 0:
		if len(buf) >= maxHead {
			return nil, 0, faultTooLarge
		}
		return nil, 0, faultIncomplete
	case i >= maxHead:
		return nil, 0, faultTooLarge
	case i == 0 || buf[i-1] != '\r':
		return nil, 0, faultBareLF
	}
	return buf[:i-1], i + 1, faultNone
}

// parseFields parses the field lines of buf from pos through the blank line, appending
// them to *h, and returns the offset after the blank line. It reads each line once:
// the scan of a value for bytes that are not allowed there also finds its CR.
func parseFields(buf []byte, pos, maxHead, maxFields int, h *Header) (int, fault) {
	b := buf
	if len(b) > maxHead {
		b = b[:maxHead]
	}
	// short says why a line runs off the end of b.
	short := faultIncomplete
	if len(buf) >= maxHead {
		short = faultTooLarge
	}
	fields := *h
	defer func() { *h = fields }()
	for {
		if pos >= len(b) {
			return 0, short
		}
		switch b[pos] {
		case '\r':
			if pos+1 >= len(b) {
				return 0, short
			}
			if b[pos+1] != '\n' {
				return 0, faultBareLF
			}
			return pos + 2, faultNone
		case '\n':
			return 0, faultBareLF
		case ' ', '\t':
			return 0, faultObsFold
		}
		if len(fields) >= maxFields {
			return 0, faultTooManyFields
		}
		n := pos
		for n < len(b) && classes[b[n]]&classTchar != 0 {
			n++
		}
		switch {
		case n == len(b):
			return 0, short
		case b[n] == ':':
			if n == pos {
				return 0, faultFieldName
			}
		case b[n] == ' ' || b[n] == '\t':
			return 0, faultSpaceBeforeColon
		default: // no colon, or a byte no name may hold
			return 0, faultFieldName
		}
		v := n + 1
		e := scanValue(b, v)
		switch {
		case e == len(b):
			return 0, short
		case b[e] == '\n':
			return 0, faultBareLF
		case b[e] != '\r':
			return 0, faultFieldValue
		case e+1 == len(b):
			return 0, short
		case b[e+1] != '\n':
			return 0, faultFieldValue // a bare CR
		}
		fields = append(fields, Field{Name: b[pos:n], Value: trimOWS(b[v:e])})
		pos = e + 2
	}
}

// scanValue returns the index of the first byte at or after i in b that may not be in
// a field value (RFC 9110 §5.5: only HTAB, SP, VCHAR and obs-text), normally the CR
// that ends the line, or len(b). It checks eight bytes at a time for any below 0x20
// or equal to 0x7f, looking closer only where there is one (an HTAB, or the end).
func scanValue(b []byte, i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for i < len(b) {
		if i+8 <= len(b) {
			x := binary.LittleEndian.Uint64(b[i:])
			del := x ^ (ones * 0x7f)
			if (x-ones*0x20)&^x&highs|(del-ones)&^del&highs == 0 {
				i += 8
				continue
			}
		}
		for end := min(i+8, len(b)); i < end; i++ {
			if classes[b[i]]&classValue == 0 {
				return i
			}
		}
	}
	return len(b)
}

// bodyFields accumulates what Content-Length, Transfer-Encoding and Connection say,
// for requests and responses alike.
type bodyFields struct {
	cl        []byte // the first Content-Length value, nil if none
	length    int64
	te        bool // a Transfer-Encoding field was seen
	chunked   bool // chunked was seen, and is the last coding so far
	chunkedAt bool // chunked was seen anywhere
	unknown   bool // a coding other than chunked was seen
	close     bool
	keepAlive bool
}

// field records f if it is one of the fields that frame a message or decide its
// persistence (Connection, Content-Length, Transfer-Encoding), the same for requests and
// responses; the tokens of Connection go to conn.
func (b *bodyFields) field(f *Field, conn *[][]byte) fault {
	switch len(f.Name) {
	case 10:
		if equalFold(f.Name, "connection") {
			return b.connection(f.Value, conn)
		}
	case 14:
		if equalFold(f.Name, "content-length") {
			return b.contentLength(f.Value)
		}
	case 17:
		if equalFold(f.Name, "transfer-encoding") {
			return b.transferEncoding(f.Value)
		}
	}
	return faultNone
}

func (b *bodyFields) contentLength(v []byte) fault {
	if b.cl != nil {
		// RFC 9110 §8.6 lets a recipient accept repeated identical values; like
		// net/http it compares the spellings, so 5 and 05 conflict.
		if !bytes.Equal(b.cl, v) {
			return faultContentLengths
		}
		return faultNone
	}
	n, ok := parseLength(v)
	if !ok {
		return faultContentLength
	}
	b.cl, b.length = v, n
	return faultNone
}

// parseLength parses 1*DIGIT into an int64, refusing signs, separators and overflow.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (1<<63-1-9)/10 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// transferEncoding reads one Transfer-Encoding field value. Only a single chunked,
// last, is understood; anything else is remembered for bodyFields.teFault.
func (b *bodyFields) transferEncoding(v []byte) fault {
	b.te = true
	for rest := v; ; {
		var elem []byte
		elem, rest = nextElement(rest)
		if len(elem) == 0 {
			// RFC 9110 §5.6.1 asks recipients to skip empty elements; a proxy that
			// did could disagree with its target about where the list ends.
			return faultTransferEncoding
		}
		if equalFold(elem, "chunked") {
			if b.chunkedAt {
				return faultChunkedNotLast // applied twice (RFC 9112 §7)
			}
			b.chunkedAt, b.chunked = true, true
		} else {
			b.unknown, b.chunked = true, false
		}
		if rest == nil {
			return faultNone
		}
	}
}

// teFault judges the Transfer-Encoding fields once all are read.
func (b *bodyFields) teFault() fault {
	switch {
	case !b.te:
		return faultNone
	case b.chunkedAt && !b.chunked:
		return faultChunkedNotLast
	case b.unknown:
		return faultCodingUnknown
	case b.cl != nil:
		return faultCLAndTE
	}
	return faultNone
}

// connection reads one Connection field value, appending its tokens to *names.
func (b *bodyFields) connection(v []byte, names *[][]byte) fault {
	for rest := v; rest != nil; {
		var elem []byte
		elem, rest = nextElement(rest)
		if len(elem) == 0 {
			continue
		}
		if !isToken(elem) {
			return faultConnection
		}
		switch {
		case equalFold(elem, "close"):
			b.close = true
		case equalFold(elem, "keep-alive"):
			b.keepAlive = true
		}
		*names = append(*names, elem)
	}
	return faultNone
}

// keepAlive decides persistence (RFC 9112 §9.3).
func (b *bodyFields) keepAliveFor(minor int) bool {
	if b.close {
		return false
	}
	return minor == 1 || b.keepAlive
}
