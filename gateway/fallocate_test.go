package gateway

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// fallocate(2)'s modes map onto the same requests for every door.
func TestFallocateModes(t *testing.T) {
	for _, tc := range []struct {
		mode uint32
		op   Op
		keep bool
		err  error
	}{
		{0, OpAllocate, false, nil},
		{unix.FALLOC_FL_KEEP_SIZE, OpAllocate, true, nil},
		{unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, OpDiscard, true, nil},
		{unix.FALLOC_FL_PUNCH_HOLE, 0, false, ErrUnsupported},
		{unix.FALLOC_FL_ZERO_RANGE, OpWriteZeroes, false, nil},
		{unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, OpWriteZeroes, true, nil},
		{unix.FALLOC_FL_COLLAPSE_RANGE, 0, false, ErrUnsupported},
	} {
		req, err := Fallocate(tc.mode, 4096, 8192)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("mode %#x: err %v, want %v", tc.mode, err, tc.err)
			}
			continue
		}
		if err != nil || req.Op != tc.op || req.KeepSize != tc.keep || req.Offset != 4096 || req.Length != 8192 {
			t.Errorf("mode %#x: %+v, %v; want op %v keep %v", tc.mode, req, err, tc.op, tc.keep)
		}
	}
}
