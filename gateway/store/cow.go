package store

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Copy-on-write of chunks (transformed chunks, and plain writes that meet
// one).
//
// A chunk written under a transforming chain is never overwritten in place:
// its stored bytes depend on all of its plain bytes (a compressed frame, a
// ciphertext and its tag, a crc). Per window of chunks, with the window's
// stripes write-locked:
//
//  1. each chunk the write covers only in part is read and undone (a hole
//     reads as zeros) and the new bytes are merged in;
//  2. the chain runs forward over the whole chunk, giving the stored bytes
//     and the filter record;
//  3. the stored bytes are written to a new extent, as long as they are
//     (rounded up to whole 4 KiB units by the allocator);
//  4. one badger transaction commits the window's new map entries
//     (data before metadata), with a pending record for each chunk that
//     held data a flush may have promised, or was a hole (pending.go: the
//     new bytes are not written through; the record lets the next open
//     fall back, to the old entry or to the hole, if they never reached
//     the device);
//  5. the table follows, and each replaced extent goes to the deferred free
//     list with zero set: it is zeroed and reused only after the commit that
//     released it is durable (and, for a pending record's fallback, after
//     a device flush), so until a flush the old entry — all a crash
//     can leave — still finds its bytes.
//
// Exceptions: a chunk whose record is noop steps alone is written in place
// by a noop chain (writeIdentity), like a plain chunk; and a write into
// part of a transformed chunk under a chain of built-ins stores the
// sectors it touches as patches beside the chunk (patch.go) instead of
// steps 1-3, until the chunk has maxPatches of them.
//
// A crash before step 4 leaves the old entry and an unreferenced new
// extent, which start-up discards with the rest of the free space. A write
// under a plain chain that meets a transformed chunk rewrites that chunk
// the same way, stored plain (a whole chunk, no record), after which it is
// written in place again; so does one that goes past a short chunk's
// stored bytes (short.go), into a bigger extent.

// writeChain writes p at off through a transforming chain, window by
// window.
func (o *Object) writeChain(p []byte, off int64, chain *filter.Chain) error {
	for len(p) > 0 {
		if chain.Identity() {
			// Chunks an identity chain wrote (noop) are overwritten in
			// place: their record holds nothing the new bytes change.
			n, err := o.writeIdentity(p, off)
			if err != nil {
				return err
			}
			if p, off = p[n:], off+int64(n); len(p) == 0 {
				return nil
			}
			n, err = o.rewriteChunk(p, off, chain) // the next chunk is not one
			if err != nil {
				return err
			}
			p, off = p[n:], off+int64(n)
			continue
		}
		w := o.window(off, int64(len(p)))
		o.lock(w.mask)
		n, err := o.cowLocked(w, p, off, chain, true)
		if n > 0 {
			o.growSize(off + int64(n))
		}
		o.unlock(w.mask)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// writeIdentity writes the start of p at off in place into the chunks,
// from off's on, whose record is of identity steps alone (noop) and which
// are stored whole, as the plain path writes plain chunks (under the
// stripes' read locks, no metadata), until it meets another chunk or the
// end of a window. It returns the bytes written.
func (o *Object) writeIdentity(p []byte, off int64) (int, error) {
	v := o.v
	cs := v.chunkSize
	w := o.window(off, int64(len(p)))
	o.rlock(w.mask)
	defer o.runlock(w.mask)
	if o.deleted {
		return 0, fmt.Errorf("volume %s: inode %d: %w", v.ref, o.ino, ErrNotFound)
	}
	t := o.table.Load()
	done := 0
	for idx := w.first; idx < w.first+w.n && done < len(p); idx++ {
		if t.get(idx)&markTransformed == 0 {
			break
		}
		ce, err := o.cachedEntry(idx)
		if err != nil {
			return done, err
		}
		if !ce.partial || !ce.sectors.Identity() || int64(ce.sectors.PlainLen) != cs || int64(ce.e.storedLen) != cs || len(ce.e.patches) > 0 {
			break
		}
		in := (off + int64(done)) & (cs - 1)
		n := int(min(int64(len(p)-done), cs-in))
		if err := v.devWrite(p[done:done+n], ce.e.devOff+in, false); err != nil {
			v.s.log.Error("device write failed", "volume", v.ref, "inode", o.ino, "offset", off+int64(done), "err", err)
			return done, fmt.Errorf("%w: %w", ErrIO, err)
		}
		o.invalidate(idx, 1)
		done += n
	}
	if done > 0 {
		o.growSize(off + int64(done))
	}
	return done, nil
}

// rewriteChunk writes the part of p that falls in off's chunk by
// copy-on-write through chain (nil: plain), taking that chunk's stripe
// write lock. It returns the bytes written.
func (o *Object) rewriteChunk(p []byte, off int64, chain *filter.Chain) (int, error) {
	cs := o.v.chunkSize
	n := min(int64(len(p)), cs-off&(cs-1))
	w := o.window(off, n)
	o.lock(w.mask)
	defer o.unlock(w.mask)
	written, err := o.cowLocked(w, p[:n], off, chain, true)
	if written > 0 {
		o.growSize(off + int64(written))
	}
	return written, err
}

// zeroTransformed makes bytes [in, in+n) of transformed chunk idx read as
// zeros (a partial discard or truncate), rewriting it by copy-on-write
// through the transforms its record names, so an encrypted chunk stays
// encrypted. The caller holds w's stripes write-locked.
func (o *Object) zeroTransformed(w window, idx, in, n int64) error {
	e, err := o.entry(idx)
	if err != nil {
		return err
	}
	chain, err := o.v.s.env.ChainFor(e.record)
	if err != nil {
		return fmt.Errorf("volume %s: inode %d: chunk %d: %w", o.v.ref, o.ino, idx, errIO(err))
	}
	// Not as patches: a discard must not take more space.
	_, err = o.cowLocked(w, o.v.s.zeros[:n], idx*o.v.chunkSize+in, chain, false)
	return err
}

// cowChunk is one chunk of a copy-on-write window.
type cowChunk struct {
	idx      int64
	old      int64      // table entry before: 0 hole, plain offset, or marked
	oldE     chunkEntry // the old entry of a transformed chunk
	e        chunkEntry // the new entry
	devSize  int64      // bytes allocated for e
	newOff   int64      // the extent allocated: e's, or a patched chunk's new units
	durable  bool       // the chunk held data that may be promised: a pending record (pending.go)
	crc      uint32     // crc32c of e's stored bytes (durable only)
	patched  bool       // e is oldE with patches added (patch.go)
	replaced []patch    // patches of oldE that e replaced (patched only)
}

// cowLocked writes p at off by copy-on-write through chain (nil or plain:
// stored plain), for the chunks of window w, whose stripes the caller holds
// write-locked; with patches, small writes into transformed chunks become
// patches where they can (patch.go). It returns the bytes of p written: up
// to the window's end.
func (o *Object) cowLocked(w window, p []byte, off int64, chain *filter.Chain, patches bool) (int, error) {
	v := o.v
	s := v.s
	if o.deleted {
		return 0, fmt.Errorf("volume %s: inode %d: %w", v.ref, o.ino, ErrNotFound)
	}
	cs := v.chunkSize
	t := o.table.Load()
	end := min(off+int64(len(p)), (w.first+w.n)*cs)
	first, last := off/cs, (end-1)/cs
	holes := int64(0)
	for idx := first; idx <= last; idx++ {
		if t.get(idx) == 0 {
			holes++
		}
	}
	if err := v.reserve(holes); err != nil {
		return 0, err
	}
	chunks := make([]cowChunk, 0, last-first+1)
	fail := func(err error) (int, error) {
		for _, c := range chunks {
			s.freeWritten(c.newOff, c.devSize)
		}
		v.allocated.Add(-holes)
		return 0, err
	}
	bufs := cowBufs{plain: s.getBuf(int(cs)), out: s.getBuf(int(cs) + 1024)}
	defer s.putBuf(bufs.plain)
	defer s.putBuf(bufs.out)
	for idx := first; idx <= last; idx++ {
		from, to := max(off, idx*cs), min(end, (idx+1)*cs)
		var c cowChunk
		var err error
		if ce, ok := o.patchCandidate(t, idx); patches && ok && o.patchable(ce, p[from-off:to-off], from-idx*cs, chain) {
			c, err = o.patchWrite(idx, ce.e, p[from-off:to-off], from-idx*cs, chain, bufs)
		} else {
			c, err = o.cowWrite(t, idx, p[from-off:to-off], from-idx*cs, chain, bufs)
		}
		if err != nil {
			return fail(err)
		}
		chunks = append(chunks, c)
	}
	token := s.flushStarted.Load() + 1 // after the data writes (pending.go)
	if err := o.commitCow(chunks, token); err != nil {
		return fail(err)
	}
	o.installCow(t, chunks, token)
	s.records.add(v, o.ino, chunks, token)
	return int(end - off), nil
}

// cowBufs are a copy-on-write window's scratch buffers: a chunk's plain
// bytes and the chain's output.
type cowBufs struct{ plain, out *[]byte }

// cowWrite stores chunk idx anew with src at byte in of it: a partial chunk
// is merged into the chunk's current contents (undone if transformed, zeros
// if a hole), the chain runs forward, and the stored bytes go to a new
// extent. Nothing is committed; on error nothing stays allocated.
func (o *Object) cowWrite(t *chunkTable, idx int64, src []byte, in int64, chain *filter.Chain, bufs cowBufs) (cowChunk, error) {
	v := o.v
	s := v.s
	cs := v.chunkSize
	c := cowChunk{idx: idx, old: t.get(idx)}
	if c.old&markTransformed != 0 {
		var err error
		if c.oldE, err = o.entry(idx); err != nil {
			return c, err
		}
	}
	// Where the chunk's data may end: a plain chunk stored under a plain
	// chain may be short (short.go).
	dataEnd := cs
	switch {
	case c.old == 0:
		dataEnd = in + int64(len(src))
	case isShort(c.old):
		dataEnd = max(shortLen(c.old), in+int64(len(src)))
	}
	if int64(len(src)) < cs {
		// Part of the chunk: merge into its current contents.
		var buf []byte
		var err error
		if c.old&markTransformed != 0 {
			buf, err = o.readStored(idx, c.oldE, (*bufs.plain)[:0])
		} else {
			buf, err = o.loadChunk(idx, c.old, (*bufs.plain)[:0])
		}
		if err != nil {
			return c, err
		}
		*bufs.plain = buf[:0]
		copy(buf[in:], src)
		src = buf
	}
	stored := src
	var record []byte
	short := false
	if chain.Plain() {
		oldLen := int64(0)
		if isShort(c.old) {
			oldLen = shortLen(c.old)
		}
		if sl := o.plainLen(idx, dataEnd, oldLen); sl < cs {
			stored, short = src[:sl], true
		}
	} else {
		var err error
		stored, record, err = chain.Forward(o.chunkContext(idx), (*bufs.out)[:0], src)
		if err != nil {
			s.log.Error("filter chain failed on write", "volume", v.ref, "inode", o.ino, "offset", idx*cs, "err", err)
			return c, fmt.Errorf("%w: volume %s inode %d offset %d: %w", ErrIO, v.ref, o.ino, idx*cs, err)
		}
		*bufs.out = stored[:0]
	}
	if grow := int64(len(stored)) - shortLen(c.old); isShort(c.old) && grow > 0 && v.ns != nil &&
		v.AllocatedBytes()+grow > v.size.Load() {
		// A short chunk grows: what the volume holds grows with it.
		return c, fmt.Errorf("volume %s: %w (volume size %d bytes reached)", v.ref, ErrNoSpace, v.size.Load())
	}
	// A result later writes change in place (plain, short, noop) takes
	// zeroed space: it must never show dirty space's old bytes, and
	// cannot be checked against a crc at open (below).
	transformed := record != nil && !chain.Identity()
	dev, dirty, err := s.allocSyncing(int64(len(stored)), !transformed)
	if err != nil {
		return c, fmt.Errorf("volume %s: %w", v.ref, err)
	}
	c.newOff, c.devSize = dev, int64(len(stored))
	hasSum := false // c.e.checksum is the crc32c of stored
	c.e = chunkEntry{storedLen: uint32(len(stored)), devOff: dev}
	if short {
		c.e.flags = flagShort
	}
	if record != nil {
		c.e.flags, c.e.record = flagRecord, record
		if r, err := filter.ParseRecord(record); err == nil {
			c.e.checksum, hasSum = r.Checksum()
		}
	}
	// What a power loss that keeps the commit but not these bytes must
	// find: the old bytes, which a flush may have promised (the chunk held
	// data and the object is older than the last flush), or zeros in a
	// hole, never the old bytes of dirty space (another chunk's, perhaps
	// another tenant's). A transformed result is checked at open against
	// a pending record, which falls back to the old entry or the hole
	// (pending.go); in a new object, only on dirty space (clean space
	// reads zeros). Another result, on zeroed space, cannot be checked
	// against a crc: it is written through (FUA) when the chunk held
	// data a flush may have promised.
	fua := false
	if transformed {
		c.durable = o.growDurably() || dirty
	} else {
		fua = c.old != 0 && o.growDurably()
	}
	if c.durable {
		// A pending record will let a crash find out whether these
		// bytes reached the device (pending.go).
		if c.old != 0 {
			c.oldE = v.oldEntry(c.old, c.oldE)
		}
		c.crc = c.e.checksum
		if !hasSum {
			c.crc = filter.Checksum(stored)
		}
	}
	if err := v.devWrite(stored, dev, fua); err != nil {
		s.freeWritten(dev, c.devSize)
		s.log.Error("device write failed", "volume", v.ref, "inode", o.ino, "offset", idx*cs, "err", err)
		return c, fmt.Errorf("%w: %w", ErrIO, err)
	}
	return c, nil
}

// commitCow commits the new map entries of a copy-on-write window in one
// transaction (their data is on the device already).
func (o *Object) commitCow(chunks []cowChunk, token int64) error {
	v := o.v
	commit := func(txn *badger.Txn) error {
		if err := o.setPending(txn, chunks, token); err != nil {
			return err
		}
		for _, c := range chunks {
			if err := txn.Set(chunkKey(v.id, o.ino, uint64(c.idx)), c.e.encode()); err != nil {
				return err
			}
		}
		return nil
	}
	err := v.s.db.Update(commit)
	for try := 0; try < 8; try++ {
		if errors.Is(err, errFlushRace) {
			if err = v.s.devFlush(); err != nil {
				break
			}
		} else if !errors.Is(err, badger.ErrConflict) {
			// ErrConflict: the sync loop deleted a stale pending
			// record this transaction read (pending.go, dropStale).
			break
		}
		err = v.s.db.Update(commit)
	}
	if err != nil {
		v.s.log.Error("chunk map commit failed", "volume", v.ref, "inode", o.ino, "err", err)
		return fmt.Errorf("%w: commit chunk map: %w", ErrIO, err)
	}
	return nil
}

// installCow makes table t and the caches follow a committed copy-on-write
// window, and hands the replaced extents to the deferred free list, to be
// zeroed once the commit is durable.
func (o *Object) installCow(t *chunkTable, chunks []cowChunk, token int64) {
	v := o.v
	s := v.s
	var freed []extent
	var saved int64
	for _, c := range chunks {
		if c.e.transformed() {
			s.entries.put(v.id, o.ino, c.idx, newCachedEntry(c.e))
		} else {
			s.entries.drop(v.id, o.ino, c.idx)
		}
		t.set(c.idx, tableEntry(c.e))
		saved += v.savedBy(c.e)
		tok := int64(0)
		if c.durable || c.old&markTransformed != 0 {
			// A transformed chunk's extents wait for a device flush even
			// when no record falls back to them now: a live pending
			// record of this chunk may (pending.go, "Reuse").
			tok = token
		}
		switch {
		case c.patched:
			for _, p := range c.replaced {
				freed = append(freed, extent{off: p.devOff, length: unitSize, zero: true, flushTok: tok})
			}
			saved -= v.savedBy(c.oldE)
		case c.old == 0:
			o.mapped.Add(1)
		case c.old&markTransformed != 0:
			freed = s.appendExtents(freed, c.oldE, true, tok)
			saved -= v.savedBy(c.oldE)
		default:
			l := v.plainExtentLen(c.old)
			freed = append(freed, extent{off: entryAddr(c.old), length: l, zero: true, flushTok: tok})
			saved -= v.chunkSize - l
		}
		o.invalidate(c.idx, 1)
	}
	v.saved.Add(saved)
	o.saved.Add(saved)
	s.alloc.deferFree(freed)
}

// allocSyncing allocates an extent; when the pool is full it first makes
// the deferred frees durable and reusable (copy-on-write frees one extent
// per chunk written) and tries again. With zeroed, the extent reads as
// zeros where the device's free space does (s.allocZeroed).
func (s *Store) allocSyncing(length int64, zeroed bool) (dev int64, dirty bool, err error) {
	alloc := s.alloc.allocReuse // written whole: dirty space first
	if zeroed {
		alloc = s.allocZeroed
	}
	dev, dirty, err = alloc(length)
	if errors.Is(err, ErrNoSpace) {
		if serr := s.syncForSpace(); serr != nil {
			return 0, false, serr
		}
		dev, dirty, err = alloc(length)
	}
	return dev, dirty, err
}

// allocZeroed allocates an extent that reads as zeros on a device whose
// free space does (DiscardZeroes): units freed by copy-on-write may still
// hold old bytes (releaseFreed leaves them dirty) and are zeroed first,
// and the device flushed: a commit naming the extent may reach the disk
// before the bytes written into it (badger's log and the pool sit in the
// page cache until synced), and after a power loss the rest of the chunk
// must read zeros, not another chunk's old bytes, perhaps another
// tenant's (TestDirtyReuseZeroed).
func (s *Store) allocZeroed(length int64) (int64, bool, error) {
	dev, dirty, err := s.alloc.alloc(length)
	if err != nil || !dirty || !s.dev.DiscardZeroes() {
		return dev, false, err
	}
	if err := s.zeroExtent(dev, length); err != nil {
		s.alloc.releaseDirty([]extent{{off: dev, length: length}}) // still dirty
		return 0, false, err
	}
	if err := s.devFlush(); err != nil {
		s.alloc.releaseDirty([]extent{{off: dev, length: length}})
		return 0, false, err
	}
	return dev, false, nil
}

// zeroedFrees marks extents zeroed before the commit that frees them
// (those not marked zero) to wait for a device flush after the zeroing
// before they are reused, as syncMeta does for flushTok: until then a
// power loss could keep a later commit that names them and lose the
// zeroing, and the old bytes would show through a new chunk.
func (s *Store) zeroedFrees(exts []extent) []extent {
	tok := s.flushStarted.Load() + 1
	for i := range exts {
		if !exts[i].zero {
			exts[i].flushTok = max(exts[i].flushTok, tok)
		}
	}
	return exts
}

// syncForSpace is what an allocation that found the pool full does before
// its one retry: a metadata sync, even when no frees are pending now,
// because a sync that another request started may hold them (taken, not
// yet released); syncMeta waits for that one and then releases whatever
// is left. Without it, concurrent writers on a nearly full pool got ENOSPC
// while space was on its way back.
func (s *Store) syncForSpace() error { return s.syncMeta() }

// patchCandidate returns the cached entry of chunk idx when it is a
// transformed chunk a small write might patch.
func (o *Object) patchCandidate(t *chunkTable, idx int64) (cachedEntry, bool) {
	if t.get(idx)&markTransformed == 0 {
		return cachedEntry{}, false
	}
	ce, err := o.cachedEntry(idx)
	return ce, err == nil
}
