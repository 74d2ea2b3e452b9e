package tlscost

import "crypto/tls"

// TLS record layer facts (RFC 5246 §6.2, RFC 8446 §5).
const (
	recordHeaderLen = 5
	maxPlaintext    = 16384

	typeChangeCipherSpec = 20
	typeAlert            = 21
	typeHandshake        = 22
	typeApplicationData  = 23
)

// crypto/tls's dynamic record sizing (conn.go, maxPayloadSizeForWrite): until
// recordSizeBoostThreshold bytes have been sent on a connection, the n-th application data
// record carries at most n times what fits in tcpMSSEstimate bytes, so that the first
// records of a response fit in one TCP segment each. The estimator of extra writes replays
// that rule to know which records were full, i.e. which were cut from a larger write.
const (
	tcpMSSEstimate           = 1208
	recordSizeBoostThreshold = 128 * 1024
)

// scanner finds record boundaries in a byte stream that arrives in arbitrary pieces.
type scanner struct {
	hdr  [recordHeaderLen]byte
	nhdr int // header bytes collected so far
	body int // bytes of the current record's body still to come
}

// feed consumes p and calls f with the type and body length of every record whose header
// completes in p.
func (s *scanner) feed(p []byte, f func(typ byte, body int)) {
	for len(p) > 0 {
		if s.body > 0 {
			k := min(s.body, len(p))
			s.body -= k
			p = p[k:]
			continue
		}
		k := copy(s.hdr[s.nhdr:], p)
		s.nhdr += k
		p = p[k:]
		if s.nhdr < recordHeaderLen {
			return
		}
		s.nhdr = 0
		s.body = int(s.hdr[3])<<8 | int(s.hdr[4])
		f(s.hdr[0], s.body)
	}
}

// aeadOf maps a negotiated cipher suite to the AEAD that protects its records. edgeproxy
// offers only AEAD suites; anything else is costed as AES-128-GCM.
func aeadOf(suite uint16) string {
	switch suite {
	case tls.TLS_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:
		return AES256GCM
	case tls.TLS_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:
		return ChaCha20Poly1305
	}
	return AES128GCM
}

// aeadIndex is the position of an AEAD name in aeadNames, for the cost arrays.
func aeadIndex(name string) int {
	for i, n := range aeadNames {
		if n == name {
			return i
		}
	}
	return 0
}

// recordOverhead is the number of body bytes of a protected record beyond its plaintext:
// the AEAD tag (16), TLS 1.2 GCM's explicit nonce (8), TLS 1.3's inner content type (1).
func recordOverhead(version uint16, aead string) int {
	switch {
	case version >= tls.VersionTLS13:
		return 16 + 1
	case aead == ChaCha20Poly1305:
		return 16
	}
	return 16 + 8
}
