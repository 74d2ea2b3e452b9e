package h1

// Chunked decodes or checks a body in the chunked transfer coding (RFC 9112 §7.1) as
// it streams through a caller's buffer. It is a byte-level state machine: it keeps no
// copy of its input, so a chunk-size line or trailer split across reads costs nothing
// extra, and it never allocates. The zero value is ready to use with the default limits.
//
// Decode hands out the body's data as subslices of the input; Scan checks the coding and
// finds where the body ends, for a caller that forwards the chunked bytes unchanged;
// DecodeInPlace gathers the data at the front of the buffer. All three stop exactly at
// the end of the body, so bytes after it (the next message) are never consumed.
//
// What it accepts: chunk-size is 1*HEXDIG up to 2^63-1, optionally followed by
// whitespace and then only by chunk extensions, which start with ";", may hold any
// field-value bytes (they are not interpreted) and, with the size, fit in MaxLineBytes;
// every line ends in CRLF; data is followed by CRLF; the trailer section is field lines
// as in a head (no obs-fold, no whitespace before the colon, no control characters),
// within MaxTrailerBytes.
type Chunked struct {
	// MaxLineBytes bounds a chunk-size line, extensions included, CRLF excluded. Zero
	// or negative means 4096, net/http's limit.
	MaxLineBytes int
	// MaxTrailerBytes bounds the trailer section, its final CRLF included. Zero or
	// negative means 16384.
	MaxTrailerBytes int

	state  chunkState
	size   uint64 // the chunk size being read, then the data left in the chunk
	digits int    // hex digits read of the current size
	line   int    // bytes read of the current chunk-size line or trailer section
	failed error  // the error that stopped decoding, until Reset
}

type chunkState uint8

const (
	chunkSize         chunkState = iota // in chunk-size
	chunkSizeWS                         // whitespace after chunk-size; only ";" may follow
	chunkExt                            // in chunk extensions
	chunkSizeLF                         // CR seen at the end of a chunk-size line
	chunkData                           // in chunk data; size bytes left
	chunkDataCR                         // data done; CR expected
	chunkDataLF                         // LF expected
	chunkTrailer                        // at the start of a trailer line or the final CRLF
	chunkTrailerName                    // in a trailer field name
	chunkTrailerValue                   // in a trailer field value
	chunkTrailerLF                      // CR seen at the end of a trailer line
	chunkEndLF                          // CR seen of the final CRLF
	chunkDone                           // the body is complete
)

var (
	errChunkSize     = &Error{Status: 400, Reason: "chunked: invalid chunk size"}
	errChunkOverflow = &Error{Status: 400, Reason: "chunked: chunk size too large"}
	errChunkExt      = &Error{Status: 400, Reason: "chunked: invalid chunk extension"}
	errChunkLine     = &Error{Status: 400, Reason: "chunked: chunk-size line too long"}
	errChunkCRLF     = &Error{Status: 400, Reason: "chunked: missing CRLF"}
	errChunkTrailer  = &Error{Status: 400, Reason: "chunked: invalid trailer field"}
	errChunkTrailers = &Error{Status: 400, Reason: "chunked: trailer section too large"}
)

// Reset makes c ready for a new body, keeping its limits.
func (c *Chunked) Reset() {
	c.state, c.size, c.digits, c.line, c.failed = chunkSize, 0, 0, 0, nil
}

// Done reports whether the whole body, trailer section included, has been consumed.
func (c *Chunked) Done() bool { return c.state == chunkDone }

