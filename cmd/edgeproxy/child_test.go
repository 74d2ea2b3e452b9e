package main

import (
	"os"
	"testing"

	"edgeproxy/telemetry/tlscost"
)

// TestMain lets the TLS cost calibration's child process (this test binary, re-executed)
// be the calibration client, as main does.
func TestMain(m *testing.M) {
	if code, ok := tlscost.RunChild(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}
