//go:build linux

package tlscost

import "golang.org/x/sys/unix"

// placeChild lets the calibration's client process run on the CPUs this process may not
// use, when there are any: an edge pinned to one core (taskset, a cpuset) has its clients
// elsewhere, on other machines, and a client sharing its core during the calibration makes
// the exchanges cheaper for the server (no wake-up of another CPU, the client's work in
// the server's pauses) and the factors low. The child inherits this process's affinity;
// it is widened to the other CPUs online, or left as it is if that fails (a cpuset
// that allows no others) or there are none.
func placeChild(pid int) {
	var mine, all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mine); err != nil {
		return
	}
	for cpu := range 1024 {
		all.Set(cpu)
	}
	// The kernel keeps the CPUs that exist and that the cpuset allows.
	if err := unix.SchedSetaffinity(pid, &all); err != nil {
		return
	}
	if err := unix.SchedGetaffinity(pid, &all); err != nil {
		return
	}
	others := all
	for cpu := range 1024 {
		if mine.IsSet(cpu) {
			others.Clear(cpu)
		}
	}
	if others.Count() > 0 {
		_ = unix.SchedSetaffinity(pid, &others)
	}
}
