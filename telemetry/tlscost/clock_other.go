//go:build !linux

package tlscost

// threadCPU has no per-thread CPU clock to read outside Linux: handshake CPU reads as zero
// there, and New says so.
func threadCPU() int64 { return 0 }

func threadClockWorks() bool { return false }

func processCPU() int64 { return 0 }

func machineCPU() int64 { return 0 }
