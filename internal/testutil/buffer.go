package testutil

import (
	"strings"
	"sync"
)

// maxOutput bounds what a captured buffer keeps; output past it is dropped
// and counted, so a long load test cannot exhaust memory.
const maxOutput = 32 << 20

// syncBuffer is an io.Writer safe for concurrent use that wakes waiters on
// every write.
type syncBuffer struct {
	mu      sync.Mutex
	b       strings.Builder
	dropped int64
	changed chan struct{} // closed and replaced on every write
}

func newSyncBuffer() *syncBuffer {
	return &syncBuffer{changed: make(chan struct{})}
}

// Write appends p (or as much as fits under maxOutput) and never fails.
func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	room := maxOutput - s.b.Len()
	switch {
	case room >= len(p):
		s.b.Write(p)
	case room > 0:
		s.b.Write(p[:room])
		s.dropped += int64(len(p) - room)
	default:
		s.dropped += int64(len(p))
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return len(p), nil
}

// WriteString is Write for a string.
func (s *syncBuffer) WriteString(str string) (int, error) {
	return s.Write([]byte(str))
}

// String returns everything kept so far.
func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// snapshot returns the contents and a channel closed at the next write.
func (s *syncBuffer) snapshot() (string, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String(), s.changed
}

// tail returns at most the last n bytes, noting what was cut.
func (s *syncBuffer) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.b.String()
	note := ""
	if len(out) > n {
		note = "[... earlier output cut ...]\n"
		out = out[len(out)-n:]
	}
	if s.dropped > 0 {
		out += "\n[... later output dropped: buffer full ...]"
	}
	return note + out
}
