package logformat

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"edgeproxy/config"
)

// A format change reaches the loggers handed out before it, derived ones included, and
// keeps what they were derived with.
func TestHandler_SetFormatReachesDerivedLoggers(t *testing.T) {
	var buf bytes.Buffer
	h := New(&buf, config.LogText)
	log := slog.New(h)
	derived := log.With("part", "proxy").WithGroup("req")

	log.Info("one")
	derived.Info("two", "path", "/")
	h.SetFormat(config.LogJSON)
	log.Info("three")
	derived.Info("four", "path", "/x")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines; want 4:\n%s", len(lines), buf.String())
	}
	for i, want := range []string{`msg=one`, `msg=two part=proxy req.path=/`, `"msg":"three"`, `"msg":"four","part":"proxy","req":{"path":"/x"}`} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d: %s; want it to contain %s", i+1, lines[i], want)
		}
	}
}
