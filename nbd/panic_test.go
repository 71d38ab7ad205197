package nbd

import (
	"fmt"
	"testing"

	"github.com/sluice-storage/sluice/gateway"
)

// A panic while running a request (in the export's Do or Extents) fails
// that request with EIO; the connection serves the next request, and the
// panic is counted.
func TestExportPanicFailsOnlyThatRequest(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) { testExportPanic(t, structured) })
	}
}

func testExportPanic(t *testing.T, structured bool) {
	m := newMemExport(1 << 20)
	m.extentFn = func(off, length int64) ([]gateway.Extent, error) {
		if m.panicky.Load() {
			panic("memExport: Extents told to panic")
		}
		return []gateway.Extent{{Offset: off, Length: length}}, nil
	}
	s, sock := startServer(t, memExports{testName: m}, Options{})
	rc := dial(t, sock)
	rc.connect(testName, structured)
	cmds := []uint16{cmdRead, cmdWrite, cmdTrim}
	if structured {
		cmds = append(cmds, cmdBlockStatus)
	}
	for i, cmd := range cmds {
		var payload []byte
		if cmd == cmdWrite {
			payload = make([]byte, 512)
		}
		m.panicky.Store(true)
		if r := rc.do(0, cmd, 0, 512, payload); r.errno != errnoIO {
			t.Fatalf("cmd %d that panicked: errno %d, want EIO", cmd, r.errno)
		}
		m.panicky.Store(false)
		if r := rc.do(0, cmd, 0, 512, payload); r.errno != 0 {
			t.Fatalf("cmd %d after a panic: errno %d", cmd, r.errno)
		}
		if n := s.Panics(); n != uint64(i+1) {
			t.Fatalf("Panics() = %d after %d panics", n, i+1)
		}
	}
}
