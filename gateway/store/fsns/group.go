package fsns

// Group commit of namespace changes. A badger commit costs the gateway
// more than the change itself: the hand-off wakes badger's writer, its
// watermark goroutines and a callback goroutine, on the same two cores as
// the client and the kernel (a FUSE unlink ran at ~0.65x of go-fuse's
// loopback with one commit per change, and at ~1.0x with one commit per
// 16). So FS.update does not commit each change: it runs the change in an
// ntxn, whose writes join the volume's open group, and the group is
// committed as one badger transaction when
//
//   - a change is about to scan a prefix the group wrote under
//     (ntxn.NewIterator): a scan cannot overlay the group's writes, as a
//     change's point reads do (ntxn.Get);
//   - anything else is about to read the namespace from badger, or to
//     commit chunks of a file (FS.barrier, called by FS.view and by the
//     data path): what it reads or writes must follow the changes it may
//     depend on, in badger and in its log;
//   - fsync or a store flush asks (FS.settle, Store.Flush);
//   - it holds groupMaxChanges changes, or as many records or bytes as
//     groupLimits allows;
//   - groupDelay passed since its first change (a timer): this bounds what
//     a SIGKILL can lose of acknowledged changes that no fsync covered.
//
// Every change stays atomic: a change's writes join the group only when
// it succeeded, and a group is committed whole. Changes are applied to the
// attribute cache when they join the group, and every reader of badger
// commits the group first, so nothing can observe the difference except
// a crash: a SIGKILL loses at most the last groupDelay of changes that no
// fsync covered (it lost the last few microseconds before).

import (
	"bytes"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/store"
)

const (
	groupMaxChanges = 64
	groupMaxBytes   = 1 << 20
	groupDelay      = time.Millisecond
)

// groupLimits returns how many records and bytes a group may hold: half
// of what badger takes in one transaction (its own size estimate adds a
// little per entry), and at most groupMaxBytes. A change alone must fit
// too; one that does not fails as a too-big transaction did before
// groups.
func (f *FS) groupLimits() (entries, bytes int) {
	db := f.v.Store().DB()
	return int(db.MaxBatchCount() / 2), int(min(groupMaxBytes, db.MaxBatchSize()/2))
}

// kv is what namespace code reads and writes through: a read-only view
// of badger (FS.view) or a change's ntxn (FS.update). Get returns a copy
// of the value, or badger.ErrKeyNotFound.
type kv interface {
	Get(key []byte) ([]byte, error)
	Set(key, val []byte) error
	Delete(key []byte) error
	NewIterator(opt badger.IteratorOptions) *badger.Iterator
}

// viewTxn is a badger transaction as a kv.
type viewTxn struct{ *badger.Txn }

