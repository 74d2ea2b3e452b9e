//go:build !linux

package h1

import "testing"

// measureCPU reports nothing where there is no per-thread CPU clock to read.
func measureCPU(b *testing.B) {}
