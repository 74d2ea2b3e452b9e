package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"testing"
)

// The ARI certificate ID of RFC 9773 §4.1's example.
func TestCertID_RFC9773Example(t *testing.T) {
	leaf := &x509.Certificate{
		AuthorityKeyId: []byte{0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4},
		SerialNumber:   big.NewInt(0x87654321),
	}
	if got, want := certID(leaf), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"; got != want {
		t.Errorf("certID = %s; want %s", got, want)
	}
}

// withReplaces adds "replaces" to a new-order request's payload, keeps its protected
// header and the rest of the payload, and signs it so that the account key verifies it.
func TestWithReplaces_SignsAgain(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tt := range []struct {
		alg string
		key crypto.Signer
	}{{"ES256", ec}, {"RS256", rk}} {
		t.Run(tt.alg, func(t *testing.T) {
			protected := b64json(t, map[string]string{"alg": tt.alg, "kid": "https://ca.test/acct/1", "nonce": "n1", "url": "https://ca.test/new-order"})
			payload := b64json(t, map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "app.test"}}, "profile": "shortlived"})
			body, _ := json.Marshal(flattenedJWS{Protected: protected, Payload: payload, Signature: "x"})
			req, _ := http.NewRequest(http.MethodPost, "https://ca.test/new-order", bytes.NewReader(body))
			r, err := withReplaces(req, tt.key, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
			if err != nil {
				t.Fatal(err)
			}
			out, _ := io.ReadAll(r.Body)
			if r.ContentLength != int64(len(out)) {
				t.Errorf("Content-Length %d for %d bytes", r.ContentLength, len(out))
			}
			var jws flattenedJWS
			if err := json.Unmarshal(out, &jws); err != nil {
				t.Fatal(err)
			}
			if jws.Protected != protected {
				t.Errorf("protected header changed")
			}
			raw, _ := base64.RawURLEncoding.DecodeString(jws.Payload)
			var p struct {
				Identifiers []map[string]string `json:"identifiers"`
				Profile     string              `json:"profile"`
				Replaces    string              `json:"replaces"`
			}
			if err := json.Unmarshal(raw, &p); err != nil || p.Replaces != "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE" || p.Profile != "shortlived" || len(p.Identifiers) != 1 {
				t.Errorf("payload %s (%v)", raw, err)
			}
			sig, _ := base64.RawURLEncoding.DecodeString(jws.Signature)
			digest := sha256.Sum256([]byte(jws.Protected + "." + jws.Payload))
			ok := false
			switch k := tt.key.Public().(type) {
			case *ecdsa.PublicKey:
				ok = len(sig) == 64 && ecdsa.Verify(k, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
			case *rsa.PublicKey:
				ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig) == nil
			}
			if !ok {
				t.Error("the signature does not verify with the account key")
			}
		})
	}
}

func b64json(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
