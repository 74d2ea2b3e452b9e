package health

import (
	"context"
	"edgeproxy/internal/testutil"
	"net"
	"testing"
	"time"
)

// A TCP-connect check (passthrough targets, as an NLB's TCP check) passes when the
// target accepts, sends nothing, and fails when the port is closed.
func TestCheckOnce_TCPConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed := testutil.DeadAddr(t)
	t.Cleanup(func() { ln.Close() })

	opts := Options{TCPConnect: true, Timeout: time.Second} // no Matcher: not used
	if got := CheckOnce(context.Background(), opts, open); !got.Pass || got.Reason != ReasonNone {
		t.Errorf("open port: got %+v; want a pass", got)
	}
	if got := CheckOnce(context.Background(), opts, closed); got.Pass || got.Reason != ReasonFailedHealthChecks {
		t.Errorf("closed port: got %+v; want a fail with %s", got, ReasonFailedHealthChecks)
	}
}
