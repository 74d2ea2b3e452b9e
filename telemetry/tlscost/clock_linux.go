//go:build linux

package tlscost

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// threadClock reads the CPU time of the OS thread it was obtained on (the caller stays
// locked to that thread in between): a perf task-clock counter of the thread, read with
// read(2), or, where perf events are refused (a seccomp filter, perf_event_paranoid 3),
// CLOCK_THREAD_CPUTIME_ID. Both count the same nanoseconds (they agree within 0.5% here),
// but reading the thread clock makes the scheduler bring the thread's runtime up to date
// (update_curr), and when its slice is used up it is preempted on the way back to user
// space: on a 2-core machine with the edge pinned to one core that added ~0.6 context
// switches and ~0.4 wake-ups of the Go runtime's sysmon per new connection, +5–9% CPU per
// connection for six clock readings. A perf counter is read from perf's own accounting and
// leaves the scheduler alone: the same readings cost ~0% there.
type threadClock int // a perf event file descriptor, or fallbackClock

// fallbackClock is the threadClock of CLOCK_THREAD_CPUTIME_ID.
const fallbackClock threadClock = -1

// perfClocks holds each OS thread's counter, by thread id. It is the process's, not an
// Accountant's: a counter belongs to a thread, and every Accountant may run on every
// thread. The Go runtime does not end its threads (but for one whose goroutine exits
// locked, which edgeproxy's never do), so it holds one descriptor per thread. The map is
// replaced, never changed, so that a lookup takes no lock (and, unlike a sync.Map keyed by
// an int, allocates nothing).
var (
	perfClocks   atomic.Pointer[map[int32]threadClock]
	perfClocksMu sync.Mutex  // serializes replacements of perfClocks
	perfRefused  atomic.Bool // perf_event_open failed once: the clock from now on
)

// currentThreadClock returns the calling thread's clock, opening its counter on first use.
func currentThreadClock() threadClock {
	if perfRefused.Load() {
		return fallbackClock
	}
	r, _, _ := unix.RawSyscall(unix.SYS_GETTID, 0, 0, 0)
	tid := int32(r)
	if m := perfClocks.Load(); m != nil {
		if c, ok := (*m)[tid]; ok {
			return c
		}
	}
	return openThreadClock(tid)
}

func openThreadClock(tid int32) threadClock {
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Config: unix.PERF_COUNT_SW_TASK_CLOCK,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		// Time on the CPU in user and kernel mode alike (task-clock is a time, not a
		// sampled event); excluding the kernel is what perf_event_paranoid 2 requires
		// of an unprivileged process.
		Bits: unix.PerfBitExcludeKernel | unix.PerfBitExcludeHv,
	}
	// By thread id, not 0 (the calling thread): a goroutine not locked to its thread may
	// have moved since it asked for its id.
	fd, err := unix.PerfEventOpen(&attr, int(tid), -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		perfRefused.Store(true)
		return fallbackClock
	}
	perfClocksMu.Lock()
	defer perfClocksMu.Unlock()
	next := map[int32]threadClock{}
	if m := perfClocks.Load(); m != nil {
		if c, ok := (*m)[tid]; ok { // opened meanwhile, by a goroutine that moved here
			_ = unix.Close(fd)
			return c
		}
		for k, v := range *m {
			next[k] = v
		}
	}
	next[tid] = threadClock(fd)
	perfClocks.Store(&next)
	return threadClock(fd)
}

// now returns the thread's CPU time in nanoseconds (from an arbitrary origin), or 0 if
// neither clock can be read. It is read with a raw system call: it never blocks, and the
// runtime's entersyscall / exitsyscall bookkeeping would cost more than the read.
func (t threadClock) now() int64 {
	if t >= 0 {
		var v int64
		_, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(t), uintptr(unsafe.Pointer(&v)), 8)
		if errno == 0 {
			return v
		}
	}
	var ts unix.Timespec
	_, _, errno := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, unix.CLOCK_THREAD_CPUTIME_ID, uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		return 0
	}
	return ts.Nano()
}

// threadCPU returns the CPU time of the calling OS thread in nanoseconds, from an arbitrary
// origin. The caller must be locked to its thread (runtime.LockOSThread) for two readings
// to be comparable; a segment read many times keeps the threadClock instead.
func threadCPU() int64 { return currentThreadClock().now() }

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
