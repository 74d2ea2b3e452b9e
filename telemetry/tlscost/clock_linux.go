//go:build linux

package tlscost

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// threadCPU returns the CPU time consumed so far by the calling OS thread, in nanoseconds,
// from CLOCK_THREAD_CPUTIME_ID. It is read with a raw system call: the vDSO has no fast path
// for CPU-time clocks, and unix.ClockGettime would go through the runtime's entersyscall /
// exitsyscall bookkeeping for a call that never blocks. The caller must be locked to its
// thread (runtime.LockOSThread) for two readings to be comparable.
func threadCPU() int64 {
	var ts unix.Timespec
	_, _, errno := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, unix.CLOCK_THREAD_CPUTIME_ID, uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		return 0
	}
	return ts.Nano()
}

// threadClockWorks reports whether threadCPU reads a real clock on this system.
func threadClockWorks() bool { return threadCPU() > 0 }

// processCPU returns the CPU time consumed so far by the whole process (every thread, user
// and system), in nanoseconds, from CLOCK_PROCESS_CPUTIME_ID.
func processCPU() int64 {
	var ts unix.Timespec
	_, _, errno := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, unix.CLOCK_PROCESS_CPUTIME_ID, uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		return 0
	}
	return ts.Nano()
}
