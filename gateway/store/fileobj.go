package store

import (
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Engine operations on the objects of files: what the namespace (FS) asks
// of the chunk engine besides Volume.ReadAt/WriteAt/Discard. Everything
// here is about chunks and their device space; lengths as a namespace
// record, attributes and orphans stay with the namespace, which decides
// when each of these runs.

// IterTxn is what reading a chunk map needs of a transaction (a badger
// transaction, or the namespace's kv over one).
type IterTxn interface {
	NewIterator(opt badger.IteratorOptions) *badger.Iterator
}

// LoadFileObject builds the object of file ino, of length size, from its
// chunk map as read in txn.
func (v *Volume) LoadFileObject(txn IterTxn, ino uint64, size int64) (*Object, error) {
	var chunks []struct{ idx, dev int64 } // dev as the table holds it
	var saved int64
	it := txn.NewIterator(badger.IteratorOptions{Prefix: ChunkPrefix(v.id, ino), PrefetchValues: true})
	for it.Rewind(); it.Valid(); it.Next() {
		_, _, idx, ok := ParseChunkKey(it.Item().Key())
		if !ok || idx >= MaxFileSize/uint64(v.chunkSize) {
			continue
		}
		var e chunkEntry
		if err := it.Item().Value(func(b []byte) (err error) { e, err = decodeChunkEntry(b); return err }); err != nil {
			it.Close()
			return nil, err
		}
		if v.s.alloc.contains(e.devOff, int64(e.storedLen)) && (!e.short() || int64(e.storedLen) < v.chunkSize) {
			chunks = append(chunks, struct{ idx, dev int64 }{int64(idx), tableEntry(e)})
			saved += v.savedBy(e)
		}
	}
	it.Close()
	n := numChunks(size, v.chunkSize)
	if len(chunks) > 0 {
		n = max(n, chunks[len(chunks)-1].idx+1)
	}
	o := newFileObject(v, ino, size, n)
	t := o.table.Load()
	for _, c := range chunks {
		t.set(c.idx, c.dev)
	}
	o.mapped.Store(int64(len(chunks)))
	o.saved.Store(saved)
	return o, nil
}

// NewFileObject returns the object of file ino, created a moment ago: empty,
// without reading the chunk map.
func (v *Volume) NewFileObject(ino uint64) *Object {
	o := newFileObject(v, ino, 0, 0)
	o.born = v.s.flushes.Load()
	return o
}

// TrimPastEnd unmaps what a file object holds past its length and zeroes
// the rest of its last chunk (nothing on a read-only volume).
func (o *Object) TrimPastEnd() error {
	size := o.size.Load()
	if end := o.table.Load().n * o.v.chunkSize; end > size && !o.v.readOnly {
		if err := o.Discard(size, end-size); err != nil {
			return fmt.Errorf("trim inode %d past its length: %w", o.ino, err)
		}
	}
	return nil
}

// Truncate sets a file object's length: chunks past size are unmapped and
// the rest of the last chunk is zeroed, then record runs (the namespace
// records the length), all with every stripe held, so no write lands
// between the new length and its record.
func (o *Object) Truncate(size int64, record func() error) error {
	o.lockAll()
	defer o.unlockAll()
	if end := o.table.Load().n * o.v.chunkSize; end > size {
		if err := o.discardLocked(size, end-size); err != nil {
			return err
		}
	}
	o.size.Store(size)
	o.lenDirty.Store(true) // record commits it too; the next persist repeats it
	o.Touch()
	return record()
}

// Allocate maps every hole of [off, off+length) to zeroed pool space, and
// makes short chunks there full (short.go). On a
// device whose discards read as zeros that is map entries alone
// (allocateLocked), in one pass under every stripe; elsewhere zeros are
// written, a window at a time.
func (o *Object) Allocate(off, length int64) error {
	v := o.v
	cs := v.chunkSize
	o.ensureChunks(numChunks(off+length, cs))
	first, last := off>>v.chunkBits, (off+length-1)>>v.chunkBits
	if v.s.dev.DiscardZeroes() {
		o.lockAll()
		defer o.unlockAll()
		for idx := first; idx <= last; idx++ {
			// A short chunk grows to a full one: a later write into the
			// range must not need space (short.go).
			if err := o.growShortLocked(idx); err != nil {
				return err
			}
		}
		return o.allocateLocked(first, last)
	}
	if err := o.growShorts(first, last); err != nil {
		return err
	}
	pos := off &^ (cs - 1)
	end := off + length
	for pos < end {
		if o.table.Load().get(pos>>v.chunkBits) != 0 {
			pos += cs
			continue
		}
		n := min(end-pos, int64(len(v.s.zeros)))
		n = (n + cs - 1) &^ (cs - 1) // whole chunks: zeros never extend the length here
		n = min(n, int64(len(v.s.zeros)))
		done, err := o.writeNewChunks(v.s.zeros[:n], pos, false)
		if err != nil {
			return err
		}
		if done == 0 {
			pos += cs // allocated meanwhile
		}
		pos += int64(done)
	}
	return nil
}

// ExtendTo raises a file object's length to at least end, its table with
// it.
func (o *Object) ExtendTo(end int64) {
	o.ensureChunks(numChunks(end, o.v.chunkSize))
	w := o.window(end-1, 1)
	o.rlock(w.mask)
	o.growSize(end)
	o.runlock(w.mask)
}

// DropChunks unmaps every chunk of inode ino, in batches of unmapFlush
// chunks: each batch's plain extents are zeroed (one device call per run
// of adjacent extents), then its entries deleted in as few transactions as
// badger allows; their space returns to the pool after the next durable
// commit. The object must be gone (nobody can open the inode).
func (v *Volume) DropChunks(ino uint64) error {
	db := v.s.db
	from := ChunkPrefix(v.id, ino)
	for {
		var keys [][]byte
		var freed []extent // freed[ends[i-1]:ends[i]]: what keys[i] frees
		var ends []int
		var saved int64
		err := db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: ChunkPrefix(v.id, ino), PrefetchValues: true})
			defer it.Close()
			// Seek past the batches before: their tombstones are not
			// walked again.
			for it.Seek(from); it.Valid() && len(keys) < unmapFlush; it.Next() {
				var e chunkEntry
				if err := it.Item().Value(func(b []byte) (err error) { e, err = decodeChunkEntry(b); return err }); err != nil {
					return err
				}
				keys = append(keys, it.Item().KeyCopy(nil))
				freed = v.s.appendExtents(freed, e, false, 0)
				ends = append(ends, len(freed))
				saved += v.savedBy(e)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		if err := v.s.zeroRuns(freed); err != nil {
			return err
		}
		done, err := v.s.batchUpdate(len(keys), func(txn *badger.Txn, i int) error { return txn.Delete(keys[i]) })
		v.allocated.Add(-int64(done))
		if done > 0 {
			v.s.alloc.deferFree(v.s.zeroedFrees(freed[:ends[done-1]]))
		}
		if err != nil {
			return fmt.Errorf("%w: commit chunk deletes: %w", ErrIO, err)
		}
		v.saved.Add(-saved)
		from = append(keys[len(keys)-1], 0) // the next key after the batch's last
	}
}

