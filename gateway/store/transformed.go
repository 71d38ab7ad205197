package store

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/internal/bufpool"
)

// Transformed chunks on the read side, and the read cache.
//
// A transformed chunk is marked in the chunk table (markTransformed); its
// stored length and filter record live only in its badger map entry, which
// a read fetches (one lookup, under the chunk's stripe read lock, so no
// copy-on-write can replace it meanwhile). The read takes the stored bytes
// from the device, undoes the record's steps (filter.Env.Reverse) into a
// scratch buffer and copies out what the request asked. A chunk that fails
// verification (crc32c, AES-GCM tag, decompression, record) is logged with
// volume, inode and offset and read as an error wrapping ErrIO, which every
// door maps to EIO.

// tableEntry is what the chunk table holds for a chunk with entry e.
func tableEntry(e chunkEntry) int64 {
	switch {
	case e.transformed():
		return e.devOff | markTransformed
	case e.short():
		return e.devOff | int64(e.storedLen)/unitSize<<shortShift
	}
	return e.devOff
}

// entry fetches chunk idx's map entry. The caller holds its stripe lock.
func (o *Object) entry(idx int64) (chunkEntry, error) {
	ce, err := o.cachedEntry(idx)
	return ce.e, err
}

// cachedEntry is entry with the record's layout, from the entry cache or,
// on a miss, from badger (and then cached).
func (o *Object) cachedEntry(idx int64) (cachedEntry, error) {
	dev := o.table.Load().get(idx) &^ markTransformed
	if ce, ok := o.v.s.entries.get(o.v.id, o.ino, idx, dev); ok {
		return ce, nil
	}
	var e chunkEntry
	err := o.v.s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(chunkKey(o.v.id, o.ino, uint64(idx)))
		if err != nil {
			return err
		}
		return item.Value(func(b []byte) (err error) { e, err = decodeChunkEntry(b); return err })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		err = fmt.Errorf("chunk map has no entry for a mapped chunk: %w", ErrIO)
	}
	if err != nil {
		o.v.s.log.Error("chunk entry unreadable", "volume", o.v.ref, "inode", o.ino, "chunk", idx, "err", err)
		return cachedEntry{}, fmt.Errorf("volume %s: inode %d: chunk %d: %w", o.v.ref, o.ino, idx, errIO(err))
	}
	ce := newCachedEntry(e)
	if e.devOff == dev {
		o.v.s.entries.put(o.v.id, o.ino, idx, ce)
	}
	return ce, nil
}

// errIO makes err wrap ErrIO (once).
func errIO(err error) error {
	if errors.Is(err, ErrIO) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrIO, err)
}

func (o *Object) chunkContext(idx int64) filter.ChunkContext {
	return filter.ChunkContext{VolumeID: o.v.id, Inode: o.ino, ChunkIndex: uint64(idx), Tenant: o.v.tenant}
}

// getBuf returns a pooled scratch buffer of length 0 and capacity at least n.
func (s *Store) getBuf(n int) *[]byte {
	if b, ok := s.bufs.Get().(*[]byte); ok {
		if cap(*b) >= n {
			*b = (*b)[:0]
			return b
		}
	}
	// One size for everything short (a whole 64 KiB chunk with its
	// overhead, a few sectors): buffers of mixed sizes would keep
	// replacing each other in the pool.
	b := make([]byte, 0, max(n, minBuf))
	return &b
}

const minBuf = 72 << 10

func (s *Store) putBuf(b *[]byte) { s.bufs.Put(b) }

// readStored reads and undoes transformed chunk idx (entry e), appending its
// plain bytes (a whole chunk, its patches applied) to dst.
func (o *Object) readStored(idx int64, e chunkEntry, dst []byte) ([]byte, error) {
	return o.readBase(idx, e, dst, true)
}

