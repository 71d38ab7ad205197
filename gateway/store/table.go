package store

import "sync/atomic"

// chunkTable is a volume's in-memory chunk map for inode 0: the device
// offset of each chunk, 0 for a hole. It is two-level so that memory follows
// what is written, not what is provisioned: a leaf of leafChunks entries
// (32 KiB) exists only once one of its chunks is allocated, and the top
// level costs 8 bytes per leaf span (256 MiB of volume at 64 KiB chunks).
//
// Reads are two atomic loads. Writers hold the chunk's stripe write lock;
// leaves are installed with compare-and-swap because two stripes share one.
type chunkTable struct {
	n   int64 // chunks
	top []atomic.Pointer[leaf]
}

const leafBits = 12
const leafChunks = 1 << leafBits

type leaf [leafChunks]atomic.Int64

func newChunkTable(n int64) *chunkTable {
	return &chunkTable{n: n, top: make([]atomic.Pointer[leaf], (n+leafChunks-1)>>leafBits)}
}

func (t *chunkTable) get(idx int64) int64 {
	l := t.top[idx>>leafBits].Load()
	if l == nil {
		return 0
	}
	return l[idx&(leafChunks-1)].Load()
}

func (t *chunkTable) set(idx, off int64) {
	slot := &t.top[idx>>leafBits]
	l := slot.Load()
	if l == nil {
		if off == 0 {
			return
		}
		slot.CompareAndSwap(nil, new(leaf))
		l = slot.Load()
	}
	l[idx&(leafChunks-1)].Store(off)
}

// each calls fn for every allocated chunk.
func (t *chunkTable) each(fn func(idx, off int64)) {
	for i := range t.top {
		l := t.top[i].Load()
		if l == nil {
			continue
		}
		for j := range l {
			if off := l[j].Load(); off != 0 {
				fn(int64(i)<<leafBits+int64(j), off)
			}
		}
	}
}

// grown returns a table of n chunks sharing this one's leaves. The caller
// holds every stripe's write lock, so no leaf is installed meanwhile.
func (t *chunkTable) grown(n int64) *chunkTable {
	nt := newChunkTable(n)
	for i := range t.top {
		nt.top[i].Store(t.top[i].Load())
	}
	return nt
}
