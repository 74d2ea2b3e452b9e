package certs

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxInspect bounds how much of a CA response is read to find problems in it.
const maxInspect = 256 << 10

// caTransport is the http.RoundTripper of one order's ACME client. The client's errors
// say little ("authorization failed"); the CA's own words are in the responses.
// caTransport logs every problem document (RFC 8555 §6.7) and every failed challenge
// found in authorization objects, records them on the order for the failure log and
// LastErrorFile, and notes a Retry-After. It also adds "replaces" to the order's
// new-order request (see withReplaces), which golang.org/x/crypto/acme cannot send.
type caTransport struct {
	base http.RoundTripper
	o    *acmeOrder
	ctx  context.Context // the order's: cancelling it ends requests in flight
	log  *slog.Logger
	key  crypto.Signer // the account key, to sign the rewritten new-order request
}

var _ http.RoundTripper = (*caTransport)(nil)

// caProblem is one error the CA reported.
type caProblem struct {
	Type      string // e.g. urn:ietf:params:acme:error:connection
	Detail    string
	Challenge string // the challenge type it is about, if it came from a challenge
}

// RoundTrip implements http.RoundTripper.
func (t *caTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if id := t.o.replacesFor(req.Method, req.URL.String()); id != "" {
		r, err := withReplaces(req, t.key, id)
		if err != nil {
			return nil, err
		}
		req = r
	}
	ctx, cancel := context.WithCancel(req.Context())
	stop := context.AfterFunc(t.ctx, cancel)
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		stop()
		cancel()
		return nil, err
	}
	t.inspect(req, resp)
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: func() { stop(); cancel() }}
	return resp, nil
}

// cancelOnClose releases a request's context when its response body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel func()
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// problemDoc is an RFC 7807 problem document as ACME CAs send it.
type problemDoc struct {
	Type        string `json:"type"`
	Detail      string `json:"detail"`
	Status      int    `json:"status"`
	Subproblems []struct {
		Type       string `json:"type"`
		Detail     string `json:"detail"`
		Identifier struct {
			Value string `json:"value"`
		} `json:"identifier"`
	} `json:"subproblems"`
}

// challengeDoc is a challenge object, alone or inside an authorization.
type challengeDoc struct {
	Type   string      `json:"type"`
	Status string      `json:"status"`
	Error  *problemDoc `json:"error"`
}

// caObject is the part of an order, authorization or challenge object that says how it
// went: a challenge has a type; the others may hold challenges.
type caObject struct {
	Type       string         `json:"type"`
	Status     string         `json:"status"`
	Error      *problemDoc    `json:"error"`
	Challenges []challengeDoc `json:"challenges"`
}

// inspect reads the JSON responses of the CA (they are small) and records what went wrong.
func (t *caTransport) inspect(req *http.Request, resp *http.Response) {
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		if d := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); d > 0 {
			t.o.noteRetryAfter(d)
		}
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if ct != "application/problem+json" && ct != "application/json" {
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxInspect))
	rest := resp.Body
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), rest), rest}
	if err != nil {
		return
	}
	if ct == "application/problem+json" {
		var p problemDoc
		if json.Unmarshal(body, &p) == nil && p.Type != "" {
			t.problem(req, p, "")
		}
		return
	}
	var obj caObject
	if json.Unmarshal(body, &obj) != nil {
		return
	}
	challenges := obj.Challenges
	switch {
	case obj.Type != "":
		challenges = append(challenges, challengeDoc{Type: obj.Type, Status: obj.Status, Error: obj.Error})
	case obj.Error != nil && obj.Status == "invalid":
		t.problem(req, *obj.Error, "")
	}
	for _, c := range challenges {
		switch {
		case c.Error != nil && c.Status == "invalid":
			t.problem(req, *c.Error, c.Type)
		case c.Status == "valid":
			t.o.noteValidated(c.Type)
		}
	}
}

// problem logs a CA problem and records it on the order.
func (t *caTransport) problem(req *http.Request, p problemDoc, challenge string) {
	detail := p.Detail
	for _, sp := range p.Subproblems {
		detail += fmt.Sprintf("; %s: %s: %s", sp.Identifier.Value, sp.Type, sp.Detail)
	}
	pr := caProblem{Type: p.Type, Detail: detail, Challenge: challenge}
	if !t.o.noteProblem(pr) {
		return // already logged (an authorization is polled until it is final)
	}
	level := slog.LevelWarn
	if strings.HasSuffix(p.Type, ":badNonce") {
		level = slog.LevelDebug // retried by the ACME client, part of the protocol
	}
	msg := fmt.Sprintf("acme: the CA reports for %s: %s: %s", t.o.domain, p.Type, detail)
	if challenge != "" {
		msg = fmt.Sprintf("acme: %s challenge for %s failed: %s: %s", challenge, t.o.domain, p.Type, detail)
	}
	t.log.Log(context.Background(), level, msg, "domain", t.o.domain, "url", req.URL.String(), "ca_error_type", p.Type)
}

func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now)
	}
	return 0
}

func (o *acmeOrder) noteProblem(p caProblem) (isNew bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, q := range o.problems {
		if q == p {
			return false
		}
	}
	o.problems = append(o.problems, p)
	return true
}

func (o *acmeOrder) noteValidated(challenge string) {
	o.mu.Lock()
	o.validated = challenge
	o.mu.Unlock()
}

func (o *acmeOrder) noteRetryAfter(d time.Duration) {
	o.mu.Lock()
	o.retryAfterDur = max(o.retryAfterDur, d)
	o.mu.Unlock()
}

// lastProblem returns the most telling problem of the order: the last one other than a
// bad nonce, or nil.
func (o *acmeOrder) lastProblem() *caProblem {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := len(o.problems) - 1; i >= 0; i-- {
		if !strings.HasSuffix(o.problems[i].Type, ":badNonce") {
			p := o.problems[i]
			return &p
		}
	}
	return nil
}

func (o *acmeOrder) validatedBy() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.validated
}

func (o *acmeOrder) retryAfter() time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.retryAfterDur
}

// retryBackoff is the ACME client's RetryBackoff: a few quick retries of a bad nonce or a
// server error within the order; a rate limit or a longer Retry-After ends the order, and
// run waits (at least) that long before the next.
func (o *acmeOrder) retryBackoff(n int, _ *http.Request, resp *http.Response) time.Duration {
	if n > 3 || resp == nil || resp.StatusCode == http.StatusTooManyRequests {
		return 0
	}
	if d := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); d > 10*time.Second {
		return 0
	}
	return time.Duration(1<<(n-1)) * 500 * time.Millisecond
}
