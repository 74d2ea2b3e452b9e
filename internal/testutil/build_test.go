package testutil

import (
	"os"
	"testing"
	"time"
)

func TestBuildEdgeproxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the whole command")
	}
	bin := BuildEdgeproxy(t)
	fi, err := os.Stat(bin)
	if err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("BuildEdgeproxy() = %q: %v %v", bin, fi, err)
	}
	if again := BuildEdgeproxy(t); again != bin {
		t.Errorf("second BuildEdgeproxy() = %q, want %q", again, bin)
	}
	p := StartProc(t, bin, "version")
	code, err := p.Wait(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("edgeproxy version: exit %d: %s", code, p.Output())
}