// readBase is readStored with the patches applied or not.
func (o *Object) readBase(idx int64, e chunkEntry, dst []byte, withPatches bool) ([]byte, error) {
	v := o.v
	if !v.s.alloc.contains(e.devOff, int64(e.storedLen)) || int64(e.storedLen) > int64(filter.MaxStored(int(v.chunkSize))) {
		err := fmt.Errorf("chunk %d: entry points outside the pool (offset %d length %d): %w", idx, e.devOff, e.storedLen, ErrIO)
		v.s.log.Error("chunk entry is corrupt", "volume", v.ref, "inode", o.ino, "offset", idx*v.chunkSize, "err", err)
		return dst, err
	}
	sb := v.s.getBuf(int(e.storedLen))
	defer v.s.putBuf(sb)
	stored := (*sb)[:e.storedLen]
	if err := o.devRead(stored, e.devOff, idx*v.chunkSize); err != nil {
		return dst, err
	}
	base := len(dst)
	out, err := v.s.env.Reverse(o.chunkContext(idx), dst, stored, e.record)
	if err == nil && int64(len(out)-base) != v.chunkSize {
		err = fmt.Errorf("undone chunk has %d bytes, chunk size is %d: %w", len(out)-base, v.chunkSize, filter.ErrCorrupt)
	}
	if err == nil && len(e.patches) > 0 && withPatches {
		if err := o.applyPatches(idx, e, out[base:], 0, v.chunkSize/filter.SectorSize-1); err != nil {
			return dst, err
		}
	}
	if err != nil {
		v.s.log.Error("chunk failed verification; read returns EIO", "volume", v.ref, "inode", o.ino,
			"offset", idx*v.chunkSize, "chunk", idx, "device_offset", e.devOff, "err", err)
		return dst, fmt.Errorf("%w: volume %s inode %d offset %d: %w", ErrIO, v.ref, o.ino, idx*v.chunkSize, err)
	}
	return out, nil
}

// loadChunk appends the plain bytes of chunk idx (table entry dev) to dst:
// zeros for a hole, the device bytes of a plain chunk (zeros past a short
// one's), the undone bytes of a transformed one. The caller holds the chunk's stripe lock.
func (o *Object) loadChunk(idx, dev int64, dst []byte) ([]byte, error) {
	cs := int(o.v.chunkSize)
	switch {
	case dev == 0:
		dst = bufpool.Grow(dst, cs)
		clear(dst[len(dst)-cs:])
		return dst, nil
	case dev&markTransformed != 0:
		e, err := o.entry(idx)
		if err != nil {
			return dst, err
		}
		return o.readStored(idx, e, dst)
	}
	base := len(dst)
	dst = bufpool.Grow(dst, cs)
	var err error
	if isShort(dev) {
		_, err = o.readShort(idx, dev, 0, dst[base:])
	} else {
		err = o.devRead(dst[base:], dev, idx*o.v.chunkSize)
	}
	if err != nil {
		return dst[:base], err
	}
	return dst, nil
}

// readTransformed fills p from byte in of transformed chunk idx, up to the
// chunk's end; it returns the bytes filled.
func (o *Object) readTransformed(idx, in int64, p []byte) (int, error) {
	ce, err := o.cachedEntry(idx)
	if err != nil {
		return 0, err
	}
	e := ce.e
	p = p[:min(int64(len(p)), o.v.chunkSize-in)]
	patched := false
	if len(e.patches) > 0 && len(p) > 0 {
		anyP, all := e.patchesIn(in/filter.SectorSize, (in+int64(len(p))-1)/filter.SectorSize)
		if all {
			return o.readPatched(idx, e, in, p)
		}
		patched = anyP // read whole, patches applied
	}
	if !patched && int64(len(p)) < o.v.chunkSize && ce.partial && in+int64(len(p)) <= int64(ce.sectors.PlainLen) {
		return o.readSectors(idx, e, ce.sectors, in, p)
	}
	buf := o.v.s.getBuf(int(o.v.chunkSize))
	defer o.v.s.putBuf(buf)
	plain, err := o.readBase(idx, e, (*buf)[:0], false)
	if err != nil {
		return 0, err
	}
	*buf = plain[:0]
	if patched {
		// Only the patches p covers: a bad one elsewhere in the chunk
		// fails the reads of its own sector alone.
		if err := o.applyPatches(idx, e, plain, in/filter.SectorSize, (in+int64(len(p))-1)/filter.SectorSize); err != nil {
			return 0, err
		}
	}
	return copy(p, plain[in:]), nil
}

