package store

import (
	"errors"
	"fmt"
	"sort"

	"github.com/dgraph-io/badger/v4"
)

// Big ranges (fallocate, punch, truncate and delete of GiB-scale files) cost
// what their extents cost, not what their chunks cost: the chunk map keeps
// one key per chunk, but the device work is one call per contiguous run of
// extents (zeroRuns), the keys go in as few badger transactions as badger
// allows (batchUpdate), and an fallocate on a device whose discards read
// back as zeros writes nothing (free space already reads as zeros).

// unmapFlush is how many unmapped chunks a range operation collects before
// it commits them (bounds its memory; 65536 chunks is 4 GiB of 64 KiB
// chunks).
const unmapFlush = 1 << 16

// batchUpdate makes n key changes, op(txn, i) making change i, in as few
// transactions as badger allows: a transaction that grows too big is
// committed and the rest go on in a new one. It returns how many changes
// were committed (all of them when err is nil). Each transaction is
// atomic, the whole is not: callers do their device work first, so that
// any committed prefix is safe after a crash.
func (s *Store) batchUpdate(n int, op func(txn *badger.Txn, i int) error) (int, error) {
	txn := s.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	done := 0
	for i := 0; i < n; i++ {
		err := op(txn, i)
		if errors.Is(err, badger.ErrTxnTooBig) {
			if err = txn.Commit(); err != nil {
				return done, err
			}
			done = i
			txn = s.db.NewTransaction(true)
			err = op(txn, i)
		}
		if err != nil {
			return done, err
		}
	}
	if err := txn.Commit(); err != nil {
		return done, err
	}
	return n, nil
}

// zeroRuns makes the extents read as zeros, one device call per run of
// adjacent extents (a GiB file's plain chunks are a few runs). It skips
// extents marked zero: those are zeroed when their free is durable.
func (s *Store) zeroRuns(exts []extent) error {
	var runs []extent
	for _, e := range exts {
		if !e.zero && e.length > 0 {
			runs = append(runs, e)
		}
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].off < runs[j].off })
	for i := 0; i < len(runs); {
		start, end := runs[i].off, runs[i].off+runs[i].length
		for i++; i < len(runs) && runs[i].off == end; i++ {
			end += runs[i].length
		}
		if err := s.zeroExtent(start, end-start); err != nil {
			return err
		}
	}
	return nil
}

// unmapBatch is whole chunks a range operation unmaps: chunk unmapped[i]
// frees freed[ends[i-1]:ends[i]] (a patched chunk frees its patches'
// units too).
type unmapBatch struct {
	unmapped []int64
	freed    []extent
	ends     []int
	saved    int64
}

// add records chunk idx, whose extents were just appended to b.freed.
func (b *unmapBatch) add(idx int64) {
	b.unmapped = append(b.unmapped, idx)
	b.ends = append(b.ends, len(b.freed))
}

// freedBy is what the first n chunks of b free.
func (b *unmapBatch) freedBy(n int) []extent {
	if n == 0 {
		return nil
	}
	return b.freed[:b.ends[n-1]]
}

// commitUnmap zeroes the batch's plain extents (a crash before the commit
// leaves entries pointing at zeros, which is what a discard promises),
// deletes the batch's entries, then drops them from the table and queues
// their space for reuse after the next durable commit. The caller holds
// the stripes of every chunk in the batch.
func (o *Object) commitUnmap(b *unmapBatch) error {
	v := o.v
	if len(b.unmapped) == 0 {
		return nil
	}
	if err := v.s.zeroRuns(b.freed); err != nil {
		return err
	}
	done, err := v.s.batchUpdate(len(b.unmapped), func(txn *badger.Txn, i int) error {
		return txn.Delete(chunkKey(v.id, o.ino, uint64(b.unmapped[i])))
	})
	t := o.table.Load()
	for _, idx := range b.unmapped[:done] {
		v.s.entries.drop(v.id, o.ino, idx)
		t.set(idx, 0)
		o.invalidate(idx, 1)
	}
	o.mapped.Add(-int64(done))
	v.allocated.Add(-int64(done))
	if done == len(b.unmapped) {
		v.saved.Add(-b.saved)
		o.saved.Add(-b.saved)
	}
	v.s.alloc.deferFree(v.s.zeroedFrees(b.freedBy(done)))
	*b = unmapBatch{}
	if err != nil {
		v.s.log.Error("chunk map commit failed", "volume", v.ref, "inode", o.ino, "err", err)
		return fmt.Errorf("%w: commit unmap: %w", ErrIO, err)
	}
	return nil
}

// discardLocked unmaps [off, off+length) like Discard with every stripe
// held: whole chunks of all its windows in one batch.
func (o *Object) discardLocked(off, length int64) error {
	var b unmapBatch
	for length > 0 {
		w := o.window(off, length)
		n, err := o.unmapWindow(w, off, length, &b)
		if err == nil && len(b.unmapped) >= unmapFlush {
			err = o.commitUnmap(&b)
		}
		if err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return o.commitUnmap(&b)
}

// allocateLocked maps every hole of chunks [first, last] to pool space
// without writing it (the device's discards read back as zeros, and free
// space is discarded), with every stripe held: the holes' chunks in as few
// extents as the allocator allows, their entries in as few transactions as
// badger allows.
func (o *Object) allocateLocked(first, last int64) error {
	v := o.v
	if o.deleted {
		return fmt.Errorf("volume %s: inode %d: %w", v.ref, o.ino, ErrNotFound)
	}
	t := o.table.Load()
	var pieces []piece
	var k int64
	undo := func(err error) error {
		v.freePieces(pieces)
		v.allocated.Add(-k)
		return err
	}
	for idx := first; idx <= last; {
		if t.get(idx) != 0 {
			idx++
			continue
		}
		end := idx
		for end <= last && t.get(end) == 0 {
			end++
		}
		if err := v.reserve(end - idx); err != nil {
			return undo(err)
		}
		k += end - idx
		ps, err := v.allocRun(idx, end-idx)
		if err != nil {
			return undo(err)
		}
		pieces = append(pieces, ps...)
		idx = end
	}
	if k == 0 {
		return nil
	}
	committed, err := o.commitPieces(pieces)
	v.allocated.Add(committed - k)
	return err
}
