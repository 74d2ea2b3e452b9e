package certs

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"golang.org/x/crypto/acme"
)

// A renewal order whose "replaces" the CA answers with a problem, a client error or its
// own failure (Pebble's 500 for a certificate ID it cannot find), is placed again without
// it; a rate limit is not, and neither is a transport error, which is no answer.
func TestRefusedByCA_ProblemsOtherThanRateLimits(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{&acme.Error{StatusCode: http.StatusBadRequest, ProblemType: "urn:ietf:params:acme:error:alreadyReplaced"}, true},
		{fmt.Errorf("order: %w", &acme.Error{StatusCode: http.StatusInternalServerError, ProblemType: "urn:ietf:params:acme:error:serverInternal"}), true},
		{&acme.Error{StatusCode: http.StatusTooManyRequests, ProblemType: "urn:ietf:params:acme:error:rateLimited"}, false},
		{errors.New("dial tcp: connection refused"), false},
		{nil, false},
	} {
		if got := refusedByCA(tt.err); got != tt.want {
			t.Errorf("refusedByCA(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
}
