package fsns

// The transaction machinery of FS: update runs each namespace change and
// adds it to the open group (see "Transactions" in FS's doc and
// group.go), settle commits the group and waits for what was handed
// over, allocIno reserves inode numbers, and the read helpers namespace
// changes use answer from the attribute cache when they can.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/store"
)

// update runs fn as one change under the namespace mutex and adds its
// writes to the open group (see Transactions in the type's doc). Then it
// reports the records fn wrote
// to the watchers other than ctx's origin (watch.go).
func (f *FS) update(ctx context.Context, fn func(txn kv) error) error {
	ws := f.others(ctx)
	cs, err := f.commit(fn, ws != nil)
	if len(cs) > 0 {
		f.report(ctx, ws, cs)
	}
	return err
}

// commit is update's part under the mutex: fn runs in an ntxn whose
// writes join the open group when it succeeds (group.go). It returns
// the reports when asked for them.
func (f *FS) commit(fn func(txn kv) error, reports bool) ([]Change, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return nil, err
	}
	defer f.releaseDying()
	f.attrMods = f.attrMods[:0]
	f.inoPending = 0
	t := &f.op
	*t = ntxn{f: f, writes: t.writes[:0]}
	err := func() error {
		defer t.done() // also if fn panics (go-fuse recovers request panics)
		return fn(t)
	}()
	if err == nil {
		err = t.err
	}
	if err != nil {
		f.attrs.apply(f.attrMods, false)
		return nil, err
	}
	if f.inoPending != 0 {
		f.inoLimit = f.inoPending
	}
	f.join(t)
	clear(t.writes) // the group holds them now
	f.attrs.apply(f.attrMods, true)
	if reports {
		return changesOf(f.attrMods), nil
	}
	return nil, nil
}

// written runs when badger has written (or failed to write) a commit
// flushGroup handed over: after the one before it (prev), it records a
// failure, then closes done.
func (f *FS) written(prev, done chan struct{}, err error) {
	if prev != nil {
		<-prev // failures are recorded in commit order
	}
	if err != nil && f.commitErr.CompareAndSwap(nil, &err) {
		f.attrs.disable()
		f.v.Store().Log().Error("metadata commit failed after its operation returned: the volume refuses changes until restart",
			"volume", f.v.Ref(), "err", err)
	}
	close(done)
}

// settle commits the open group and waits until every namespace commit
// handed to badger so far has been written, and returns the error of any
// that failed.
func (f *FS) settle() error {
	f.groupMu.Lock()
	f.flushGroupLocked()
	last := f.lastCommit
	f.groupMu.Unlock()
	if last != nil {
		<-last
	}
	return f.failed()
}

// releaseDying drops the pins dropLink took on inodes it deleted in the
// change just made. Until then an Open of such an inode fails
// with ENOENT instead of succeeding on records about to vanish; after,
// the Open's own read (which commits the group first) finds nothing. The
// caller holds f.mu.
func (f *FS) releaseDying() {
	if len(f.dying) == 0 {
		return
	}
	f.objMu.Lock()
	for _, ino := range f.dying {
		delete(f.inUse, ino)
	}
	f.objMu.Unlock()
	f.dying = f.dying[:0]
}

// inoBatch is how many inode numbers one counter record reserves: a
// create writes the counter only when it crosses the reserved range, so
// most creates write three records instead of four. A crash skips the
// rest of the batch (numbers are 64-bit; nothing reuses them).
const inoBatch = 1024

// allocIno returns a fresh inode number, raising the stored counter in txn
// when the reserved range is used up. The counter is always above every
// number in use: it is raised in the same transaction as the first
// inode that needs it. The caller holds f.mu.
func (f *FS) allocIno(txn kv) (uint64, error) {
	if f.nextIno == 0 {
		b, err := txn.Get(inoCounterKey(f.v.ID()))
		if err != nil {
			return 0, fmt.Errorf("inode counter: %w", err)
		}
		if len(b) != 8 {
			return 0, fmt.Errorf("inode counter of %d bytes: %w", len(b), store.ErrIO)
		}
		f.nextIno = binary.BigEndian.Uint64(b)
		f.inoLimit = f.nextIno
	}
	ino := f.nextIno
	f.nextIno++
	if ino < f.inoLimit {
		return ino, nil
	}
	limit := ino + inoBatch
	if err := txn.Set(inoCounterKey(f.v.ID()), binary.BigEndian.AppendUint64(nil, limit)); err != nil {
		return 0, err
	}
	f.inoPending = limit // update makes it f.inoLimit once the change joins the group
	return ino, nil
}

// Reads for namespace changes. In FS.update's transaction (under f.mu)
// the attribute cache holds what badger holds once the open group is
// committed and written (attrcache.go), so dirAttr, recordOf and entryOf answer
// from it when they can and read the transaction otherwise: a create or
// unlink then reads badger once or not at all. rawAttr and lookupTxn
// always read the transaction.

// dirAttr reads ino and checks that it is a directory.
func (f *FS) dirAttr(txn kv, ino uint64) (Attr, error) {
	a, ok := f.attrs.get(ino)
	if !ok {
		var err error
		if a, err = f.rawAttr(txn, ino); err != nil {
			return Attr{}, err
		}
	}
	if !a.IsDir() {
		return Attr{}, fmt.Errorf("inode %d: %w", ino, store.ErrNotDir)
	}
	return a, nil
}

// recordOf is rawAttr from the cache. A regular file's cached entry also
// carries its length and blocks, which rawAttr leaves zero, and its mtime
// may be the newer one of a write not yet persisted (attrCache.refresh):
// writing that back with the record is what persist would do.
func (f *FS) recordOf(txn kv, ino uint64) (Attr, error) {
	if a, ok := f.attrs.get(ino); ok {
		if a.IsRegular() {
			a.Size, a.Blocks = 0, 0
		}
		return a, nil
	}
	return f.rawAttr(txn, ino)
}

// entryOf is lookupTxn from the cache: a cached name, or a name missing
// from a complete directory.
func (f *FS) entryOf(txn kv, parent uint64, name string) (uint64, uint32, error) {
	if a, ok, absent := f.attrs.lookup(parent, name); absent {
		// Unwrapped: a create's check for its new name takes this path,
		// and formatting an error costs more than the rest of the check.
		return 0, 0, store.ErrNotFound
	} else if ok {
		return a.Ino, a.Mode & syscall.S_IFMT, nil
	}
	return f.lookupTxn(txn, parent, name)
}

// lookupTxn resolves name in directory parent to an inode number and type.
func (f *FS) lookupTxn(txn kv, parent uint64, name string) (uint64, uint32, error) {
	b, err := txn.Get(dentryKey(f.v.ID(), parent, name))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, 0, fmt.Errorf("%q in inode %d: %w", name, parent, store.ErrNotFound)
	} else if err != nil {
		return 0, 0, err
	}
	return decodeDentry(b)
}

// setDentry writes name → ino in parent, in FS.update's txn.
func (f *FS) setDentry(txn kv, parent uint64, name string, ino uint64, mode uint32) error {
	f.attrMods = append(f.attrMods, attrChange{a: Attr{Ino: ino}, keep: true, dent: &dentName{parent, name}})
	return txn.Set(dentryKey(f.v.ID(), parent, name), encodeDentry(ino, mode))
}

// deleteDentry removes name from parent, in FS.update's txn.
func (f *FS) deleteDentry(txn kv, parent uint64, name string) error {
	f.attrMods = append(f.attrMods, attrChange{dent: &dentName{parent, name}})
	return txn.Delete(dentryKey(f.v.ID(), parent, name))
}
