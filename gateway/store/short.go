package store

import "fmt"

// Short plain chunks: small allocations for the tails of files.
//
// A file's last chunk usually holds less than a chunk of data (a 3 KiB
// source file, the last 10 KiB of a 200 KiB one). Stored as a full chunk
// it would take 64 KiB of pool space whatever it holds; a tree of small
// files then takes several times its size. So a plain chunk of a file
// whose data ends short of the chunk's end, and which holds the file's
// last byte, is stored in an extent of just the units (4 KiB) its data
// needs: a short chunk, flagged in its map entry (flagShort) with its
// stored length, a whole number of units. Bytes past the stored length
// read as zeros; nothing was ever written there.
//
// Writes inside the stored length go to the device in place, like any
// plain chunk's. A write past it (the file grows) re-places the chunk by
// copy-on-write, exactly as a transformed chunk is rewritten (cow.go):
// the chunk's bytes are read, the new ones merged, the result written to
// a new extent, the entry committed (data before metadata), and the old
// extent freed only once that commit is durable. A crash before the
// commit leaves the old entry and its intact extent. The new extent is a
// full chunk when the data reaches the chunk's end or the chunk no longer
// holds the file's end; otherwise at least twice the old one (or what
// the data needs, if more), so that a file appended in small writes is
// re-placed a few times per chunk (1, 2, 4, 8 units, then a full chunk
// of 16), not at every unit. Fallocate over a short chunk makes it full
// (a later write into the range must not need space).
//
// Block volumes never have short chunks: their chunks are not files'
// tails, and a block device's random writes into new chunks would
// otherwise pay copy-on-write to grow them.

// plainLen is the stored length for plain chunk idx of o when its data
// ends at byte end of the chunk (past it, the chunk is zeros) and it is
// now stored in oldLen bytes (0: a hole, or a chunk that was not plain):
// the chunk size, or a short length (see above).
func (o *Object) plainLen(idx, end, oldLen int64) int64 {
	cs := o.v.chunkSize
	if !o.grows || end >= cs || end <= 0 {
		return cs
	}
	if size := max(o.size.Load(), idx*cs+end); (size-1)>>o.v.chunkBits != idx {
		return cs // not the file's last chunk: it will fill up
	}
	n := unitsFor(end)
	if oldLen > 0 && oldLen < cs {
		n = max(n, 2*oldLen/unitSize)
	}
	return min(n*unitSize, cs)
}

// allocNew allocates the k unallocated chunks from chunk first that a
// write ending at object offset end fills: like allocRun, except that a
// last chunk the write leaves short of its end is a short chunk when
// plainLen says so (short.go).
func (o *Object) allocNew(first, k, end int64) ([]piece, error) {
	v := o.v
	cs := v.chunkSize
	last := first + k - 1
	sl := cs
	if end < (last+1)*cs {
		sl = o.plainLen(last, end-last*cs, 0)
	}
	if sl == cs {
		return v.allocRun(first, k)
	}
	pieces, err := v.allocRun(first, k-1)
	if err != nil {
		return nil, err
	}
	dev, _, err := v.s.allocSyncing(sl, true)
	if err != nil {
		v.freePieces(pieces)
		return nil, fmt.Errorf("volume %s: %w", v.ref, err)
	}
	return append(pieces, piece{first: last, count: 1, dev: dev, short: sl}), nil
}

// plainExtentLen is the extent length of the plain chunk with table entry
// dev (not a hole, not transformed).
func (v *Volume) plainExtentLen(dev int64) int64 {
	if isShort(dev) {
		return shortLen(dev)
	}
	return v.chunkSize
}

// readShort fills p from byte in of short chunk idx (table entry dev), up
// to the chunk's end: the stored bytes from the device, zeros past them.
// It returns the bytes filled.
func (o *Object) readShort(idx, dev, in int64, p []byte) (int, error) {
	m := min(int64(len(p)), o.v.chunkSize-in)
	k := max(0, min(m, shortLen(dev)-in))
	if k > 0 {
		if err := o.devRead(p[:k], entryAddr(dev)+in, idx*o.v.chunkSize+in); err != nil {
			return 0, err
		}
	}
	clear(p[k:m])
	return int(m), nil
}

// growShortLocked re-places short chunk idx into a full chunk by
// copy-on-write (fallocate over it), without changing the file's length.
// The caller holds the chunk's stripe write-locked.
func (o *Object) growShortLocked(idx int64) error {
	cs := o.v.chunkSize
	dev := o.table.Load().get(idx)
	if !isShort(dev) {
		return nil
	}
	// Zeros from the stored length to the chunk's end: the data then
	// reaches the end, so the chunk is stored full (plainLen).
	sl := shortLen(dev)
	w := o.window(idx*cs+sl, cs-sl)
	_, err := o.cowLocked(w, o.v.s.zeros[:cs-sl], idx*cs+sl, nil, false)
	return err
}

// growShorts makes every short chunk of [first, last] full, a window at a
// time (Allocate on a device whose free space is not known to read as
// zeros).
func (o *Object) growShorts(first, last int64) error {
	for idx := first; idx <= last; idx++ {
		if !isShort(o.table.Load().get(idx)) {
			continue
		}
		w := o.window(idx*o.v.chunkSize, o.v.chunkSize)
		o.lock(w.mask)
		err := o.growShortLocked(idx)
		o.unlock(w.mask)
		if err != nil {
			return err
		}
	}
	return nil
}

// growDurably reports whether the copy-on-write re-placement of one of
// o's chunks that holds data (a short chunk growing, any rewrite of a
// transformed chunk) must reach the device before its entry is
// committed. The commit may be written back to disk before the new
// extent's bytes (badger's log and the pool are both in the page cache
// until synced), and a power loss then would leave the entry pointing at
// an extent that never got them: the chunk's older bytes, which a flush
// may have promised, would be lost with the unflushed new ones. So the
// new extent is written with FUA, unless no device flush was issued since
// o was created empty (a file being written out, cp or tar): then nothing
// it holds was promised yet, and the write costs no flush. A rewrite
// whose result is transformed (cow.go) does not write through: it
// commits a pending record instead (pending.go), which the next open
// uses to fall back when the new bytes never reached the device; a plain,
// short or noop result is written in place later, which a pending
// record's crc could not tell from a lost write, so it writes through.
func (o *Object) growDurably() bool { return o.born != o.v.s.flushes.Load() }
