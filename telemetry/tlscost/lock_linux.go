//go:build linux

package tlscost

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockRefinement takes the refinement lock of the calibration cache in dir without
// waiting: edges of one build on one machine share their rounds through the cache, and one
// measuring at a time is enough (several at once would also measure each other). ok is
// false when another process holds it; unlock releases it. The lock is a flock(2) on a
// file beside the calibration, released by the kernel if the process dies.
func lockRefinement(dir string) (unlock func(), ok bool) {
	if dir == "" {
		return func() {}, true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return func() {}, true // no cache to share: refine alone
	}
	f, err := os.OpenFile(filepath.Join(dir, ".tlscost-refine.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return func() {}, true
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, false
	}
	return func() { _ = f.Close() }, true
}
