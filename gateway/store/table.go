package store

import (
	"math/bits"
	"sync/atomic"
)

// chunkTable is one object's in-memory chunk map: the device offset of each
// chunk, 0 for a hole, with markTransformed set for a transformed chunk
// (device offsets are multiples of the allocation unit, so bit 0 is free).
// A full plain chunk's entry is its offset as it is; a short one's has its
// length in units in the low bits (short.go); a transformed chunk's stored
// length and filter record stay in its badger map entry, read when the
// chunk is (see transformed.go), so memory stays 8 bytes per chunk either
// way. It is two-level so that memory follows what is
// written, not what is provisioned: a leaf of up to leafChunks entries
// (32 KiB) exists only once one of its chunks is allocated, and the top
// level costs 8 bytes per leaf span (256 MiB of volume at 64 KiB chunks).
// A table of fewer than leafChunks chunks (a small file) has one leaf sized
// to the next power of two, so a 10 KiB file costs a few bytes, not 32 KiB.
//
// Reads are two atomic loads. Writers hold the chunk's stripe write lock;
// leaves are installed with compare-and-swap because two stripes share one.
// Indexes at or past n read as holes.
type chunkTable struct {
	n   int64 // chunks
	top []atomic.Pointer[leaf]
}

// markTransformed flags a table entry whose chunk is transformed: its bytes
// are undone from the filter record in its map entry, never read in place.
const markTransformed = 1

// A short plain chunk (short.go) keeps its stored length in units in bits
// 1..11 of its entry (at most 1023 units: chunks are at most 4 MiB, 1024
// units, and a short chunk is shorter). A full plain chunk's entry is its
// device offset alone, so the hot path's arithmetic is unchanged.
const (
	shortShift = 1
	shortMask  = (unitSize - 1) &^ markTransformed
)

// entryAddr is the device offset in a table entry.
func entryAddr(dev int64) int64 { return dev &^ (unitSize - 1) }

// isShort reports whether a table entry is a short plain chunk's.
func isShort(dev int64) bool { return dev&shortMask != 0 }

// shortLen is the stored length of a short plain chunk's table entry.
func shortLen(dev int64) int64 { return (dev & shortMask) >> shortShift * unitSize }

const leafBits = 12
const leafChunks = 1 << leafBits

type leaf struct{ e []atomic.Int64 }

func newChunkTable(n int64) *chunkTable {
	return &chunkTable{n: n, top: make([]atomic.Pointer[leaf], (n+leafChunks-1)>>leafBits)}
}

// leafLen is the length of the leaves of a table of n chunks.
func leafLen(n int64) int {
	if n >= leafChunks {
		return leafChunks
	}
	return 1 << bits.Len64(uint64(max(n, 2)-1)) // next power of two ≥ n
}

func (t *chunkTable) get(idx int64) int64 {
	i := idx >> leafBits
	if idx < 0 || i >= int64(len(t.top)) {
		return 0
	}
	l := t.top[i].Load()
	if l == nil {
		return 0
	}
	j := idx & (leafChunks - 1)
	if j >= int64(len(l.e)) {
		return 0
	}
	return l.e[j].Load()
}

// set records chunk idx at device offset off (0: a hole). idx must be
// below t.n.
func (t *chunkTable) set(idx, off int64) {
	slot := &t.top[idx>>leafBits]
	l := slot.Load()
	if l == nil {
		if off == 0 {
			return
		}
		slot.CompareAndSwap(nil, &leaf{e: make([]atomic.Int64, leafLen(t.n))})
		l = slot.Load()
	}
	l.e[idx&(leafChunks-1)].Store(off)
}

// resized returns a table of n chunks holding this one's entries below n.
// The caller holds every stripe's write lock, so no entry changes meanwhile.
// Full leaves are shared; a small single leaf is copied into a larger one.
func (t *chunkTable) resized(n int64) *chunkTable {
	nt := newChunkTable(n)
	for i := range nt.top {
		if i >= len(t.top) {
			break
		}
		l := t.top[i].Load()
		if l == nil {
			continue
		}
		if want := leafLen(n); len(l.e) != want {
			nl := &leaf{e: make([]atomic.Int64, want)}
			for j := range min(len(l.e), want) {
				nl.e[j].Store(l.e[j].Load())
			}
			l = nl
		}
		nt.top[i].Store(l)
	}
	// Entries at or past n in a shared last leaf stay in the leaf but read
	// as holes only if cleared; shrinking callers clear them first.
	return nt
}
