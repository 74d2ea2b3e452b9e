package tlscost

import (
	"os"
	"testing"
)

// TestMain lets the calibration's child process (this test binary, re-executed) be the
// calibration client, as edgeproxy's main does.
func TestMain(m *testing.M) {
	if code, ok := RunChild(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}
