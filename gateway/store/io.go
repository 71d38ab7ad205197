package store

import (
	"context"
	"fmt"
	"math/bits"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Extent is one run of a volume's address space (see Volume.Extents).
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	Hole   bool  `json:"hole"` // unallocated: reads as zeros, holds no pool space
}

// MaxFileSize is the largest length of a file of an fs volume (EFBIG past it).
const MaxFileSize = 16 << 40

// syncWriter is a device that can make one write durable by itself.
type syncWriter interface {
	WriteAtSync(p []byte, off int64) (int, error)
}

// objectOf returns the data object of inode: the volume itself for inode 0 of
// a block volume, an open file of an fs volume otherwise.
func (v *Volume) objectOf(inode uint64) (*Object, error) {
	if inode == 0 {
		if v.obj0 == nil {
			return nil, fmt.Errorf("volume %s: inode 0: %w (an fs volume's data lives in files)", v.ref, ErrUnsupported)
		}
		return v.obj0, nil
	}
	if v.ns == nil {
		return nil, fmt.Errorf("volume %s: inode %d: %w (block volumes have inode 0 only)", v.ref, inode, ErrUnsupported)
	}
	return v.ns.OpenObject(inode)
}

// CheckRange validates [off, off+length) for a fixed-length object (a block
// volume) against its length, and for a growing one (a file) against
// MaxFileSize.
func (o *Object) CheckRange(off, length int64, pastEnd error) error {
	limit := int64(MaxFileSize)
	if !o.grows {
		limit = o.size.Load()
	} else if pastEnd == ErrNoSpace {
		pastEnd = ErrTooBig
	}
	if off < 0 || length < 0 || off > limit || length > limit-off {
		return fmt.Errorf("volume %s: inode %d: offset %d length %d beyond %d: %w", o.v.ref, o.ino, off, length, limit, pastEnd)
	}
	return nil
}

// Filters is what the gateway's classify step decided for one request.
// The zero value is the plain path: no transforms, no cache.
type Filters struct {
	// Chain transforms the chunks a write touches (copy-on-write, see
	// cow.go). Nil or plain: chunks are stored as written, in place.
	Chain *filter.Chain
	// Cache: consult and fill the volume's read cache (if it has one).
	Cache bool
}

// ReadAt fills p from inode at off. Unallocated chunks (and, for files,
// bytes past the end) read as zeros.
func (v *Volume) ReadAt(ctx context.Context, inode uint64, p []byte, off int64) error {
	return v.ReadAtWith(ctx, inode, p, off, Filters{})
}

