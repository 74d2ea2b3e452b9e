package passthrough

import (
	"errors"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// maxHelloBytes bounds what is read while looking for a whole ClientHello: a hello larger
// than this (none real is: a post-quantum key share makes ~1.8 KB) is passed on to the TLS
// listener unrouted, which fails it as it sees fit.
const maxHelloBytes = 64 << 10

// Parse outcomes besides a server name.
var (
	// errNeedMore: data is the start of a TLS handshake but not yet a whole ClientHello.
	errNeedMore = errors.New("passthrough: incomplete ClientHello")
	// errNotHello: data is not a TLS ClientHello (plain HTTP on the HTTPS port, garbage,
	// a malformed hello); the TLS listener answers it.
	errNotHello = errors.New("passthrough: not a TLS ClientHello")
)

const (
	recordHeaderLen     = 5
	recordTypeHandshake = 22
	typeClientHello     = 1
	extServerName       = 0
	maxPlaintext        = 16384
)

// serverName returns the server name (SNI) of the ClientHello that data begins with,
// lower-cased and without a final dot; "" when the hello carries none. It returns
// errNeedMore while data holds only part of the hello, and errNotHello for anything
// that is not one. It reads the record layer itself, so that a hello split over several
// records (or several reads) is understood, and never consumes anything.
func serverName(data []byte) (string, error) {
	msg, err := handshakeMessage(data)
	if err != nil {
		return "", err
	}
	return helloServerName(msg)
}

// handshakeMessage reassembles the first handshake message from the records data begins
// with. It copies only when the message spans more than one record.
func handshakeMessage(data []byte) ([]byte, error) {
	var joined []byte
	for first := true; ; first = false {
		if len(data) < recordHeaderLen {
			return nil, errNeedMore
		}
		if data[0] != recordTypeHandshake || data[1] != 3 {
			return nil, errNotHello
		}
		n := int(data[3])<<8 | int(data[4])
		if n == 0 || n > maxPlaintext {
			return nil, errNotHello
		}
		if len(data) < recordHeaderLen+n {
			return nil, errNeedMore
		}
		frag := data[recordHeaderLen : recordHeaderLen+n]
		data = data[recordHeaderLen+n:]
		if first && len(frag) >= 4 {
			if frag[0] != typeClientHello {
				return nil, errNotHello
			}
			if need := 4 + msgLen(frag); need <= len(frag) {
				return frag[:need], nil // the usual case: one record
			}
		}
		joined = append(joined, frag...)
		if len(joined) >= 4 {
			if joined[0] != typeClientHello {
				return nil, errNotHello
			}
			need := 4 + msgLen(joined)
			if need > maxHelloBytes {
				return nil, errNotHello
			}
			if need <= len(joined) {
				return joined[:need], nil
			}
		}
	}
}

func msgLen(b []byte) int { return int(b[1])<<16 | int(b[2])<<8 | int(b[3]) }

// helloServerName parses a whole ClientHello handshake message (RFC 8446 §4.1.2) for its
// server_name extension (RFC 6066 §3).
func helloServerName(msg []byte) (string, error) {
	s := cryptobyte.String(msg[4:])
	var random, sessionID, suites, compression, exts cryptobyte.String
	var version uint16
	if !s.ReadUint16(&version) || !s.ReadBytes((*[]byte)(&random), 32) ||
		!s.ReadUint8LengthPrefixed(&sessionID) || !s.ReadUint16LengthPrefixed(&suites) ||
		!s.ReadUint8LengthPrefixed(&compression) {
		return "", errNotHello
	}
	if s.Empty() {
		return "", nil // no extensions, so no SNI
	}
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return "", errNotHello
	}
	for !exts.Empty() {
		var typ uint16
		var body cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&body) {
			return "", errNotHello
		}
		if typ != extServerName {
			continue
		}
		var list cryptobyte.String
		if !body.ReadUint16LengthPrefixed(&list) || !body.Empty() {
			return "", errNotHello
		}
		for !list.Empty() {
			var nameType uint8
			var name cryptobyte.String
			if !list.ReadUint8(&nameType) || !list.ReadUint16LengthPrefixed(&name) {
				return "", errNotHello
			}
			if nameType == 0 { // host_name
				return strings.ToLower(strings.TrimSuffix(string(name), ".")), nil
			}
		}
		return "", nil
	}
	return "", nil
}
