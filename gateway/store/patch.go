package store

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Patches: small writes into transformed chunks without rewriting them.
//
// A write that covers part of a transformed chunk used to read, undo and
// rewrite the whole chunk (cow.go): for a 4 KiB write into a 64 KiB
// chunk, 64 KiB read, 64 KiB through the chain and 64 KiB written to a
// new extent. Under a chain whose effect a sector can keep on its own
// (filter.Chain.Patches: compression, encryption, checksum, noop), such a
// write now stores each sector it touches as a patch, as BlueStore writes
// small overwrites of compressed blobs as new extents:
//
//   - the sector's plain bytes (merged with its current ones when the
//     write covers it in part) go to a new 4 KiB unit, sealed with
//     AES-256-GCM when the chain encrypts (filter.Env.SealPatch), never
//     compressed;
//   - the chunk's entry keeps its stored bytes and record (the base) and
//     gains the patch: sector, unit, crc32c of the unit's bytes, and the
//     nonce and tag of a sealed one (docs/FORMAT.md, "Patches");
//   - one transaction commits the new entry, with a pending record when
//     the chunk held data a flush may have promised (pending.go: the new
//     units are checked at open and the entry falls back if they did not
//     reach the device); a patch it replaces (the sector was patched
//     before) is freed like a replaced extent.
//
// Reads take patched sectors from their units (each checked against its
// crc32c, opened if sealed) and the others from the base. A write that
// would take a chunk past maxPatches, or that covers the whole chunk,
// rewrites it by copy-on-write as before, folding the patches into a new
// base and freeing their units.

// patch is one sector of a transformed chunk stored on its own.
type patch struct {
	sector uint16
	sealed bool
	devOff int64  // the unit holding it
	crc    uint32 // crc32c of the unit's bytes
	seal   filter.PatchSeal
}

// patchLen is the encoded size of a patch (docs/FORMAT.md).
const patchLen = 48

// patchSealed flags a sealed patch.
const patchSealed = 1

// maxPatches is how many patches a chunk of chunkSize bytes may carry:
// half its sectors, at most 32. A chunk holds at most its base and that
// many units, 1.5x its size for a 64 KiB chunk of incompressible data.
func maxPatches(chunkSize int64) int {
	return int(min(chunkSize/filter.SectorSize/2, 32))
}

func appendPatches(b []byte, ps []patch) []byte {
	b = append(b, byte(len(ps)))
	for _, p := range ps {
		var x [patchLen]byte
		binary.BigEndian.PutUint16(x[0:], p.sector)
		if p.sealed {
			x[2] = patchSealed
		}
		binary.BigEndian.PutUint64(x[4:], uint64(p.devOff))
		binary.BigEndian.PutUint32(x[12:], p.crc)
		copy(x[16:20], p.seal.KeyID[:])
		copy(x[20:32], p.seal.Nonce[:])
		copy(x[32:48], p.seal.Tag[:])
		b = append(b, x[:]...)
	}
	return b
}

// decodePatches decodes a patch list: a count of 1..255, then that many
// patches in ascending sector order, each at a unit-aligned offset.
func decodePatches(b []byte) ([]patch, error) {
	if len(b) < 1 || b[0] == 0 || len(b) != 1+int(b[0])*patchLen {
		return nil, fmt.Errorf("chunk entry: patch list of %d bytes: %w", len(b), ErrIO)
	}
	ps := make([]patch, b[0])
	for i := range ps {
		x := b[1+i*patchLen : 1+(i+1)*patchLen]
		p := patch{
			sector: binary.BigEndian.Uint16(x[0:]),
			sealed: x[2] == patchSealed,
			devOff: int64(binary.BigEndian.Uint64(x[4:])),
			crc:    binary.BigEndian.Uint32(x[12:]),
		}
		copy(p.seal.KeyID[:], x[16:20])
		copy(p.seal.Nonce[:], x[20:32])
		copy(p.seal.Tag[:], x[32:48])
		switch {
		case x[2]&^patchSealed != 0 || x[3] != 0:
			return nil, fmt.Errorf("chunk entry: patch %d: unknown flags %#x: %w", i, x[2:4], ErrIO)
		case p.devOff <= 0 || p.devOff%unitSize != 0:
			return nil, fmt.Errorf("chunk entry: patch %d at offset %d: %w", i, p.devOff, ErrIO)
		case i > 0 && p.sector <= ps[i-1].sector:
			return nil, fmt.Errorf("chunk entry: patches out of order (sector %d after %d): %w", p.sector, ps[i-1].sector, ErrIO)
		}
		ps[i] = p
	}
	return ps, nil
}

// patchAt returns the patch of sector s, if e has one.
func (e chunkEntry) patchAt(s int64) (patch, bool) {
	i, ok := slices.BinarySearchFunc(e.patches, s, func(p patch, s int64) int { return int(int64(p.sector) - s) })
	if !ok {
		return patch{}, false
	}
	return e.patches[i], true
}