// ReadAtWith is ReadAt with the request's filters: transformed chunks are
// always undone from their records; f.Cache makes the read go through the
// volume's read cache.
func (v *Volume) ReadAtWith(ctx context.Context, inode uint64, p []byte, off int64, f Filters) error {
	o, err := v.objectOf(inode)
	if err != nil {
		return err
	}
	if err := o.CheckRange(off, int64(len(p)), ErrOutOfRange); err != nil {
		return err
	}
	var c *filter.Cache
	if f.Cache {
		c = v.cache.Load()
	}
	for len(p) > 0 {
		w := o.window(off, int64(len(p)))
		o.rlock(w.mask)
		var n int
		if c != nil {
			n, err = o.readCached(c, w, p, off)
		} else {
			n, err = o.readWindow(w, p, off)
		}
		o.runlock(w.mask)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// readWindow reads what of p falls in w, coalescing chunks that are adjacent
// on the device into one device read. Stripes of w are read-locked.
func (o *Object) readWindow(w window, p []byte, off int64) (int, error) {
	if o.deleted {
		return 0, fmt.Errorf("volume %s: inode %d: %w", o.v.ref, o.ino, ErrNotFound)
	}
	v := o.v
	t := o.table.Load()
	done := 0
	for idx := w.first; idx < w.first+w.n && done < len(p); {
		in := (off + int64(done)) & (v.chunkSize - 1)
		dev := t.get(idx)
		if dev&(unitSize-1) != 0 { // transformed or short: a chunk at a time
			var n int
			var err error
			if dev&markTransformed != 0 {
				n, err = o.readTransformed(idx, in, p[done:])
			} else {
				n, err = o.readShort(idx, dev, in, p[done:])
			}
			if err != nil {
				return done, err
			}
			done += n
			idx++
			continue
		}
		runLen, next := o.run(t, w, idx, dev, in, int64(len(p)-done))
		buf := p[done : done+int(runLen)]
		if dev == 0 {
			clear(buf)
		} else if err := o.devRead(buf, dev+in, off+int64(done)); err != nil {
			return done, err
		}
		done += int(runLen)
		idx = next
	}
	return done, nil
}

// run measures how far one device IO can go from byte in of chunk idx
// (at device offset dev, 0 for a hole; never a transformed or short chunk),
// for at most left bytes: it extends over the following chunks of w while
// each continues the extent on the device (or, for a hole, is also a
// hole); a transformed or short chunk (an entry with low bits set) never
// continues a run. It returns the run's length in
// bytes and the index of the first chunk after it.
func (o *Object) run(t *chunkTable, w window, idx, dev, in, left int64) (length, next int64) {
	cs := o.v.chunkSize
	length = min(left, cs-in)
	next = idx + 1
	for next < w.first+w.n && length < left {
		nd := t.get(next)
		if (dev == 0) != (nd == 0) || (dev != 0 && nd != dev+(next-idx)*cs) {
			break
		}
		length += min(left-length, cs)
		next++
	}
	return length, next
}

// WriteAt writes p to inode at off. With fua, the data is durable when
// WriteAt returns. A write past a file's end extends it.
func (v *Volume) WriteAt(ctx context.Context, inode uint64, p []byte, off int64, fua bool) error {
	return v.WriteAtWith(ctx, inode, p, off, fua, Filters{})
}

// WriteAtWith is WriteAt with the request's filters. Under a plain chain,
// plain chunks are written in place (holes allocated) exactly as WriteAt
// always did, and a transformed chunk is rewritten as a plain one by
// copy-on-write; under a transforming chain every chunk touched is
// rewritten by copy-on-write (cow.go).
func (v *Volume) WriteAtWith(ctx context.Context, inode uint64, p []byte, off int64, fua bool, f Filters) error {
	o, err := v.objectOf(inode)
	if err != nil {
		return err
	}
	o.willChange()
	defer o.changed(ctx, off, int64(len(p)))
	if err := o.CheckRange(off, int64(len(p)), ErrNoSpace); err != nil {
		return err
	}
	if v.readOnly {
		return fmt.Errorf("volume %s: %w", v.ref, ErrReadOnly)
	}
	if o.grows {
		o.ensureChunks(numChunks(off+int64(len(p)), v.chunkSize))
	}
	if !f.Chain.Plain() {
		if err := o.writeChain(p, off, f.Chain); err != nil {
			return err
		}
		o.Touch()
		if fua {
			return v.s.Flush(ctx)
		}
		return nil
	}
	allocated := false
	for len(p) > 0 {
		w := o.window(off, int64(len(p)))
		o.rlock(w.mask)
		n, stop, err := o.writeWindow(w, p, off, fua)
		if n > 0 {
			o.growSize(off + int64(n))
		}
		o.runlock(w.mask)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
		switch stop {
		case stopHole:
			// The next chunk is unallocated: allocate it and the holes
			// after it under their stripes' write locks.
			n, err = o.writeNewChunks(p, off, true)
		case stopTransformed, stopShort:
			// The next chunk was written under a transforming policy, or
			// is short and the write goes past its stored bytes: rewrite
			// it as a plain chunk (short.go: grown).
			n, err = o.rewriteChunk(p, off, nil)
		default:
			continue
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
		allocated = true
	}
	o.Touch()
	if fua && allocated {
		return v.s.Flush(ctx)
	}
	return nil
}

// Why writeWindow stopped before the end of its window.
const (
	stopNone        = iota
	stopHole        // at an unallocated chunk
	stopTransformed // at a transformed chunk (not writable in place)
	stopShort       // at a short chunk the write goes past the end of
)

// writeWindow writes in place into allocated plain chunks of w until it
// meets a hole or a transformed chunk; it reports how many bytes it wrote
// and where it stopped.
func (o *Object) writeWindow(w window, p []byte, off int64, fua bool) (int, int, error) {
	if o.deleted {
		return 0, stopNone, fmt.Errorf("volume %s: inode %d: %w", o.v.ref, o.ino, ErrNotFound)
	}
	v := o.v
	t := o.table.Load()
	done := 0
	for idx := w.first; idx < w.first+w.n && done < len(p); {
		in := (off + int64(done)) & (v.chunkSize - 1)
		dev := t.get(idx)
		switch {
		case dev == 0:
			return done, stopHole, nil
		case dev&markTransformed != 0:
			return done, stopTransformed, nil
		case isShort(dev):
			n := min(int64(len(p)-done), v.chunkSize-in)
			if in+n > shortLen(dev) {
				return done, stopShort, nil
			}
			if err := v.devWrite(p[done:done+int(n)], entryAddr(dev)+in, fua); err != nil {
				v.s.log.Error("device write failed", "volume", v.ref, "inode", o.ino, "offset", off+int64(done), "err", err)
				return done, stopNone, fmt.Errorf("%w: %w", ErrIO, err)
			}
			o.invalidate(idx, 1)
			done += int(n)
			idx++
			continue
		}
		runLen, next := o.run(t, w, idx, dev, in, int64(len(p)-done))
		if err := v.devWrite(p[done:done+int(runLen)], dev+in, fua); err != nil {
			v.s.log.Error("device write failed", "volume", v.ref, "inode", o.ino, "offset", off+int64(done), "err", err)
			return done, stopNone, fmt.Errorf("%w: %w", ErrIO, err)
		}
		o.invalidate(idx, next-idx)
		done += int(runLen)
		idx = next
	}
	return done, stopNone, nil
}

// devRead fills p from the device at devOff. A failure is logged with the
// object's offset at (where the read was for) and returned as ErrIO.
func (o *Object) devRead(p []byte, devOff, at int64) error {
	v := o.v
	if _, err := v.s.dev.ReadAt(p, devOff); err != nil {
		v.s.log.Error("device read failed", "volume", v.ref, "inode", o.ino, "offset", at, "err", err)
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	return nil
}

func (v *Volume) devWrite(p []byte, off int64, fua bool) error {
	if fua {
		v.s.flushes.Add(1)
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

// reserve accounts k more chunks to the volume. The objects of a volume
// with a namespace (an fs volume's files) may not hold more pool space
// than its size (ENOSPC): the space its chunks hold (short and transformed
// ones what they take) with the k new ones counted whole; a block
// volume's one object cannot by construction.
func (v *Volume) reserve(k int64) error {
	n := v.allocated.Add(k)
	if v.ns != nil && n*v.chunkSize-v.saved.Load() > v.size.Load() {
		v.allocated.Add(-k)
		return fmt.Errorf("volume %s: %w (volume size %d bytes reached)", v.ref, ErrNoSpace, v.size.Load())
	}
	return nil
}

// writeNewChunks writes the start of p into the run of unallocated chunks
// it begins in (at most one window), allocating them under their stripes'
// write locks: as few contiguous extents as the allocator allows, so that a
// large write (and later a large read) is one device IO. Data first, then
// all the run's map entries in one transaction. It returns 0 bytes if
// another writer allocated the first chunk meanwhile; the caller then writes
// in place. With extend, a file's length grows to cover what was written.
func (o *Object) writeNewChunks(p []byte, off int64, extend bool) (int, error) {
	v := o.v
	w := o.window(off, int64(len(p)))
	o.lock(w.mask)
	defer o.unlock(w.mask)
	if o.deleted {
		return 0, fmt.Errorf("volume %s: inode %d: %w", v.ref, o.ino, ErrNotFound)
	}
	t := o.table.Load()
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
	if err := v.reserve(k); err != nil {
		return 0, err
	}
	pieces, err := o.allocNew(w.first, k, off+n)
	if err != nil {
		v.allocated.Add(-k)
		return 0, err
	}
	fail := func(err error) (int, error) {
		v.freePieces(pieces)
		v.allocated.Add(-k)
		return 0, err
	}
	for _, pc := range pieces {
		start, end := pc.first*cs, pc.first*cs+pc.bytes(cs) // object offsets
		from, to := max(off, start), min(off+n, end)
		if !v.s.dev.DiscardZeroes() && (from != start || to != end) {
			// Free space may hold old bytes: zero the extent first.
			if err := v.zeroDevice(pc.dev, pc.bytes(cs)); err != nil {
				return fail(err)
			}
		}
		if _, err := v.s.dev.WriteAt(p[from-off:to-off], pc.dev+from-start); err != nil {
			v.s.log.Error("device write failed", "volume", v.ref, "inode", o.ino, "offset", from, "err", err)
			return fail(fmt.Errorf("%w: %w", ErrIO, err))
		}
	}
	if committed, err := o.commitPieces(pieces); err != nil {
		v.allocated.Add(committed - k)
		return 0, err
	}
	if extend {
		o.growSize(off + n)
	}
	return int(n), nil
}

// piece is a run of count chunks from chunk first, stored contiguously at
// device offset dev; short > 0: one short chunk of that stored length.
type piece struct{ first, count, dev, short int64 }

// bytes is the length of the piece's extent.
func (pc piece) bytes(cs int64) int64 {
	if pc.short > 0 {
		return pc.short
	}
	return pc.count * cs
}

// allocRun allocates k chunks from chunk first as few contiguous extents as
// the allocator allows (power-of-two pieces, halved while fragmented).
func (v *Volume) allocRun(first, k int64) ([]piece, error) {
	cs := v.chunkSize
	var pieces []piece
	synced := false
	for done := int64(0); done < k; {
		c := int64(1) << (bits.Len64(uint64(k-done)) - 1)
		dev, _, err := v.s.allocZeroed(c * cs)
		for err != nil && c > 1 { // fragmented: settle for smaller extents
			c /= 2
			dev, _, err = v.s.allocZeroed(c * cs)
		}
		if err != nil && !synced {
			// Full, but frees may wait for a durable commit: make them
			// reusable and try again (syncForSpace).
			synced = true
			if err := v.s.syncForSpace(); err != nil {
				v.freePieces(pieces)
				return nil, err
			}
			continue
		}
		if err != nil {
			v.freePieces(pieces)
			return nil, fmt.Errorf("volume %s: %w", v.ref, err)
		}
		pieces = append(pieces, piece{first: first + done, count: c, dev: dev})
		done += c
	}
	return pieces, nil
}

// freePieces returns pieces no committed entry points at to the pool at
// once (freeWritten).
func (v *Volume) freePieces(pieces []piece) {
	for _, pc := range pieces {
		v.s.freeWritten(pc.dev, pc.bytes(v.chunkSize))
	}
}

// freeWritten returns an extent no committed entry points at, which a
// write may have reached, to the pool at once, as dirty free space: an
// allocation that must read zeros zeroes it and flushes first
// (allocZeroed). Zeroing it here, with no flush, let a power loss undo
// the zeroing under a later commit that named the extent as clean space.
func (s *Store) freeWritten(off, length int64) {
	s.alloc.releaseDirty([]extent{{off: off, length: length}})
}

// commitPieces commits the map entries of freshly written (or, on a
// device whose discards read as zeros, freshly allocated) pieces in as few
// transactions as badger allows and installs them in the table (the caller
// holds their stripes' write locks). It returns how many chunks it
// committed; the space of the others it frees again, zeroed where a write
// may have reached it.
func (o *Object) commitPieces(pieces []piece) (int64, error) {
	v := o.v
	cs := v.chunkSize
	var pcOf, iOf []int64 // change j: chunk iOf[j] of pieces[pcOf[j]]
	for p, pc := range pieces {
		for i := int64(0); i < pc.count; i++ {
			pcOf, iOf = append(pcOf, int64(p)), append(iOf, i)
		}
	}
	entry := func(j int) chunkEntry {
		pc := pieces[pcOf[j]]
		if pc.short > 0 {
			return chunkEntry{flags: flagShort, storedLen: uint32(pc.short), devOff: pc.dev}
		}
		return chunkEntry{storedLen: uint32(cs), devOff: pc.dev + iOf[j]*cs}
	}
	done, err := v.s.batchUpdate(len(iOf), func(txn *badger.Txn, j int) error {
		pc := pieces[pcOf[j]]
		return txn.Set(chunkKey(v.id, o.ino, uint64(pc.first+iOf[j])), entry(j).encode())
	})
	t := o.table.Load()
	var saved int64
	for j := 0; j < done; j++ {
		pc := pieces[pcOf[j]]
		e := entry(j)
		t.set(pc.first+iOf[j], tableEntry(e))
		saved += v.savedBy(e)
		o.invalidate(pc.first+iOf[j], 1) // a cached hole
	}
	o.mapped.Add(int64(done))
	v.saved.Add(saved)
	o.saved.Add(saved)
	if err != nil {
		var rest []piece
		for j := done; j < len(iOf); j++ {
			pc := pieces[pcOf[j]]
			rest = append(rest, piece{first: pc.first + iOf[j], count: 1, dev: pc.dev + iOf[j]*cs, short: pc.short})
		}
		v.freePieces(rest)
		v.s.log.Error("chunk map commit failed", "volume", v.ref, "inode", o.ino, "err", err)
		return int64(done), fmt.Errorf("%w: commit chunk map: %w", ErrIO, err)
	}
	return int64(done), nil
}

// Discard unmaps the range: whole chunks return to the pool (after the next
// durable commit), partial chunks are zeroed in place. The range reads as
// zeros afterwards. A file's length does not change.
func (v *Volume) Discard(ctx context.Context, inode uint64, off, length int64) error {
	o, err := v.objectOf(inode)
	if err != nil {
		return err
	}
	if err := o.CheckRange(off, length, ErrOutOfRange); err != nil {
		return err
	}
	if v.readOnly {
		return fmt.Errorf("volume %s: %w", v.ref, ErrReadOnly)
	}
	o.willChange()
	defer o.changed(ctx, off, length)
	return o.Discard(off, length)
}

// Discard unmaps [off, off+length) of o like Volume.Discard, without the
// namespace's hooks: for the namespace itself (fallocate's punch).
func (o *Object) Discard(off, length int64) error {
	if t := o.table.Load(); o.grows {
		// Nothing to unmap past the table's end.
		length = max(0, min(length, t.n*o.v.chunkSize-off))
	}
	if length > numStripes*o.v.chunkSize {
		// More than a window: one batch for all of it (ranges.go).
		o.lockAll()
		defer o.unlockAll()
		return o.discardLocked(off, length)
	}
	for length > 0 {
		w := o.window(off, length)
		o.lock(w.mask)
		var b unmapBatch
		n, err := o.unmapWindow(w, off, length, &b)
		if err == nil {
			err = o.commitUnmap(&b)
		}
		o.unlock(w.mask)
		if err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// unmapWindow handles the part of [off, off+length) in w, with w's stripes
// write-locked: partial chunks are zeroed (transformed ones rewritten),
// whole chunks are added to b for commitUnmap.
func (o *Object) unmapWindow(w window, off, length int64, b *unmapBatch) (int64, error) {
	v := o.v
	if o.deleted {
		return 0, fmt.Errorf("volume %s: inode %d: %w", v.ref, o.ino, ErrNotFound)
	}
	t := o.table.Load()
	done := int64(0)
	for idx := w.first; idx < w.first+w.n && done < length; idx++ {
		in := (off + done) & (v.chunkSize - 1)
		n := min(length-done, v.chunkSize-in)
		done += n
		dev := t.get(idx)
		switch {
		case dev == 0:
			continue
		case dev&markTransformed != 0 && n == v.chunkSize:
			e, err := o.entry(idx)
			if err != nil {
				return 0, err
			}
			// Zeroed once the unmap is durable: until then a crash
			// leaves the entry, which must still find its bytes. Reused
			// only after a device flush: a live pending record of the
			// chunk may fall back to them (pending.go, "Reuse").
			b.freed = v.s.appendExtents(b.freed, e, true, v.s.flushStarted.Load()+1)
			b.add(idx)
			b.saved += v.savedBy(e)
			continue
		case dev&markTransformed != 0:
			// Part of a transformed chunk: rewrite it with zeros there,
			// transformed as it was.
			if err := o.zeroTransformed(w, idx, in, n); err != nil {
				return 0, err
			}
			continue
		case isShort(dev) && n == v.chunkSize:
			sl := shortLen(dev)
			b.freed = append(b.freed, extent{off: entryAddr(dev), length: sl})
			b.add(idx)
			b.saved += v.chunkSize - sl
			continue
		case isShort(dev):
			// Part of a short chunk: only its stored bytes can be other
			// than zeros.
			if sl := shortLen(dev); in < sl {
				if err := v.zeroDevice(entryAddr(dev)+in, min(n, sl-in)); err != nil {
					return 0, err
				}
			}
			o.invalidate(idx, 1)
			continue
		case n == v.chunkSize:
			b.freed = append(b.freed, extent{off: dev, length: v.chunkSize})
			b.add(idx)
			continue
		}
		if err := v.zeroDevice(dev+in, n); err != nil {
			return 0, err
		}
		o.invalidate(idx, 1)
	}
	return done, nil
}

// zeroDevice makes a device range read as zeros.
func (v *Volume) zeroDevice(off, length int64) error { return v.s.zeroExtent(off, length) }

// zeroExtent makes a device range read as zeros.
func (s *Store) zeroExtent(off, length int64) error {
	var err error
	if s.dev.DiscardZeroes() {
		err = s.dev.Discard(off, length)
	} else {
		for err == nil && length > 0 {
			n := min(length, int64(len(s.zeros)))
			_, err = s.dev.WriteAt(s.zeros[:n], off)
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
	return v.WriteZeroesWith(ctx, inode, off, length, noHole, Filters{})
}

// WriteZeroesWith is WriteZeroes with the request's filters: with noHole,
// the zeros are written through f.Chain.
func (v *Volume) WriteZeroesWith(ctx context.Context, inode uint64, off, length int64, noHole bool, f Filters) error {
	o, err := v.objectOf(inode)
	if err != nil {
		return err
	}
	if err := o.CheckRange(off, length, ErrNoSpace); err != nil {
		return err
	}
	if !noHole {
		if v.readOnly {
			return fmt.Errorf("volume %s: %w", v.ref, ErrReadOnly)
		}
		o.willChange()
		defer o.changed(ctx, off, length)
		return o.Discard(off, length) // a file's length does not change
	}
	for length > 0 {
		n := min(length, v.chunkSize-(off&(v.chunkSize-1)))
		if err := v.WriteAtWith(ctx, inode, v.s.zeros[:n], off, false, f); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Flush makes every completed write durable (for every volume of the store).
func (v *Volume) Flush(ctx context.Context) error { return v.s.Flush(ctx) }

// Extents describes [off, off+length) of inode as runs of data and holes,
// from the chunk map. Runs are merged; the last one is clipped to the range.
func (v *Volume) Extents(ctx context.Context, inode uint64, off, length int64) ([]Extent, error) {
	o, err := v.objectOf(inode)
	if err != nil {
		return nil, err
	}
	if err := o.CheckRange(off, length, ErrOutOfRange); err != nil {
		return nil, err
	}
	return o.Extents(off, length), nil
}

// Extents describes [off, off+length) of o as runs of data and holes (see
// Volume.Extents).
func (o *Object) Extents(off, length int64) []Extent {
	t := o.table.Load()
	bits := o.v.chunkBits
	var out []Extent
	end := off + length
	for pos := off; pos < end; {
		idx := pos >> bits
		n := min(end-pos, (idx+1)<<bits-pos)
		hole := t.get(idx) == 0
		if idx >= t.n && hole {
			n = end - pos // nothing is mapped past the table
		}
		if k := len(out) - 1; k >= 0 && out[k].Hole == hole {
			out[k].Length += n
		} else {
			out = append(out, Extent{Offset: pos, Length: n, Hole: hole})
		}
		pos += n
	}
	return out
}
