package device

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// TestFileWriteSplits: a write longer than maxWriteLen, at an offset that
// is not aligned to it, goes out as several pwrites and lands whole, for
// both WriteAt and WriteAtSync.
func TestFileWriteSplits(t *testing.T) {
	d, err := OpenFile(filepath.Join(t.TempDir(), "pool"), 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r := rand.New(rand.NewPCG(1, 2))
	for i, write := range []func([]byte, int64) (int, error){d.WriteAt, d.WriteAtSync} {
		p := make([]byte, 3*maxWriteLen+1234)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		off := int64(i)<<20 + 4096 + 17
		if n, err := write(p, off); err != nil || n != len(p) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
		got := make([]byte, len(p)+2)
		if _, err := d.ReadAt(got, off-1); err != nil {
			t.Fatal(err)
		}
		if got[0] != 0 || got[len(got)-1] != 0 || !bytes.Equal(got[1:len(got)-1], p) {
			t.Fatalf("write %d: read back differs", i)
		}
	}
}
