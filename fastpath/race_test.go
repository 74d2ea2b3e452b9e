//go:build race

package fastpath

// raceEnabled: the race detector's instrumentation makes crypto/tls allocate more per
// record, so the TLS allocation guard only holds without it.
const raceEnabled = true
