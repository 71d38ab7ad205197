package spdkbackend

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/virtio"
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
	err := d.checkRange(off, int64(len(p)))
	if err == nil && len(p) > 0 {
		err = d.do(func(ctx context.Context, c *virtio.Client) error { return d.readAt(ctx, c, p, off) })
	}
	n := len(p)
	if err != nil {
		n = 0
	}
	end(int64(n), err)
	return n, err
}

func (d *Device) readAt(ctx context.Context, c *virtio.Client, p []byte, off int64) error {
	n := int64(len(p))
	a, b := d.split(off, n)
	if a < b {
		if err := c.Do(ctx, &gateway.Request{Op: gateway.OpRead, Buf: p[a-off : b-off], Offset: a}); err != nil {
			return err
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
		if err := c.Do(ctx, &gateway.Request{Op: gateway.OpRead, Buf: buf, Offset: blk}); err != nil {
			return err
		}
		copy(p[r[0]-off:r[1]-off], buf[r[0]-blk:])
	}
	return nil
}

// WriteAt writes p at off; any offset and length. Partial blocks are
// read, patched and written back under their block's lock.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	end := d.stats.begin(opWrite)
	err := d.checkRange(off, int64(len(p)))
	if err == nil && len(p) > 0 {
		err = d.do(func(ctx context.Context, c *virtio.Client) error { return d.writeAt(ctx, c, p, off) })
	}
	n := len(p)
	if err != nil {
		n = 0
	}
	end(int64(n), err)
	return n, err
}

func (d *Device) writeAt(ctx context.Context, c *virtio.Client, p []byte, off int64) error {
	n := int64(len(p))
	a, b := d.split(off, n)
	if a < b {
		if err := c.Do(ctx, &gateway.Request{Op: gateway.OpWrite, Buf: p[a-off : b-off], Offset: a}); err != nil {
			return err
		}
	}
	for _, r := range [][2]int64{{off, a}, {b, off + n}} {
		if r[0] == r[1] {
			continue
		}
		if err := d.patch(ctx, c, p[r[0]-off:r[1]-off], r[0]); err != nil {
			return err
		}
	}
	return nil
}

// patch writes p (within one block) at off: read the block, copy, write.
func (d *Device) patch(ctx context.Context, c *virtio.Client, p []byte, off int64) error {
	blk := off / d.bs * d.bs
	unlock := d.lock(blk / d.bs)
	defer unlock()
	buf := make([]byte, d.bs)
	if err := c.Do(ctx, &gateway.Request{Op: gateway.OpRead, Buf: buf, Offset: blk}); err != nil {
		return err
	}
	copy(buf[off-blk:], p)
	return c.Do(ctx, &gateway.Request{Op: gateway.OpWrite, Buf: buf, Offset: blk})
}

// Discard drops [off, off+length): WRITE_ZEROES with unmap when
// DiscardZeroes (partial blocks are written with zeros), else DISCARD of
// the whole blocks inside the range when the controller offers it, else
// nothing.
func (d *Device) Discard(off, length int64) error {
	end := d.stats.begin(opDiscard)
	err := d.checkRange(off, length)
	if a, b := d.split(off, length); err == nil && length > 0 && (d.zeroes || (a < b && d.discard)) {
		err = d.do(func(ctx context.Context, c *virtio.Client) error { return d.discardOn(ctx, c, off, length) })
	}
	end(length, err)
	return err
}

func (d *Device) discardOn(ctx context.Context, c *virtio.Client, off, length int64) error {
	a, b := d.split(off, length)
	if !d.zeroes {
		return c.DiscardContext(ctx, a, b-a)
	}
	if a < b {
		if err := c.WriteZeroes(ctx, a, b-a, true); err != nil {
			return err
		}
	}
	for _, r := range [][2]int64{{off, a}, {b, off + length}} {
		if r[0] != r[1] {
			if err := d.patch(ctx, c, make([]byte, r[1]-r[0]), r[0]); err != nil {
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
