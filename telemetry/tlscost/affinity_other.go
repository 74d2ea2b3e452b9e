//go:build !linux

package tlscost

// placeChild does nothing outside Linux (see affinity_linux.go).
func placeChild(int) {}
