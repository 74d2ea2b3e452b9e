package testutil

import (
	"log/slog"
	"testing"

	"edgeproxy/internal/testutil/fixture"
)

// Buffer is an io.Writer safe for concurrent use, readable while it is
// written: the destination of a server's log or a child's output that a test
// searches (see fixture.Buffer). The zero value is ready to use.
type Buffer = fixture.Buffer

// NewLogger returns a logger that writes text at debug level into a Buffer,
// and the Buffer, for code under test whose log lines a test checks. When
// the test fails, the log is printed with it.
func NewLogger(t testing.TB) (*slog.Logger, *Buffer) {
	t.Helper()
	logs := &Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of the code under test:\n%s", logs.Tail(logTail))
		}
	})
	return slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), logs
}
