package store

import (
	"context"
	"fmt"
	"sort"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// FsckReport is the result of checking one volume's metadata.
type FsckReport struct {
	Volume   string   `json:"volume"`
	Kind     string   `json:"kind"`
	Inodes   int      `json:"inodes"`
	Dirs     int      `json:"dirs"`
	Files    int      `json:"files"`
	Dentries int      `json:"dentries"`
	Chunks   int      `json:"chunks"`
	Short    int      `json:"short"`   // short plain chunks (short.go)
	Orphans  int      `json:"orphans"` // unlinked inodes still open (or awaiting purge)
	Pending  int      `json:"pending"` // pending records of unflushed copy-on-write rewrites (pending.go)
	Patches  int      `json:"patches"` // sectors of transformed chunks stored on their own (patch.go)
	Problems []string `json:"problems"`
}

// Clean reports whether fsck found nothing wrong.
func (r FsckReport) Clean() bool { return len(r.Problems) == 0 }

const maxProblems = 100

// Problemf adds a problem to the report (at most maxProblems are listed).
func (r *FsckReport) Problemf(format string, a ...any) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
	} else if len(r.Problems) == maxProblems {
		r.Problems = append(r.Problems, "more problems not listed")
	}
}

// Fsck checks a volume's metadata from one consistent snapshot: every
// directory entry points at an inode of a matching type, link counts match
// the entries (directories: 2 + subdirectories), every directory's parent
// link is right, every inode is reachable or an orphan, every chunk belongs
// to an inode that can hold data, lies inside the pool, and shares its
// space with no other chunk of any volume. It changes nothing.
func (s *Store) Fsck(ctx context.Context, tenant, name string) (FsckReport, error) {
	v, err := s.Volume(tenant, name)
	if err != nil {
		return FsckReport{}, err
	}
	r := FsckReport{Volume: v.ref, Kind: v.Kind(), Problems: []string{}}
	if v.ns != nil {
		v.ns.Barrier()
	}
	before := v.allocated.Load()
	var unallocated []string
	err = s.db.View(func(txn *badger.Txn) error {
		var err error
		if unallocated, err = s.fsckChunks(txn, v, &r); err != nil {
			return err
		}
		s.fsckPending(txn, v, &r)
		if v.ns != nil {
			return v.ns.Fsck(txn, &r)
		}
		return nil
	})
	// The maps against the store's derived state: the chunk count loaded
	// at open and kept since, and the allocator. A map that lost entries
	// (or gained them) behind the store's back shows here. Only when the
	// volume did not change during the scan, since IO moves both.
	if after := v.allocated.Load(); err == nil && before == after {
		if int64(r.Chunks) != after {
			r.Problemf("the chunk maps hold %d chunks but the store counted %d since it opened: map entries were lost or added behind its back", r.Chunks, after)
		}
		for _, p := range unallocated {
			r.Problemf("%s", p)
		}
	}
	return r, err
}

type ownedExtent struct {
	off, length int64
	vol, ino    uint64
	idx         uint64
}

// fsckChunks checks chunk placement: in the pool, no overlaps with any
// chunk of the store, and (block volumes) only inode 0 within the size.
// It returns, apart, the chunks whose space the allocator has free (a
// problem only if the volume did not change meanwhile: see Fsck).
func (s *Store) fsckChunks(txn *badger.Txn, v *Volume, r *FsckReport) ([]string, error) {
	var unallocated []string
	var all []ownedExtent
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixChunk}, PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		vol, ino, idx, ok := ParseChunkKey(it.Item().Key())
		if !ok {
			if len(r.Problems) < maxProblems {
				r.Problemf("malformed chunk key %x", it.Item().Key())
			}
			continue
		}
		var e chunkEntry
		if err := it.Item().Value(func(b []byte) (err error) { e, err = decodeChunkEntry(b); return err }); err != nil {
			if vol == v.id {
				r.Problemf("inode %d chunk %d: %v", ino, idx, err)
			}
			continue
		}
		all = append(all, ownedExtent{e.devOff, int64(e.storedLen), vol, ino, idx})
		for _, p := range e.patches {
			all = append(all, ownedExtent{p.devOff, unitSize, vol, ino, idx})
		}
		if vol != v.id {
			continue
		}
		r.Chunks++
		r.Patches += len(e.patches)
		for _, p := range e.patches {
			switch {
			case int64(p.sector)*filter.SectorSize >= v.chunkSize:
				r.Problemf("inode %d chunk %d: patch of sector %d past the chunk", ino, idx, p.sector)
			case !s.alloc.contains(p.devOff, unitSize):
				r.Problemf("inode %d chunk %d: patch of sector %d points outside the pool (offset %d)", ino, idx, p.sector, p.devOff)
			case !s.alloc.inUse(p.devOff, unitSize) && len(unallocated) < maxProblems:
				unallocated = append(unallocated, fmt.Sprintf("inode %d chunk %d: patch of sector %d points at space the allocator has free (offset %d)",
					ino, idx, p.sector, p.devOff))
			}
		}
		if e.short() {
			r.Short++
		}
		switch {
		case !s.alloc.contains(e.devOff, int64(e.storedLen)):
			r.Problemf("inode %d chunk %d points outside the pool (offset %d length %d)", ino, idx, e.devOff, e.storedLen)
		case !s.alloc.inUse(e.devOff, int64(e.storedLen)) && len(unallocated) < maxProblems:
			unallocated = append(unallocated, fmt.Sprintf("inode %d chunk %d points at space the allocator has free (offset %d length %d)",
				ino, idx, e.devOff, e.storedLen))
		case v.obj0 != nil && ino != 0:
			r.Problemf("block volume has a chunk of inode %d", ino)
		case v.obj0 != nil && int64(idx) >= numChunks(v.Size(), v.chunkSize):
			r.Problemf("chunk %d past the end of the volume", idx)
		case e.short() && int64(e.storedLen) >= v.chunkSize:
			r.Problemf("inode %d chunk %d: short chunk of %d bytes, not shorter than the chunk size %d", ino, idx, e.storedLen, v.chunkSize)
		case !e.transformed() && !e.short() && int64(e.storedLen) != v.chunkSize:
			r.Problemf("inode %d chunk %d: plain chunk of %d bytes, want the chunk size %d", ino, idx, e.storedLen, v.chunkSize)
		case e.transformed():
			if _, err := filter.ParseRecord(e.record); err != nil {
				r.Problemf("inode %d chunk %d: filter record: %v", ino, idx, err)
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].off < all[j].off })
	for i := 1; i < len(all); i++ {
		a, b := all[i-1], all[i]
		if b.off < a.off+a.length && (a.vol == v.id || b.vol == v.id) {
			r.Problemf("chunk space shared: volume %d inode %d chunk %d and volume %d inode %d chunk %d at offset %d",
				a.vol, a.ino, a.idx, b.vol, b.ino, b.idx, b.off)
		}
	}
	return unallocated, nil
}
