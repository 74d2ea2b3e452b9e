package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"edgeproxy/config"
)

// CheckOnce reports what one check of the loop would: a pass, and a 400 with the
// ALLOWED_HOSTS hint naming the Host that was sent.
func TestCheckOnce(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "app.test" {
			http.Error(w, "Bad Request (400)", http.StatusBadRequest)
		}
	}))
	defer backend.Close()
	addr := backend.Listener.Addr().String()
	m, _ := config.ParseMatcher("200-399")
	tests := []struct {
		name, host string
		want       Result
		wantDetail string
	}{
		{"site name", "app.test", Result{Pass: true, Status: 200, Reason: ReasonNone}, ""},
		{"target address", "", Result{Status: 400, Reason: ReasonResponseCodeMismatch}, `ALLOWED_HOSTS probably rejects Host "` + addr + `"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CheckOnce(context.Background(), Options{Path: "/", Host: tt.host, Timeout: 2 * time.Second, Matcher: m}, addr)
			detail := got.Detail
			got.Detail = ""
			if got != tt.want || !strings.Contains(detail, tt.wantDetail) {
				t.Errorf("got %+v (detail %q); want %+v with %q", got, detail, tt.want, tt.wantDetail)
			}
		})
	}
}
