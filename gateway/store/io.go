package store

import (
	"context"
	"fmt"
	"math/bits"

	"github.com/dgraph-io/badger/v4"
)

// Extent is one run of a volume's address space (see Volume.Extents).
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	Hole   bool  `json:"hole"` // unallocated: reads as zeros, holds no pool space
}

// syncWriter is a device that can make one write durable by itself.
type syncWriter interface {
	WriteAtSync(p []byte, off int64) (int, error)
}

// window is a run of at most numStripes consecutive chunks with their
// stripes locked. Locking whole windows in ascending stripe order keeps
// multi-chunk requests deadlock-free.
type window struct {
	first, n int64 // chunk indexes [first, first+n)
	mask     uint64
}

func (v *Volume) window(off, length int64) window {
	first := off >> v.chunkBits
	last := (off + length - 1) >> v.chunkBits
	n := min(last-first+1, numStripes)
	var mask uint64
	if n == numStripes {
		mask = ^uint64(0)
	} else {
		mask = (uint64(1)<<n - 1) << (first % numStripes)
		mask |= (uint64(1)<<n - 1) >> (numStripes - first%numStripes) // wrap-around
	}
	return window{first: first, n: n, mask: mask}
}

func (v *Volume) rlock(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		v.stripes[bits.TrailingZeros64(m)].RLock()
	}
}

func (v *Volume) runlock(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		v.stripes[bits.TrailingZeros64(m)].RUnlock()
	}
}

func (v *Volume) lock(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		v.stripes[bits.TrailingZeros64(m)].Lock()
	}
}

func (v *Volume) unlock(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		v.stripes[bits.TrailingZeros64(m)].Unlock()
	}
}

func (v *Volume) checkRange(inode uint64, off, length int64, pastEnd error) error {
	if inode != 0 {
		return fmt.Errorf("volume %s: inode %d: %w (block volumes have inode 0 only)", v.ref, inode, ErrUnsupported)
	}
	size := v.size.Load()
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("volume %s: offset %d length %d beyond size %d: %w", v.ref, off, length, size, pastEnd)
	}
	return nil
}

