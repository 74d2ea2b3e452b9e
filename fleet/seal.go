package fleet

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// A stored value is one of:
//
//	"EPF1p" + value                                  (no encryption key)
//	"EPF1s" + keyID(8) + nonce(12) + AES-256-GCM(value, additional data = name)
//
// keyID is the start of SHA-256 over a label and the key, so that a replica holding
// another key says so instead of reporting a corrupt value, and the key itself is not
// revealed. The name as additional data stops a value from being moved under another
// name (one domain's key served for another).
const (
	magicPlain  = "EPF1p"
	magicSealed = "EPF1s"
	keyIDLen    = 8
)

// KeySize is the length of Options.EncryptionKey: AES-256.
const KeySize = 32

func newSealer(key []byte) (cipher.AEAD, [keyIDLen]byte, error) {
	var id [keyIDLen]byte
	if len(key) != KeySize {
		return nil, id, fmt.Errorf("fleet: the encryption key has %d bytes; want %d (AES-256)", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, id, fmt.Errorf("fleet: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, id, fmt.Errorf("fleet: %w", err)
	}
	sum := sha256.Sum256(append([]byte("edgeproxy fleet key id\x00"), key...))
	copy(id[:], sum[:])
	return aead, id, nil
}

// seal turns the value of name into what is stored in Redis.
func (s *Store) seal(name string, value []byte) []byte {
	if s.aead == nil {
		return append([]byte(magicPlain), value...)
	}
	out := make([]byte, 0, len(magicSealed)+keyIDLen+s.aead.NonceSize()+len(value)+s.aead.Overhead())
	out = append(out, magicSealed...)
	out = append(out, s.keyID[:]...)
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce) // never fails
	out = append(out, nonce...)
	return s.aead.Seal(out, nonce, value, []byte(name))
}

// open returns the value of name from what was stored, or an error wrapping ErrWrongKey
// when it was sealed with another key (or sealing differs), or saying it is corrupt.
func (s *Store) open(name string, stored []byte) ([]byte, error) {
	switch {
	case bytes.HasPrefix(stored, []byte(magicPlain)):
		if s.aead != nil {
			return nil, fmt.Errorf("%w: %q is stored in clear but this replica has an encryption key (a replica without encryption_key_file wrote it)", ErrWrongKey, name)
		}
		return stored[len(magicPlain):], nil
	case bytes.HasPrefix(stored, []byte(magicSealed)):
		rest := stored[len(magicSealed):]
		if len(rest) < keyIDLen {
			return nil, fmt.Errorf("fleet: stored value of %q is corrupt (truncated)", name)
		}
		id := rest[:keyIDLen]
		if s.aead == nil {
			return nil, fmt.Errorf("%w: %q is encrypted (key id %s) but this replica has no encryption_key_file", ErrWrongKey, name, hex.EncodeToString(id))
		}
		if !bytes.Equal(id, s.keyID[:]) {
			return nil, fmt.Errorf("%w: %q has key id %s, this replica's key has id %s: give every replica the same encryption_key_file", ErrWrongKey, name, hex.EncodeToString(id), hex.EncodeToString(s.keyID[:]))
		}
		rest = rest[keyIDLen:]
		ns := s.aead.NonceSize()
		if len(rest) < ns+s.aead.Overhead() {
			return nil, fmt.Errorf("fleet: stored value of %q is corrupt (truncated)", name)
		}
		value, err := s.aead.Open(nil, rest[:ns], rest[ns:], []byte(name))
		if err != nil {
			return nil, fmt.Errorf("fleet: stored value of %q is corrupt or was stored under another name (authentication failed)", name)
		}
		return value, nil
	default:
		return nil, fmt.Errorf("fleet: stored value of %q was not written by edgeproxy (no EPF1 header)", name)
	}
}