// HasChunks reports whether inode ino has chunk entries, in a transaction
// of its own (chunks are committed outside namespace transactions).
func (v *Volume) HasChunks(ino uint64) bool {
	var has bool
	v.s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: ChunkPrefix(v.id, ino), PrefetchSize: 1})
		defer it.Close()
		it.Rewind()
		has = it.Valid()
		return nil
	})
	return has
}

// HeldBytes is the pool space the chunks of inode ino hold, as read in
// txn (Object.Held for a file that is not loaded).
func (v *Volume) HeldBytes(txn IterTxn, ino uint64) int64 {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: ChunkPrefix(v.id, ino), PrefetchValues: true})
	defer it.Close()
	var n int64
	for it.Rewind(); it.Valid(); it.Next() {
		var e chunkEntry
		if err := it.Item().Value(func(b []byte) (err error) { e, err = decodeChunkEntry(b); return err }); err == nil {
			n += v.chunkSize - v.savedBy(e)
		}
	}
	return n
}

// CountChunks counts the chunk entries of inode ino in txn.
func (v *Volume) CountChunks(txn IterTxn, ino uint64) int64 {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: ChunkPrefix(v.id, ino)})
	defer it.Close()
	var n int64
	for it.Rewind(); it.Valid(); it.Next() {
		n++
	}
	return n
}

// UsedBytes is the space the volume's chunks count against its size (what
// they hold, as an fs volume's statfs reports it: AllocatedBytes).
func (v *Volume) UsedBytes() int64 { return v.AllocatedBytes() }
