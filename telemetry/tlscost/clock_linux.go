//go:build linux

package tlscost

import (
	"os"
	"strconv"
	"strings"
	"time"
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

// machineCPU returns the CPU time all CPUs of the machine have spent busy so far (every
// state but idle and iowait; steal counts as busy: the hypervisor ran someone else), in
// nanoseconds, from /proc/stat; 0 when it cannot be read.
func machineCPU() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, f := range fields[1:] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0
		}
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest times are already in user
			busy += v
		}
	}
	return busy * int64(time.Second) / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/stat: 100 on every Linux architecture Go
// supports.
const clockTicks = 100
