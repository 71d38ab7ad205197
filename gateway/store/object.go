package store

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// Object is the data of one inode: its chunk table, the stripe locks that
// guard it, and its length. A block volume is one object (inode 0) whose
// length is the volume size; an fs volume has one object per regular file
// that is in use, loaded from the chunk map when first opened.
//
// The engine tells the two apart by grows only, never by inode number or
// volume kind: a growing object's length follows its writes up to
// MaxFileSize, and its data changes are reported to the volume's
// namespace (namespace.go).
type Object struct {
	v     *Volume
	ino   uint64
	grows bool // a file: writes extend the length and the table
	// size is the volume size (inode 0) or the file length. Files: it
	// changes only under at least one stripe lock (writes extend it under
	// their window's read locks with a CAS; truncate holds every stripe).
	size    atomic.Int64
	table   atomic.Pointer[chunkTable]
	stripes [numStripes]sync.RWMutex
	deleted bool // set under all stripes' write locks

	// Files only.
	mapped atomic.Int64 // allocated chunks
	// saved is what o's chunks take less than full plain chunks (short
	// and transformed ones; Volume.saved for one object).
	saved atomic.Int64
	mtime atomic.Int64 // last data change (Unix ns), 0 if none since load
	dirty atomic.Bool  // length or mtime changed since last persisted
	// lenDirty: the length changed since last persisted (a part of
	// dirty): fdatasync persists only then.
	lenDirty atomic.Bool
	// persistMu serialises FS.persist: a persist that finds nothing dirty
	// (an fsync, a later Release) returns only after one in flight has
	// joined the group, so what it covers is in that group.
	persistMu sync.Mutex
	wrote     atomic.Bool // chunks may have been added since load (FS.willWrite)
	// born is the store's flush count when o was created empty (a new
	// file), -1 for an object loaded from a chunk map (short.go).
	born int64
}

const numStripes = 64

// newObject returns a fixed-length object: a block volume's data.
func newObject(v *Volume, ino uint64, size, chunks int64) *Object {
	o := &Object{v: v, ino: ino}
	o.size.Store(size)
	o.table.Store(newChunkTable(chunks))
	return o
}

// newFileObject returns a growing object: a file's data, of length size
// with a table of chunks entries to begin with.
func newFileObject(v *Volume, ino uint64, size, chunks int64) *Object {
	o := newObject(v, ino, size, chunks)
	o.grows = true
	o.born = -1
	return o
}

// window is a run of at most numStripes consecutive chunks with their
// stripes locked. Locking whole windows in ascending stripe order keeps
// multi-chunk requests deadlock-free.
type window struct {
	first, n int64 // chunk indexes [first, first+n)
	mask     uint64
}

func (o *Object) window(off, length int64) window {
	first := off >> o.v.chunkBits
	last := (off + max(length, 1) - 1) >> o.v.chunkBits
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

func (o *Object) rlock(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		o.stripes[bits.TrailingZeros64(m)].RLock()
	}
}

func (o *Object) runlock(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		o.stripes[bits.TrailingZeros64(m)].RUnlock()
	}
}

func (o *Object) lock(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		o.stripes[bits.TrailingZeros64(m)].Lock()
	}
}

func (o *Object) unlock(mask uint64) {
	for m := mask; m != 0; m &= m - 1 {
		o.stripes[bits.TrailingZeros64(m)].Unlock()
	}
}

func (o *Object) lockAll()   { o.lock(^uint64(0)) }
func (o *Object) unlockAll() { o.unlock(^uint64(0)) }

// ensureChunks makes the table hold at least n chunks (files grow their
// table as they grow; block tables are sized by the volume). It takes every
// stripe, so callers must hold none.
func (o *Object) ensureChunks(n int64) {
	if o.table.Load().n >= n {
		return
	}
	o.lockAll()
	defer o.unlockAll()
	t := o.table.Load()
	if t.n >= n {
		return
	}
	// Grow geometrically so that appending costs amortised O(1).
	o.table.Store(t.resized(max(n, t.n+t.n/2)))
}

// growSize raises a growing object's length to at least end (the caller
// holds a stripe lock covering end-1); a fixed-length one keeps its length.
func (o *Object) growSize(end int64) {
	if !o.grows {
		return
	}
	for {
		cur := o.size.Load()
		if end <= cur {
			return
		}
		if o.size.CompareAndSwap(cur, end) {
			o.lenDirty.Store(true)
			o.dirty.Store(true)
			return
		}
	}
}

// Touch records a data change of a file now (its namespace persists the
// mtime); a fixed-length object has none to record.
func (o *Object) Touch() {
	if !o.grows {
		return
	}
	o.mtime.Store(time.Now().UnixNano())
	o.dirty.Store(true)
}

// The object as its namespace sees it: the inode, the live length and
// chunk count, and the marks of data changes the namespace persists.

// Ino is the inode whose data o is.
func (o *Object) Ino() uint64 { return o.ino }

// Size is o's length now.
func (o *Object) Size() int64 { return o.size.Load() }

// Mapped is the number of chunks o holds.
func (o *Object) Mapped() int64 { return o.mapped.Load() }

// Held is the pool space o's chunks hold (what st_blocks reports).
func (o *Object) Held() int64 { return o.mapped.Load()*o.v.chunkSize - o.saved.Load() }

// Mtime is o's last data change (Unix ns), 0 if none since it was loaded
// or ClearMtime.
func (o *Object) Mtime() int64 { return o.mtime.Load() }

// ClearMtime forgets o's last data change (an explicit mtime wins over it).
func (o *Object) ClearMtime() { o.mtime.Store(0) }

// TakeDirty reports whether o's length or mtime changed since the last
// TakeDirty, and clears the marks (the caller persists both).
func (o *Object) TakeDirty() bool {
	l := o.lenDirty.Swap(false)
	return o.dirty.Swap(false) || l
}

// SetDirty marks o's length and mtime changed (a persist that failed).
func (o *Object) SetDirty() {
	o.lenDirty.Store(true)
	o.dirty.Store(true)
}

// LengthDirty reports whether o's length changed since the last
// TakeDirty: fdatasync persists only then (the mtime can wait).
func (o *Object) LengthDirty() bool { return o.lenDirty.Load() }

// FirstWrite reports true once: at the first change to o's chunks since it
// was loaded (the namespace's willWrite).
func (o *Object) FirstWrite() bool { return !o.wrote.Load() && !o.wrote.Swap(true) }

// LockPersist and UnlockPersist serialise the namespace's persisting of
// o's length and mtime: a persist that finds nothing dirty returns only
// after one in flight has finished.
func (o *Object) LockPersist()   { o.persistMu.Lock() }
func (o *Object) UnlockPersist() { o.persistMu.Unlock() }
