package h1

import (
	"runtime"
	"syscall"
	"testing"
)

// measureCPU makes b also report the CPU time of its loop, in "cpu-ns/op". On this
// project's shared two-core machine, wall-clock ns/op includes time spent waiting for
// a core; the calling thread's CPU time does not. It locks the goroutine to its thread
// for the rest of the benchmark, so call it last, right before the loop.
func measureCPU(b *testing.B) {
	runtime.LockOSThread()
	start := threadCPU()
	b.Cleanup(func() {
		b.ReportMetric(float64(threadCPU()-start)/float64(b.N), "cpu-ns/op")
		runtime.UnlockOSThread()
	})
}

func threadCPU() int64 {
	const rusageThread = 1 // RUSAGE_THREAD
	var ru syscall.Rusage
	if syscall.Getrusage(rusageThread, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