func (v viewTxn) Get(key []byte) ([]byte, error) {
	item, err := v.Txn.Get(key)
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// kvWrite is one write of a change: a Set, or a Delete (del).
type kvWrite struct {
	key, val []byte
	del      bool
}

// ntxn is the transaction one namespace change runs in (under FS.mu).
// Writes are collected for the group. Get answers from the change's own
// writes, then the open group's, then badger (through a transaction
// begun at the first read, which waits for every commit handed over
// before it). An iterator cannot overlay: one over a prefix the open
// group wrote under commits the group first, and it reads from a
// badger transaction that holds the change's own writes so far. The
// badger transaction is never committed, so it never conflicts. Close
// every iterator before the next read: a read may begin the transaction
// again (see reader), and badger panics on discarding a transaction with
// an open iterator.
type ntxn struct {
	f      *FS
	rd     *badger.Txn
	rdGen  uint64 // f.flushGen when rd began
	writes []kvWrite
	size   int
	err    error // a write the reader refused
}

// reader returns the change's badger transaction, after committing the
// open group when fresh says the transaction must see it. A transaction
// begun before a group was handed over (here, or by a barrier in another
// goroutine: barriers do not wait for the running change) cannot see that
// group, whose writes the overlay no longer holds: it is begun again.
// The caller holds f.groupMu.
func (t *ntxn) reader(fresh bool) *badger.Txn {
	if fresh {
		t.f.flushGroupLocked()
	}
	if t.rd != nil && t.rdGen != t.f.flushGen {
		t.done()
	}
	if t.rd == nil {
		t.rd, t.rdGen = t.f.v.Store().DB().NewTransaction(true), t.f.flushGen
		for _, w := range t.writes {
			t.mirror(w)
		}
	}
	return t.rd
}

func (t *ntxn) mirror(w kvWrite) {
	var err error
	if w.del {
		err = t.rd.Delete(w.key)
	} else {
		err = t.rd.Set(w.key, w.val)
	}
	if err != nil && t.err == nil {
		t.err = err
	}
}

func (t *ntxn) Get(key []byte) ([]byte, error) {
	for i := len(t.writes) - 1; i >= 0; i-- {
		if w := t.writes[i]; bytes.Equal(w.key, key) {
			return w.value()
		}
	}
	f := t.f
	f.groupMu.Lock()
	if i, ok := f.groupIdx[string(key)]; ok {
		w := f.group[i]
		f.groupMu.Unlock()
		return w.value()
	}
	rd := t.reader(false)
	f.groupMu.Unlock()
	return viewTxn{rd}.Get(key)
}

func (w kvWrite) value() ([]byte, error) {
	if w.del {
		return nil, badger.ErrKeyNotFound
	}
	return bytes.Clone(w.val), nil
}

func (t *ntxn) NewIterator(opt badger.IteratorOptions) *badger.Iterator {
	t.f.groupMu.Lock()
	rd := t.reader(t.f.groupWroteUnder(opt.Prefix))
	t.f.groupMu.Unlock()
	return rd.NewIterator(opt)
}

func (t *ntxn) Set(key, val []byte) error { return t.write(kvWrite{key: key, val: val}) }

func (t *ntxn) Delete(key []byte) error { return t.write(kvWrite{key: key, del: true}) }

func (t *ntxn) write(w kvWrite) error {
	if len(w.key) == 0 {
		return fmt.Errorf("namespace write with an empty key: %w", store.ErrInvalid)
	}
	t.writes = append(t.writes, w)
	t.size += len(w.key) + len(w.val)
	if maxEntries, maxBytes := t.f.groupLimits(); len(t.writes) > maxEntries || t.size > maxBytes {
		return fmt.Errorf("namespace change of %d records, %d bytes: %w", len(t.writes), t.size, badger.ErrTxnTooBig)
	}
	if t.rd != nil {
		t.mirror(w)
	}
	return t.err
}

// done ends the change's reads.
func (t *ntxn) done() {
	if t.rd != nil {
		t.rd.Discard()
		t.rd = nil
	}
}

// join adds a succeeded change's writes to the group, committing the group
// first if they would not fit, and after if it is full.
func (f *FS) join(t *ntxn) {
	if len(t.writes) == 0 {
		return
	}
	maxEntries, maxBytes := f.groupLimits()
	f.groupMu.Lock()
	defer f.groupMu.Unlock()
	if len(f.group)+len(t.writes) > maxEntries || f.groupSize+t.size > maxBytes {
		f.flushGroupLocked()
	}
	if len(f.group) == 0 {
		f.groupSince = time.Now()
		if f.groupTimer == nil {
			f.groupTimer = time.AfterFunc(groupDelay, f.groupTimeout)
		} else {
			f.groupTimer.Reset(groupDelay)
		}
		f.pending.Store(true)
	}
	for _, w := range t.writes {
		f.groupIdx[string(w.key)] = len(f.group)
		f.group = append(f.group, w)
	}
	f.groupSize += t.size
	f.groupChanges++
	if f.groupChanges >= groupMaxChanges || len(f.group) >= maxEntries || f.groupSize >= maxBytes {
		f.flushGroupLocked()
	}
}

// groupTimeout commits the group groupDelay after its first change.
func (f *FS) groupTimeout() {
	f.groupMu.Lock()
	defer f.groupMu.Unlock()
	if len(f.group) == 0 {
		return
	}
	if wait := groupDelay - time.Since(f.groupSince); wait > 0 {
		f.groupTimer.Reset(wait) // a newer group than the one that set the timer
		return
	}
	f.flushGroupLocked()
}

// flushGroup hands the open group to badger as one transaction, without
// waiting for the write (see Transactions in FS's doc), and reports
// whether there was one.
func (f *FS) flushGroup() bool {
	f.groupMu.Lock()
	defer f.groupMu.Unlock()
	return f.flushGroupLocked()
}

func (f *FS) flushGroupLocked() bool {
	if len(f.group) == 0 {
		return false
	}
	txn := f.v.Store().DB().NewTransaction(true)
	var err error
	for _, w := range f.group {
		if w.del {
			err = txn.Delete(w.key)
		} else {
			err = txn.Set(w.key, w.val)
		}
		if err != nil {
			break
		}
	}
	prev, done := f.lastCommit, make(chan struct{})
	f.lastCommit = done
	if err != nil {
		// Unreachable within groupLimits, but the changes were
		// acknowledged: fail like a commit that failed after its
		// operations returned.
		txn.Discard()
		go f.written(prev, done, fmt.Errorf("group of %d namespace changes: %w", f.groupChanges, err))
	} else {
		txn.CommitWith(func(err error) { f.written(prev, done, err) })
	}
	clear(f.group) // badger holds its own references to keys and values
	clear(f.groupIdx)
	f.group, f.groupSize, f.groupChanges = f.group[:0], 0, 0
	f.flushGen++
	f.pending.Store(false)
	return true
}

// groupWroteUnder reports whether the open group wrote a key starting
// with prefix (an iterator over it could not see those writes). The
// caller holds f.groupMu.
func (f *FS) groupWroteUnder(prefix []byte) bool {
	for _, w := range f.group {
		if bytes.HasPrefix(w.key, prefix) {
			return true
		}
	}
	return false
}

// barrier commits the open group, if any, so that what the caller reads
// from badger (or commits to it) comes after every change acknowledged so
// far. Cheap when there is no group.
func (f *FS) barrier() {
	if f.pending.Load() {
		f.flushGroup()
	}
}

// view is badger's View after a barrier: every read of namespace records
// outside FS.update goes through it.
func (f *FS) view(fn func(txn kv) error) error {
	f.barrier()
	return f.v.Store().DB().View(func(txn *badger.Txn) error { return fn(viewTxn{txn}) })
}

// What a fresh inode has never had. An unlink of the last link of an
// inode created since the store opened, never written and without xattrs
// (the files a build or a mail spool makes and removes), needs no read:
// without this it would look for the inode's chunks and xattrs, and a read
// in a change commits the open group.
const (
	freshNoChunks = 1 << iota
	freshNoXattrs
)

// maxFresh bounds FS.fresh; past it, new inodes are not tracked (their
// unlink reads, as after a restart).
const maxFresh = 1 << 16

// markFresh records that ino was just created, in a change under f.mu.
func (f *FS) markFresh(ino uint64) {
	f.objMu.Lock()
	if len(f.fresh) < maxFresh {
		f.fresh[ino] = freshNoChunks | freshNoXattrs
	}
	f.objMu.Unlock()
}

// spoilFresh records that ino may now have what bit says it never had. It
// runs before the chunk or xattr can be written.
func (f *FS) spoilFresh(ino uint64, bit uint8) {
	f.objMu.Lock()
	if b, ok := f.fresh[ino]; ok {
		if b &^= bit; b == 0 {
			delete(f.fresh, ino)
		} else {
			f.fresh[ino] = b
		}
	}
	f.objMu.Unlock()
}

// freshness returns what ino has never had (0: unknown).
func (f *FS) freshness(ino uint64) uint8 {
	f.objMu.Lock()
	defer f.objMu.Unlock()
	return f.fresh[ino]
}

// forgetFresh drops a deleted inode.
func (f *FS) forgetFresh(ino uint64) {
	f.objMu.Lock()
	delete(f.fresh, ino)
	f.objMu.Unlock()
}

// willWrite runs before a write, allocation or discard of a file's chunks:
// the open group goes to badger first (a chunk commit must not reach
// badger's log before the records of its file), and the file stops being
// fresh the first time.
func (f *FS) willWrite(o *store.Object) {
	f.barrier()
	if o.FirstWrite() {
		f.spoilFresh(o.Ino(), freshNoChunks)
	}
}