// readSectors fills p from byte in of chunk idx (entry e, laid out in
// sectors as l) by reading and opening only the sectors p covers.
func (o *Object) readSectors(idx int64, e chunkEntry, l filter.Sectors, in int64, p []byte) (int, error) {
	v := o.v
	first, last := in/filter.SectorSize, (in+int64(len(p))-1)/filter.SectorSize
	from, to := first*int64(l.Stride), min((last+1)*int64(l.Stride), int64(e.storedLen))
	if from >= to || !v.s.alloc.contains(e.devOff, int64(e.storedLen)) {
		err := fmt.Errorf("chunk %d: entry does not hold bytes %d..%d (offset %d length %d): %w", idx, from, to, e.devOff, e.storedLen, ErrIO)
		v.s.log.Error("chunk entry is corrupt", "volume", v.ref, "inode", o.ino, "offset", idx*v.chunkSize, "err", err)
		return 0, err
	}
	// A read of whole sectors opens them straight into p (and a sector
	// stored as is, noop's, is read straight into it); others go through
	// a scratch buffer.
	whole := in%filter.SectorSize == 0 && len(p)%filter.SectorSize == 0 && to-from == (last-first+1)*int64(l.Stride)
	if whole && l.Stride == filter.SectorSize && l.Identity() {
		if err := o.devRead(p, e.devOff+from, idx*v.chunkSize+in); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	sb := v.s.getBuf(int(to - from))
	defer v.s.putBuf(sb)
	stored := (*sb)[:to-from]
	if err := o.devRead(stored, e.devOff+from, idx*v.chunkSize+in); err != nil {
		return 0, err
	}
	var dst []byte
	if whole {
		dst = p[:0:len(p)] // never appended past len(p): whole sectors open to SectorSize each
	} else {
		pb := v.s.getBuf(int(last-first+1) * filter.SectorSize)
		defer v.s.putBuf(pb)
		dst = (*pb)[:0]
	}
	plain, err := v.s.env.ReverseSectors(o.chunkContext(idx), dst, stored, l, int(first))
	if err == nil && int64(len(plain)) < in-first*filter.SectorSize+int64(len(p)) {
		err = fmt.Errorf("sectors %d..%d open to %d bytes: %w", first, last, len(plain), filter.ErrCorrupt)
	}
	if err != nil {
		v.s.log.Error("chunk failed verification; read returns EIO", "volume", v.ref, "inode", o.ino,
			"offset", idx*v.chunkSize+in, "chunk", idx, "device_offset", e.devOff, "err", err)
		return 0, fmt.Errorf("%w: volume %s inode %d offset %d: %w", ErrIO, v.ref, o.ino, idx*v.chunkSize+in, err)
	}
	if whole && len(plain) == len(p) && &plain[0] == &p[0] {
		return len(p), nil
	}
	return copy(p, plain[in-first*filter.SectorSize:]), nil
}

// readCached is readWindow through the volume's read cache c: each chunk is
// served from the cache or loaded whole, cached, and copied from.
func (o *Object) readCached(c *filter.Cache, w window, p []byte, off int64) (int, error) {
	if o.deleted {
		return 0, fmt.Errorf("volume %s: inode %d: %w", o.v.ref, o.ino, ErrNotFound)
	}
	cs := o.v.chunkSize
	t := o.table.Load()
	buf := o.v.s.getBuf(int(cs))
	defer o.v.s.putBuf(buf)
	done := 0
	for idx := w.first; idx < w.first+w.n && done < len(p); idx++ {
		in := (off + int64(done)) & (cs - 1)
		dev := t.get(idx)
		if dev == 0 {
			done += len(clear0(p[done:min(len(p), done+int(cs-in))]))
			continue
		}
		k := filter.CacheKey{Volume: o.v.id, Inode: o.ino, Chunk: uint64(idx)}
		data, hit, ticket := c.Get(k, (*buf)[:0])
		if !hit {
			var err error
			if data, err = o.loadChunk(idx, dev, (*buf)[:0]); err != nil {
				return done, err
			}
			c.Put(k, data, ticket)
		}
		*buf = data[:0]
		done += copy(p[done:], data[in:])
	}
	return done, nil
}

func clear0(b []byte) []byte {
	clear(b)
	return b
}

// invalidate drops chunks [first, first+n) from the volume's read cache, if
// it has one. Called after every change to a chunk is visible.
func (o *Object) invalidate(first, n int64) {
	c := o.v.cache.Load()
	if c == nil {
		return
	}
	for i := first; i < first+n; i++ {
		c.Invalidate(filter.CacheKey{Volume: o.v.id, Inode: o.ino, Chunk: uint64(i)})
	}
}
