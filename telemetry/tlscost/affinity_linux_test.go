//go:build linux

package tlscost

import (
	"os/exec"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// An edge pinned to a CPU runs its calibration client on the other CPUs, as its real
// clients are elsewhere.
func TestPlaceChild_ClientRunsOffTheEdgesCPUs(t *testing.T) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil || all.Count() < 2 {
		t.Skipf("needs two CPUs to choose from (%d, %v)", all.Count(), err)
	}
	first := -1
	for cpu := range 1024 {
		if all.IsSet(cpu) {
			first = cpu
			break
		}
	}
	got := make(chan unix.CPUSet, 1)
	go func() {
		// This thread alone is pinned, and ends with the goroutine (no UnlockOSThread).
		runtime.LockOSThread()
		var one unix.CPUSet
		one.Set(first)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			t.Error(err)
			close(got)
			return
		}
		cmd := exec.Command("sleep", "5")
		if err := cmd.Start(); err != nil {
			t.Error(err)
			close(got)
			return
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		placeChild(cmd.Process.Pid)
		var child unix.CPUSet
		if err := unix.SchedGetaffinity(cmd.Process.Pid, &child); err != nil {
			t.Error(err)
		}
		got <- child
	}()
	child, ok := <-got
	if !ok {
		return
	}
	if child.IsSet(first) || child.Count() == 0 {
		t.Errorf("child on %d CPUs, CPU %d included: %v; want the others only", child.Count(), first, child.IsSet(first))
	}
}
