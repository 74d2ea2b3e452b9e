package writebatch

import (
	"io"
	"net"
	"testing"
)

// A batch longer than maxBatch is written out as it fills, and a write that fails in the
// batch reports its error at EndBatch.
func TestConn_FlushesWhenFullAndReportsTheWriteError(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	bc := &Conn{Conn: a}
	got := make(chan int, 1)
	go func() {
		n, _ := io.Copy(io.Discard, b)
		got <- int(n)
	}()
	bc.BeginBatch()
	piece := make([]byte, 20<<10)
	for range 4 { // 80 KiB: more than one batch
		if _, err := bc.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	if err := bc.EndBatch(); err != nil {
		t.Fatal(err)
	}
	_ = a.Close()
	if n := <-got; n != 80<<10 {
		t.Errorf("%d bytes arrived; want %d", n, 80<<10)
	}
	bc.BeginBatch()
	if _, err := bc.Write([]byte("late")); err != nil {
		t.Fatal(err) // gathered, not yet written
	}
	if err := bc.EndBatch(); err == nil {
		t.Error("EndBatch on a closed connection: no error")
	}
}
