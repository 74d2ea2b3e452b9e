package fastpath

import (
	"testing"

	"edgeproxy/telemetry"
)

// A keep-alive request through the fast path, with the real metrics, allocates nothing:
// the head is parsed in place, the target connection is pooled, the metrics' label
// values are cached per target. An allocation that creeps in fails CI here, before any
// benchmark would notice it.
func TestFastPath_KeepAliveRequestAllocatesNothing(t *testing.T) {
	if r := testing.Benchmark(func(b *testing.B) { benchmarkFastPath(b, telemetry.New(), false) }); r.AllocsPerOp() != 0 {
		t.Errorf("%d allocations (%d B) per keep-alive request; want 0", r.AllocsPerOp(), r.AllocedBytesPerOp())
	}
}

// Over TLS the only allocations are crypto/tls's own: one per record read on each side
// (tls.Conn.readFromUntil's reader escapes), the edge's and the benchmark client's.
func TestFastPath_TLSKeepAliveRequestAllocatesOnlyInCryptoTLS(t *testing.T) {
	if raceEnabled {
		t.Log("the race detector's instrumentation makes crypto/tls allocate more: the bound is checked without -race (scripts/test.sh runs it)")
		return
	}
	if r := testing.Benchmark(func(b *testing.B) { benchmarkFastPath(b, telemetry.New(), true) }); r.AllocsPerOp() > 2 {
		t.Errorf("%d allocations (%d B) per TLS keep-alive request; want at most crypto/tls's 2", r.AllocsPerOp(), r.AllocedBytesPerOp())
	}
}