// Decode consumes the start of in up to and including at most one run of body data,
// which it returns as a subslice of in (nil if the consumed bytes held none). Call it
// again with in[n:] while n < len(in) and the body is not Done; once it is, n stops at
// the end of the body. On an error n says how far the input was good, and c stays
// failed: it returns the same error until Reset.
func (c *Chunked) Decode(in []byte) (n int, data []byte, err error) {
	if c.failed != nil {
		return 0, nil, c.failed
	}
	maxLine, maxTrailer := c.MaxLineBytes, c.MaxTrailerBytes
	if maxLine <= 0 {
		maxLine = 4096
	}
	if maxTrailer <= 0 {
		maxTrailer = 16384
	}
	for i := 0; i < len(in); i++ {
		b := in[i]
		switch c.state {
		case chunkSize:
			switch {
			case classes[b]&classHex != 0:
				if c.size>>59 != 0 {
					return i, nil, c.fail(errChunkOverflow)
				}
				c.size = c.size<<4 | uint64(unhex(b))
				c.digits++
			case c.digits == 0:
				return i, nil, c.fail(errChunkSize)
			case b == '\r':
				c.state = chunkSizeLF
			case b == ';':
				c.state = chunkExt
			case b == ' ' || b == '\t':
				c.state = chunkSizeWS
			default:
				return i, nil, c.fail(errChunkSize)
			}
		case chunkSizeWS:
			switch b {
			case ' ', '\t':
			case ';':
				c.state = chunkExt
			default:
				return i, nil, c.fail(errChunkExt)
			}
		case chunkExt:
			if b == '\r' {
				c.state = chunkSizeLF
			} else if classes[b]&classValue == 0 {
				return i, nil, c.fail(errChunkExt)
			}
		case chunkSizeLF:
			if b != '\n' {
				return i, nil, c.fail(errChunkCRLF)
			}
			c.line, c.digits = 0, 0
			if c.size == 0 {
				c.state = chunkTrailer
				continue
			}
			c.state = chunkData
			if i+1 < len(in) {
				return c.data(in, i+1)
			}
			continue
		case chunkData:
			return c.data(in, i)
		case chunkDataCR:
			if b != '\r' {
				return i, nil, c.fail(errChunkCRLF)
			}
			c.state = chunkDataLF
		case chunkDataLF:
			if b != '\n' {
				return i, nil, c.fail(errChunkCRLF)
			}
			c.state, c.line = chunkSize, 0
			continue
		case chunkTrailer:
			switch {
			case b == '\r':
				c.state = chunkEndLF
			case classes[b]&classTchar != 0:
				c.state = chunkTrailerName
			default: // obs-fold, or not a field name
				return i, nil, c.fail(errChunkTrailer)
			}
		case chunkTrailerName:
			switch {
			case b == ':':
				c.state = chunkTrailerValue
			case classes[b]&classTchar == 0:
				return i, nil, c.fail(errChunkTrailer)
			}
		case chunkTrailerValue:
			if b == '\r' {
				c.state = chunkTrailerLF
			} else if classes[b]&classValue == 0 {
				return i, nil, c.fail(errChunkTrailer)
			}
		case chunkTrailerLF:
			if b != '\n' {
				return i, nil, c.fail(errChunkCRLF)
			}
			c.state = chunkTrailer
		case chunkEndLF:
			if b != '\n' {
				return i, nil, c.fail(errChunkCRLF)
			}
			c.state = chunkDone
			return i + 1, nil, nil
		case chunkDone:
			return i, nil, nil
		}
		// Count the bytes of the line or section just extended.
		c.line++
		if c.state <= chunkSizeLF && c.line > maxLine+1 {
			return i, nil, c.fail(errChunkLine)
		}
		if c.state >= chunkTrailer && c.state < chunkDone && c.line > maxTrailer {
			return i, nil, c.fail(errChunkTrailers)
		}
	}
	return len(in), nil, nil
}

// data returns the run of chunk data at in[i:].
func (c *Chunked) data(in []byte, i int) (int, []byte, error) {
	k := uint64(len(in) - i)
	if k >= c.size {
		k = c.size
		c.state = chunkDataCR
	}
	c.size -= k
	return i + int(k), in[i : i+int(k)], nil
}

func (c *Chunked) fail(e *Error) error {
	c.failed = e
	return e
}

func unhex(b byte) byte {
	switch {
	case b <= '9':
		return b - '0'
	case b <= 'F':
		return b - 'A' + 10
	}
	return b - 'a' + 10
}

// Scan checks the chunked bytes at the start of in without decoding them, for a caller
// that forwards a chunked body unchanged: it returns how many bytes belong to the body,
// all of in unless the body ends inside it (then Done reports true).
func (c *Chunked) Scan(in []byte) (n int, err error) {
	for n < len(in) && c.state != chunkDone {
		k, _, err := c.Decode(in[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// DecodeInPlace decodes the chunked bytes at the start of buf, moving the data they
// hold to the front of buf: afterwards buf[:m] is the data and buf[n:] the bytes not
// consumed, which follow the body when Done reports true. It suits a caller that reads
// a chunked body into one buffer and writes its data on in one piece.
func (c *Chunked) DecodeInPlace(buf []byte) (n, m int, err error) {
	for n < len(buf) && c.state != chunkDone {
		k, data, err := c.Decode(buf[n:])
		if len(data) > 0 {
			m += copy(buf[m:], data)
		}
		n += k
		if err != nil {
			return n, m, err
		}
	}
	return n, m, nil
}
