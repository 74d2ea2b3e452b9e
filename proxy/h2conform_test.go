package proxy

import (
	"net/http"
	"testing"
)

// ConformHTTP2 sets the frame size and keeps the HTTP/2 options already set.
func TestConformHTTP2_SetsFrameSizeKeepsOtherOptions(t *testing.T) {
	srv := &http.Server{HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 50}}
	ConformHTTP2(srv)
	if got := srv.HTTP2.MaxReadFrameSize; got != 16384 {
		t.Errorf("MaxReadFrameSize %d; want 16384", got)
	}
	if got := srv.HTTP2.MaxConcurrentStreams; got != 50 {
		t.Errorf("MaxConcurrentStreams %d; want 50 (kept)", got)
	}
	bare := &http.Server{}
	ConformHTTP2(bare)
	if bare.HTTP2 == nil || bare.HTTP2.MaxReadFrameSize != 16384 {
		t.Errorf("server without HTTP2 options: got %+v; want MaxReadFrameSize 16384", bare.HTTP2)
	}
}
