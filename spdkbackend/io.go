package spdkbackend

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sluice-storage/sluice/gateway/device"
)

func (d *Device) checkRange(off, length int64) error {
	if off < 0 || length < 0 || off > d.size || length > d.size-off {
		return fmt.Errorf("%w: offset %d length %d size %d", device.ErrOutOfRange, off, length, d.size)
	}
	return nil
}

// split cuts [off, off+n) into a partial head block, a run of whole blocks
// [a, b) and a partial tail block: a == off when the head is whole (or
// empty), b == off+n when the tail is.
func (d *Device) split(off, n int64) (a, b int64) {
	end := off + n
	a = (off + d.bs - 1) / d.bs * d.bs
	b = end / d.bs * d.bs
	if a > b { // within one block
		a, b = end, end
	}
	return a, b
}

func (d *Device) lock(block int64) func() {
	m := &d.locks[uint64(block)%uint64(len(d.locks))]
	m.Lock()
	return m.Unlock
}

// ReadAt reads len(p) bytes at off; any offset and length.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	end := d.stats.begin(opRead)
	n, err := d.readAt(p, off)
	end(int64(n), err)
	return n, err
}

func (d *Device) readAt(p []byte, off int64) (int, error) {
	n := int64(len(p))
	if err := d.checkRange(off, n); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	a, b := d.split(off, n)
	if a < b {
		if _, err := d.c.ReadAt(p[a-off:b-off], a); err != nil {
			return 0, err
		}
	}
	// Partial blocks: the head [off, a) and the tail [b, off+n); when the
	// range lies within one block, a == b == off+n and the head is all.
	for _, r := range [][2]int64{{off, a}, {b, off + n}} {
		if r[0] == r[1] {
			continue
		}
		blk := r[0] / d.bs * d.bs
		buf := make([]byte, d.bs)
		if _, err := d.c.ReadAt(buf, blk); err != nil {
			return 0, err
		}
		copy(p[r[0]-off:r[1]-off], buf[r[0]-blk:])
	}
	return len(p), nil
}

// WriteAt writes p at off; any offset and length. Partial blocks are
// read, patched and written back under their block's lock.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	end := d.stats.begin(opWrite)
	n, err := d.writeAt(p, off)
	end(int64(n), err)
	return n, err
}

func (d *Device) writeAt(p []byte, off int64) (int, error) {
	n := int64(len(p))
	if err := d.checkRange(off, n); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	a, b := d.split(off, n)
	if a < b {
		if _, err := d.c.WriteAt(p[a-off:b-off], a); err != nil {
			return 0, err
		}
	}
	for _, r := range [][2]int64{{off, a}, {b, off + n}} {
		if r[0] == r[1] {
			continue
		}
		if err := d.patch(p[r[0]-off:r[1]-off], r[0]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// patch writes p (within one block) at off: read the block, copy, write.
func (d *Device) patch(p []byte, off int64) error {
	blk := off / d.bs * d.bs
	unlock := d.lock(blk / d.bs)
	defer unlock()
	buf := make([]byte, d.bs)
	if _, err := d.c.ReadAt(buf, blk); err != nil {
		return err
	}
	copy(buf[off-blk:], p)
	_, err := d.c.WriteAt(buf, blk)
	return err
}

// Discard drops [off, off+length): WRITE_ZEROES with unmap when
// DiscardZeroes (partial blocks are written with zeros), else DISCARD of
// the whole blocks inside the range when the controller offers it, else
// nothing.
func (d *Device) Discard(off, length int64) error {
	end := d.stats.begin(opDiscard)
	err := d.discard(off, length)
	end(length, err)
	return err
}

func (d *Device) discard(off, length int64) error {
	if err := d.checkRange(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	a, b := d.split(off, length)
	if !d.zeroes {
		if a >= b || !d.c.HasDiscard() {
			return nil
		}
		return d.c.Discard(a, b-a)
	}
	if a < b {
		if err := d.c.WriteZeroes(context.Background(), a, b-a, true); err != nil {
			return err
		}
	}
	for _, r := range [][2]int64{{off, a}, {b, off + length}} {
		if r[0] != r[1] {
			if err := d.patch(make([]byte, r[1]-r[0]), r[0]); err != nil {
				return err
			}
		}
	}
	return nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
