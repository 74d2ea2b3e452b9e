//go:build !linux

package tlscost

// lockRefinement has no lock to take outside Linux, where there is nothing to refine
// either (no thread clock, no calibration samples).
func lockRefinement(string) (unlock func(), ok bool) { return func() {}, true }
