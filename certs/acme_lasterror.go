package certs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// LastErrorFile is the name, in the ACME cache directory, of the record of the last failed
// order, for `edgeproxy doctor` and for people. It holds one JSON object, a LastError:
//
//	{
//	  "domain": "www.example.com",
//	  "time": "2026-01-02T15:04:05Z",
//	  "attempt": 2,
//	  "error": "acme: authorization error for www.example.com: 400 urn:ietf:params:acme:error:connection: ...",
//	  "ca_error_type": "urn:ietf:params:acme:error:connection",
//	  "ca_error_detail": "203.0.113.7: Fetching http://www.example.com/.well-known/acme-challenge/...: Timeout",
//	  "challenge": "http-01",
//	  "directory": "https://acme-v02.api.letsencrypt.org/directory",
//	  "next_attempt": "2026-01-02T15:07:05Z"
//	}
//
// The file is replaced (written to a temporary file, then renamed) at each failed order
// of any domain, and removed when the domain it names obtains a certificate; so it exists
// only while that failure is unresolved. Its mode is 0600.
const LastErrorFile = "last-error.json"

// LastError is the content of LastErrorFile.
type LastError struct {
	// Domain is the name whose order failed.
	Domain string `json:"domain"`
	// Time is when the order failed (UTC).
	Time time.Time `json:"time"`
	// Attempt counts the failures in a row for Domain, 1 for the first.
	Attempt int `json:"attempt"`
	// Error is the order's error, as logged.
	Error string `json:"error"`
	// CAErrorType and CAErrorDetail are the CA's last problem document during the order
	// (such as urn:ietf:params:acme:error:connection, unauthorized, dns, rateLimited);
	// empty when the CA was not reached or reported nothing.
	CAErrorType   string `json:"ca_error_type,omitempty"`
	CAErrorDetail string `json:"ca_error_detail,omitempty"`
	// Challenge is the challenge type (tls-alpn-01, http-01) the CA's problem is about,
	// when it is about a challenge.
	Challenge string `json:"challenge,omitempty"`
	// Directory is the CA's ACME directory URL.
	Directory string `json:"directory"`
	// NextAttempt is when the order will be tried again, if edgeproxy keeps running (UTC).
	NextAttempt time.Time `json:"next_attempt"`
}

// ReadLastError reads LastErrorFile from an ACME cache directory. When there is none (no
// failure, or resolved since), the error satisfies errors.Is(err, fs.ErrNotExist).
func ReadLastError(cacheDir string) (*LastError, error) {
	data, err := os.ReadFile(filepath.Join(cacheDir, LastErrorFile))
	if err != nil {
		return nil, err
	}
	var le LastError
	if err := json.Unmarshal(data, &le); err != nil {
		return nil, fmt.Errorf("certs: %s: %w", filepath.Join(cacheDir, LastErrorFile), err)
	}
	return &le, nil
}

func (a *acmeManager) saveLastError(le LastError) error {
	data, err := json.MarshalIndent(le, "", "  ")
	if err != nil {
		return err
	}
	a.lastErrMu.Lock()
	defer a.lastErrMu.Unlock()
	tmp, err := os.CreateTemp(a.opts.CacheDir, "."+LastErrorFile+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(a.opts.CacheDir, LastErrorFile))
}

// clearLastError removes LastErrorFile if it is about domain.
func (a *acmeManager) clearLastError(domain string) {
	a.lastErrMu.Lock()
	defer a.lastErrMu.Unlock()
	le, err := ReadLastError(a.opts.CacheDir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("acme: " + err.Error())
		}
		return
	}
	if le.Domain == domain {
		if err := os.Remove(filepath.Join(a.opts.CacheDir, LastErrorFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("acme: " + err.Error())
		}
	}
}