// appendExtents appends the extent of a chunk with entry e and its
// patches' units to dst, each with zero and flushTok as given; those that
// lie outside the pool (a corrupt entry, which fsck reports) are left out.
func (s *Store) appendExtents(dst []extent, e chunkEntry, zero bool, flushTok int64) []extent {
	if s.alloc.contains(e.devOff, int64(e.storedLen)) {
		dst = append(dst, extent{off: e.devOff, length: e.extentLen(), zero: zero, flushTok: flushTok})
	}
	for _, p := range e.patches {
		if s.alloc.contains(p.devOff, unitSize) {
			dst = append(dst, extent{off: p.devOff, length: unitSize, zero: zero, flushTok: flushTok})
		}
	}
	return dst
}

// patchesIn reports whether any of sectors [first, last] is patched, and
// whether all of them are.
func (e chunkEntry) patchesIn(first, last int64) (anyP, all bool) {
	n := int64(0)
	for _, p := range e.patches {
		if s := int64(p.sector); s >= first && s <= last {
			n++
		}
	}
	return n > 0, n == last-first+1
}

// readPatch appends the plain bytes of patch p of chunk idx to dst
// (filter.SectorSize of them), after checking its crc32c and, for a sealed
// one, opening it.
func (o *Object) readPatch(idx int64, p patch, dst []byte) ([]byte, error) {
	v := o.v
	at := idx*v.chunkSize + int64(p.sector)*filter.SectorSize
	if int64(p.sector)*filter.SectorSize >= v.chunkSize || !v.s.alloc.contains(p.devOff, unitSize) {
		err := fmt.Errorf("chunk %d: patch of sector %d at offset %d does not fit: %w", idx, p.sector, p.devOff, ErrIO)
		v.s.log.Error("chunk entry is corrupt", "volume", v.ref, "inode", o.ino, "offset", at, "err", err)
		return dst, err
	}
	dst, err := v.s.openPatch(o.chunkContext(idx), p, dst)
	if err != nil {
		v.s.log.Error("chunk failed verification; read returns EIO", "volume", v.ref, "inode", o.ino,
			"offset", at, "chunk", idx, "device_offset", p.devOff, "err", err)
		return dst, fmt.Errorf("%w: volume %s inode %d offset %d: %w", ErrIO, v.ref, o.ino, at, err)
	}
	return dst, nil
}

// openPatch reads patch p of chunk cc from the device, checks its crc32c
// and opens it if sealed, appending its plain bytes to dst.
func (s *Store) openPatch(cc filter.ChunkContext, p patch, dst []byte) ([]byte, error) {
	sb := s.getBuf(filter.SectorSize + 16)
	defer s.putBuf(sb)
	stored := (*sb)[:filter.SectorSize]
	if _, err := s.dev.ReadAt(stored, p.devOff); err != nil {
		return dst, fmt.Errorf("device read of patch at %d: %w", p.devOff, err)
	}
	switch {
	case filter.Checksum(stored) != p.crc:
		return dst, fmt.Errorf("patch of sector %d: crc32c mismatch: %w", p.sector, filter.ErrCorrupt)
	case p.sealed:
		return s.env.OpenPatch(cc, dst, stored, int(p.sector), p.seal)
	}
	return append(dst, stored...), nil
}

// applyPatches overwrites the patched sectors among [first, last] of
// plain, chunk idx's undone base, with their patches.
func (o *Object) applyPatches(idx int64, e chunkEntry, plain []byte, first, last int64) error {
	for _, p := range e.patches {
		if int64(p.sector) < first || int64(p.sector) > last {
			continue
		}
		at := int(p.sector) * filter.SectorSize
		if at+filter.SectorSize > len(plain) {
			return fmt.Errorf("chunk %d: patch of sector %d past the chunk: %w", idx, p.sector, ErrIO)
		}
		if _, err := o.readPatch(idx, p, plain[at:at:at+filter.SectorSize]); err != nil {
			return err
		}
	}
	return nil
}

// readPatched fills p from byte in of chunk idx, whose sectors p covers
// are all patched.
func (o *Object) readPatched(idx int64, e chunkEntry, in int64, p []byte) (int, error) {
	sb := o.v.s.getBuf(filter.SectorSize)
	defer o.v.s.putBuf(sb)
	done := 0
	for done < len(p) {
		at := in + int64(done)
		pt, ok := e.patchAt(at / filter.SectorSize)
		if !ok {
			return done, fmt.Errorf("chunk %d: sector %d is not patched: %w", idx, at/filter.SectorSize, ErrIO)
		}
		plain, err := o.readPatch(idx, pt, (*sb)[:0])
		if err != nil {
			return done, err
		}
		done += copy(p[done:], plain[at%filter.SectorSize:])
	}
	return done, nil
}

