//go:build !linux

package placement

import (
	"errors"
	"syscall"
)

// The benchmark measures CPU from /proc and pins with sched_setaffinity: Linux only.
// Elsewhere the binary builds, and `edgeproxy bench` says it cannot pin (and its load
// generator, that it cannot read /proc).

func sysProcAttr() *syscall.SysProcAttr { return nil }

func withAffinity(cpu int, start func() error) error {
	if cpu >= 0 {
		return errors.New("pinning to a CPU needs Linux (sched_setaffinity)")
	}
	return start()
}
