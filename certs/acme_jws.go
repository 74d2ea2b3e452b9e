package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
)

// maxJWSBody bounds the request body withReplaces reads (a new-order request is small).
const maxJWSBody = 64 << 10

// withReplaces returns req with "replaces": id added to the payload of its JWS body
// (RFC 9773 §5: a renewal order names the certificate it replaces), signed again with
// key. golang.org/x/crypto/acme has no option for this field, and its orders are the one
// ACME stack here: rather than a second client for this one request, the transport
// amends the request that client signed. The protected header (nonce, URL, key ID) is
// kept, so the request is otherwise the one the client made.
func withReplaces(req *http.Request, key crypto.Signer, id string) (*http.Request, error) {
	if req.Body == nil {
		return nil, errors.New("certs: new-order request without a body")
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxJWSBody))
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	out, err := addToJWSPayload(body, key, "replaces", id)
	if err != nil {
		return nil, fmt.Errorf("certs: adding \"replaces\" to the new-order request: %w", err)
	}
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(out))
	r.ContentLength = int64(len(out))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(out)), nil }
	return r, nil
}

// flattenedJWS is the JWS JSON serialization ACME requests use (RFC 8555 §6.2).
type flattenedJWS struct {
	Protected string `json:"protected"`
	Payload   string `json:"payload"`
	Signature string `json:"signature"`
}

// addToJWSPayload sets field to value in the JSON object of a flattened JWS's payload
// and signs the result with key, with the algorithm its protected header names.
func addToJWSPayload(body []byte, key crypto.Signer, field string, value any) ([]byte, error) {
	var jws flattenedJWS
	if err := json.Unmarshal(body, &jws); err != nil {
		return nil, err
	}
	rawHeader, err := base64.RawURLEncoding.DecodeString(jws.Protected)
	if err != nil {
		return nil, err
	}
	var header struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(rawHeader, &header); err != nil {
		return nil, err
	}
	rawPayload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return nil, err
	}
	payload := map[string]json.RawMessage{}
	if err := json.Unmarshal(rawPayload, &payload); err != nil {
		return nil, err
	}
	v, err := json.Marshal(value)
	if err != nil {
		return nil, err
	}
	payload[field] = v
	rawPayload, err = json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	jws.Payload = base64.RawURLEncoding.EncodeToString(rawPayload)
	sig, err := jwsSign(key, header.Alg, []byte(jws.Protected+"."+jws.Payload))
	if err != nil {
		return nil, err
	}
	jws.Signature = base64.RawURLEncoding.EncodeToString(sig)
	return json.Marshal(jws)
}

// jwsSign signs input as the JWS algorithm alg (RFC 7518 §3): RS256 or ES256/384/512,
// the ones golang.org/x/crypto/acme uses for RSA and ECDSA account keys.
func jwsSign(key crypto.Signer, alg string, input []byte) ([]byte, error) {
	hash := map[string]crypto.Hash{"RS256": crypto.SHA256, "ES256": crypto.SHA256, "ES384": crypto.SHA384, "ES512": crypto.SHA512}[alg]
	if hash == 0 {
		return nil, fmt.Errorf("unsupported JWS algorithm %q", alg)
	}
	h := hash.New()
	h.Write(input)
	sig, err := key.Sign(rand.Reader, h.Sum(nil), hash)
	if err != nil || alg == "RS256" {
		return sig, err
	}
	// ECDSA: from ASN.1 to the fixed-size R||S of JWS.
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("JWS algorithm %s with a %T key", alg, key.Public())
	}
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(sig, &rs); err != nil {
		return nil, err
	}
	size := (pub.Curve.Params().BitSize + 7) / 8
	out := make([]byte, 2*size)
	rs.R.FillBytes(out[:size])
	rs.S.FillBytes(out[size:])
	return out, nil
}