// patchable reports whether src, at byte in of transformed chunk idx
// (cached entry ce), can be written as patches under chain: the chain
// keeps its effect in a patch and encrypts exactly when the base does,
// the write leaves part of the chunk alone, and the chunk stays within
// maxPatches (and an fs volume within its size).
func (o *Object) patchable(ce cachedEntry, src []byte, in int64, chain *filter.Chain) bool {
	v := o.v
	cs := v.chunkSize
	if !chain.Patches() || int64(len(src)) >= cs || cs < 2*filter.SectorSize || ce.e.storedLen == 0 {
		return false
	}
	// A chain that encrypts patches only an encrypted base, and one that
	// does not only a base that is not: a fold under the base's own chain
	// (a partial discard, a truncate) must never store a sealed patch's
	// bytes in the clear, and a new encryption policy must still reach
	// the whole chunk at its first write.
	if r, err := filter.ParseRecord(ce.e.record); err != nil || r.Has("encryption") != chain.SealsPatches() {
		return false
	}
	first, last := in/filter.SectorSize, (in+int64(len(src))-1)/filter.SectorSize
	added := int64(0)
	for s := first; s <= last; s++ {
		if _, ok := ce.e.patchAt(s); !ok {
			added++
		}
	}
	if len(ce.e.patches)+int(added) > maxPatches(cs) {
		return false
	}
	return v.ns == nil || v.AllocatedBytes()+added*unitSize <= v.size.Load()
}

// patchWrite stores src at byte in of transformed chunk idx (old entry
// oldE) as patches: every sector it touches goes to a new unit (one
// extent for all of them), and the new entry names them. Nothing is
// committed; on error nothing stays allocated.
func (o *Object) patchWrite(idx int64, oldE chunkEntry, src []byte, in int64, chain *filter.Chain, bufs cowBufs) (cowChunk, error) {
	v := o.v
	s := v.s
	c := cowChunk{idx: idx, old: tableEntry(oldE), oldE: oldE, patched: true}
	first, last := in/filter.SectorSize, (in+int64(len(src))-1)/filter.SectorSize
	k := last - first + 1
	plain := (*bufs.plain)[:k*filter.SectorSize]
	if in%filter.SectorSize != 0 || (in+int64(len(src)))%filter.SectorSize != 0 {
		// Sectors written in part: start from what they hold.
		if _, err := o.readTransformed(idx, first*filter.SectorSize, plain); err != nil {
			return c, err
		}
	}
	copy(plain[in-first*filter.SectorSize:], src)
	dev, _, err := s.allocSyncing(k*filter.SectorSize, false) // written whole below
	if err != nil {
		return c, fmt.Errorf("volume %s: %w", v.ref, err)
	}
	c.newOff, c.devSize = dev, k*filter.SectorSize
	stored := (*bufs.out)[:0]
	added := make([]patch, k)
	for j := range added {
		sec := plain[j*filter.SectorSize : (j+1)*filter.SectorSize]
		p := patch{sector: uint16(first + int64(j)), devOff: dev + int64(j)*filter.SectorSize}
		if chain.SealsPatches() {
			if stored, p.seal, err = s.env.SealPatch(o.chunkContext(idx), stored, sec, int(p.sector)); err != nil {
				s.freeWritten(dev, c.devSize)
				s.log.Error("filter chain failed on write", "volume", v.ref, "inode", o.ino, "offset", idx*v.chunkSize, "err", err)
				return c, fmt.Errorf("%w: volume %s inode %d offset %d: %w", ErrIO, v.ref, o.ino, idx*v.chunkSize, err)
			}
			p.sealed = true
		} else {
			stored = append(stored, sec...)
		}
		p.crc = filter.Checksum(stored[j*filter.SectorSize:])
		added[j] = p
	}
	*bufs.out = stored[:0]
	c.e, c.replaced = mergePatches(oldE, added)
	c.durable = o.growDurably()
	if err := v.devWrite(stored, dev, false); err != nil {
		s.freeWritten(dev, c.devSize)
		s.log.Error("device write failed", "volume", v.ref, "inode", o.ino, "offset", idx*v.chunkSize, "err", err)
		return c, fmt.Errorf("%w: %w", ErrIO, err)
	}
	return c, nil
}

// mergePatches returns old with patches added (replacing those of the
// same sectors), and the patches replaced.
func mergePatches(old chunkEntry, added []patch) (chunkEntry, []patch) {
	e := old
	e.flags |= flagPatches
	e.patches = make([]patch, 0, len(old.patches)+len(added))
	var replaced []patch
	i, j := 0, 0
	for i < len(old.patches) || j < len(added) {
		switch {
		case j == len(added) || i < len(old.patches) && old.patches[i].sector < added[j].sector:
			e.patches = append(e.patches, old.patches[i])
			i++
		case i == len(old.patches) || added[j].sector < old.patches[i].sector:
			e.patches = append(e.patches, added[j])
			j++
		default: // same sector: the new one wins
			replaced = append(replaced, old.patches[i])
			e.patches = append(e.patches, added[j])
			i, j = i+1, j+1
		}
	}
	return e, replaced
}
