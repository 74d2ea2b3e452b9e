//go:build !linux

package tlscost

// threadClock has no per-thread CPU clock to read outside Linux: handshake CPU reads as
// zero there, and New says so.
type threadClock int

const fallbackClock threadClock = -1

func currentThreadClock() threadClock { return fallbackClock }

func (threadClock) now() int64 { return 0 }

func threadCPU() int64 { return 0 }

func threadClockWorks() bool { return false }

func processCPU() int64 { return 0 }