// ReadAt fills p from the volume at off. Unallocated chunks read as zeros.
func (v *Volume) ReadAt(ctx context.Context, inode uint64, p []byte, off int64) error {
	if err := v.checkRange(inode, off, int64(len(p)), ErrOutOfRange); err != nil {
		return err
	}
	for len(p) > 0 {
		w := v.window(off, int64(len(p)))
		v.rlock(w.mask)
		n, err := v.readWindow(w, p, off)
		v.runlock(w.mask)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// readWindow reads what of p falls in w, coalescing chunks that are adjacent
// on the device into one device read. Stripes of w are read-locked.
func (v *Volume) readWindow(w window, p []byte, off int64) (int, error) {
	if v.deleted {
		return 0, fmt.Errorf("volume %s: %w", v.ref, ErrNotFound)
	}
	t := v.table.Load()
	done := 0
	for idx := w.first; idx < w.first+w.n && done < len(p); {
		in := (off + int64(done)) & (v.chunkSize - 1)
		dev := t.get(idx)
		runLen, next := v.run(t, w, idx, dev, in, int64(len(p)-done))
		buf := p[done : done+int(runLen)]
		if dev == 0 {
			clear(buf)
		} else if _, err := v.s.dev.ReadAt(buf, dev+in); err != nil {
			v.s.log.Error("device read failed", "volume", v.ref, "offset", off+int64(done), "err", err)
			return done, fmt.Errorf("%w: %w", ErrIO, err)
		}
		done += int(runLen)
		idx = next
	}
	return done, nil
}

// run measures how far one device IO can go from byte in of chunk idx
// (at device offset dev, 0 for a hole), for at most left bytes: it extends
// over the following chunks of w while each continues the extent on the
// device (or, for a hole, is also a hole). It returns the run's length in
// bytes and the index of the first chunk after it.
func (v *Volume) run(t *chunkTable, w window, idx, dev, in, left int64) (length, next int64) {
	length = min(left, v.chunkSize-in)
	next = idx + 1
	for next < w.first+w.n && length < left {
		nd := t.get(next)
		if (dev == 0) != (nd == 0) || (dev != 0 && nd != dev+(next-idx)*v.chunkSize) {
			break
		}
		length += min(left-length, v.chunkSize)
		next++
	}
	return length, next
}

// WriteAt writes p to the volume at off. With fua, the data is durable when
// WriteAt returns.
func (v *Volume) WriteAt(ctx context.Context, inode uint64, p []byte, off int64, fua bool) error {
	if err := v.checkRange(inode, off, int64(len(p)), ErrNoSpace); err != nil {
		return err
	}
	if v.readOnly {
		return fmt.Errorf("volume %s: %w", v.ref, ErrReadOnly)
	}
	allocated := false
	for len(p) > 0 {
		w := v.window(off, int64(len(p)))
		v.rlock(w.mask)
		n, holeAt, err := v.writeWindow(w, p, off, fua)
		v.runlock(w.mask)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
		if holeAt {
			// The next chunk is unallocated: allocate it and the holes
			// after it under their stripes' write locks.
			n, err := v.writeNewChunks(p, off)
			if err != nil {
				return err
			}
			p, off = p[n:], off+int64(n)
			allocated = true
		}
	}
	if fua && allocated {
		return v.s.Flush(ctx)
	}
	return nil
}

// writeWindow writes in place into allocated chunks of w until it meets a
// hole; it reports how many bytes it wrote and whether it stopped at a hole.
func (v *Volume) writeWindow(w window, p []byte, off int64, fua bool) (int, bool, error) {
	if v.deleted {
		return 0, false, fmt.Errorf("volume %s: %w", v.ref, ErrNotFound)
	}
	t := v.table.Load()
	done := 0
	for idx := w.first; idx < w.first+w.n && done < len(p); {
		in := (off + int64(done)) & (v.chunkSize - 1)
		dev := t.get(idx)
		if dev == 0 {
			return done, true, nil
		}
		runLen, next := v.run(t, w, idx, dev, in, int64(len(p)-done))
		if err := v.devWrite(p[done:done+int(runLen)], dev+in, fua); err != nil {
			v.s.log.Error("device write failed", "volume", v.ref, "offset", off+int64(done), "err", err)
			return done, false, fmt.Errorf("%w: %w", ErrIO, err)
		}
		done += int(runLen)
		idx = next
	}
	return done, false, nil
}

func (v *Volume) devWrite(p []byte, off int64, fua bool) error {
	if fua {
		if sw, ok := v.s.dev.(syncWriter); ok {
			_, err := sw.WriteAtSync(p, off)
			return err
		}
		if _, err := v.s.dev.WriteAt(p, off); err != nil {
			return err
		}
		return v.s.dev.Flush()
	}
	_, err := v.s.dev.WriteAt(p, off)
	return err
}

// writeNewChunks writes the start of p into the run of unallocated chunks
// it begins in (at most one window), allocating them under their stripes'
// write locks: as few contiguous extents as the allocator allows, so that a
// large write (and later a large read) is one device IO. Data first, then
// all the run's map entries in one transaction. It returns 0 bytes if
// another writer allocated the first chunk meanwhile; the caller then writes
// in place.
func (v *Volume) writeNewChunks(p []byte, off int64) (int, error) {
	w := v.window(off, int64(len(p)))
	v.lock(w.mask)
	defer v.unlock(w.mask)
	if v.deleted {
		return 0, fmt.Errorf("volume %s: %w", v.ref, ErrNotFound)
	}
	t := v.table.Load()
	cs := v.chunkSize
	k := int64(0)
	for k < w.n && t.get(w.first+k) == 0 {
		k++
	}
	if k == 0 {
		return 0, nil
	}
	in := off & (cs - 1)
	n := min(int64(len(p)), k*cs-in)

	type piece struct{ first, count, dev int64 }
	var pieces []piece
	freeAll := func() {
		for _, pc := range pieces {
			v.s.alloc.free(pc.dev, pc.count*cs)
		}
	}
	for done := int64(0); done < k; {
		c := int64(1) << (bits.Len64(uint64(k-done)) - 1)
		dev, err := v.s.alloc.alloc(c * cs)
		for err != nil && c > 1 { // fragmented: settle for smaller extents
			c /= 2
			dev, err = v.s.alloc.alloc(c * cs)
		}
		if err != nil {
			freeAll()
			return 0, fmt.Errorf("volume %s: %w", v.ref, err)
		}
		pieces = append(pieces, piece{w.first + done, c, dev})
		done += c
	}
	for _, pc := range pieces {
		start, end := pc.first*cs, (pc.first+pc.count)*cs // volume offsets
		from, to := max(off, start), min(off+n, end)
		if !v.s.dev.DiscardZeroes() && (from != start || to != end) {
			// Free space may hold old bytes: zero the extent first.
			if err := v.zeroDevice(pc.dev, pc.count*cs); err != nil {
				freeAll()
				return 0, err
			}
		}
		if _, err := v.s.dev.WriteAt(p[from-off:to-off], pc.dev+from-start); err != nil {
			freeAll()
			v.s.log.Error("device write failed", "volume", v.ref, "offset", from, "err", err)
			return 0, fmt.Errorf("%w: %w", ErrIO, err)
		}
	}
	err := v.s.db.Update(func(txn *badger.Txn) error {
		for _, pc := range pieces {
			for i := int64(0); i < pc.count; i++ {
				e := chunkEntry{storedLen: uint32(cs), devOff: pc.dev + i*cs}
				if err := txn.Set(chunkKey(v.id, 0, uint64(pc.first+i)), e.encode()); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		freeAll() // no committed entry points at them
		v.s.log.Error("chunk map commit failed", "volume", v.ref, "chunk", w.first, "err", err)
		return 0, fmt.Errorf("%w: commit chunk map: %w", ErrIO, err)
	}
	for _, pc := range pieces {
		for i := int64(0); i < pc.count; i++ {
			t.set(pc.first+i, pc.dev+i*cs)
		}
	}
	v.allocated.Add(k)
	return int(n), nil
}

// Discard unmaps the range: whole chunks return to the pool (after the next
// durable commit), partial chunks are zeroed in place. The range reads as
// zeros afterwards.
func (v *Volume) Discard(ctx context.Context, inode uint64, off, length int64) error {
	if err := v.checkRange(inode, off, length, ErrOutOfRange); err != nil {
		return err
	}
	if v.readOnly {
		return fmt.Errorf("volume %s: %w", v.ref, ErrReadOnly)
	}
	for length > 0 {
		w := v.window(off, length)
		v.lock(w.mask)
		n, err := v.discardWindow(w, off, length)
		v.unlock(w.mask)
		if err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// discardWindow handles the part of [off, off+length) in w, with w's stripes
// write-locked: one metadata transaction for the window's whole chunks.
func (v *Volume) discardWindow(w window, off, length int64) (int64, error) {
	if v.deleted {
		return 0, fmt.Errorf("volume %s: %w", v.ref, ErrNotFound)
	}
	t := v.table.Load()
	var freed []extent
	var unmapped []int64
	done := int64(0)
	for idx := w.first; idx < w.first+w.n && done < length; idx++ {
		in := (off + done) & (v.chunkSize - 1)
		n := min(length-done, v.chunkSize-in)
		done += n
		dev := t.get(idx)
		if dev == 0 {
			continue
		}
		if n == v.chunkSize {
			freed = append(freed, extent{dev, v.chunkSize})
			unmapped = append(unmapped, idx)
			continue
		}
		if err := v.zeroDevice(dev+in, n); err != nil {
			return 0, err
		}
	}
	if len(unmapped) == 0 {
		return done, nil
	}
	// Discard the extents first (a crash before the commit leaves entries
	// pointing at zeros, which is what a discard promises), then commit.
	for _, e := range freed {
		if err := v.zeroDevice(e.off, e.length); err != nil {
			return 0, err
		}
	}
	err := v.s.db.Update(func(txn *badger.Txn) error {
		for _, idx := range unmapped {
			if err := txn.Delete(chunkKey(v.id, 0, uint64(idx))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		v.s.log.Error("chunk map commit failed", "volume", v.ref, "err", err)
		return 0, fmt.Errorf("%w: commit unmap: %w", ErrIO, err)
	}
	for _, idx := range unmapped {
		t.set(idx, 0)
	}
	v.allocated.Add(-int64(len(unmapped)))
	v.s.alloc.deferFree(freed)
	return done, nil
}

// zeroDevice makes a device range read as zeros.
func (v *Volume) zeroDevice(off, length int64) error {
	var err error
	if v.s.dev.DiscardZeroes() {
		err = v.s.dev.Discard(off, length)
	} else {
		for err == nil && length > 0 {
			n := min(length, int64(len(v.s.zeros)))
			_, err = v.s.dev.WriteAt(v.s.zeros[:n], off)
			off, length = off+n, length-n
		}
	}
	if err != nil {
		return fmt.Errorf("%w: zero device range: %w", ErrIO, err)
	}
	return nil
}

// WriteZeroes makes the range read as zeros. Without noHole it unmaps whole
// chunks like Discard; with noHole it writes zeros and keeps (or allocates)
// every chunk, so later writes cannot fail for lack of space.
func (v *Volume) WriteZeroes(ctx context.Context, inode uint64, off, length int64, noHole bool) error {
	if !noHole {
		if err := v.checkRange(inode, off, length, ErrNoSpace); err != nil {
			return err
		}
		return v.Discard(ctx, inode, off, length)
	}
	for length > 0 {
		n := min(length, v.chunkSize-(off&(v.chunkSize-1)))
		if err := v.WriteAt(ctx, inode, v.s.zeros[:n], off, false); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Flush makes every completed write durable (for every volume of the store).
func (v *Volume) Flush(ctx context.Context) error { return v.s.Flush(ctx) }

// Extents describes [off, off+length) as runs of data and holes, from the
// chunk map. Runs are merged; the last one is clipped to the range.
func (v *Volume) Extents(ctx context.Context, inode uint64, off, length int64) ([]Extent, error) {
	if err := v.checkRange(inode, off, length, ErrOutOfRange); err != nil {
		return nil, err
	}
	t := v.table.Load()
	var out []Extent
	end := off + length
	for pos := off; pos < end; {
		idx := pos >> v.chunkBits
		n := min(end-pos, (idx+1)<<v.chunkBits-pos)
		hole := t.get(idx) == 0
		if k := len(out) - 1; k >= 0 && out[k].Hole == hole {
			out[k].Length += n
		} else {
			out = append(out, Extent{Offset: pos, Length: n, Hole: hole})
		}
		pos += n
	}
	return out, nil
}
