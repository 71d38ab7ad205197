package fsns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/store"
)

// loaded returns the object of a regular file in use, or nil.
func (f *FS) loaded(ino uint64) *store.Object {
	if o, ok := f.objs.Load(ino); ok {
		return o.(*store.Object)
	}
	return nil
}

func (f *FS) loadedObjects() []*store.Object {
	var out []*store.Object
	f.objs.Range(func(_, o any) bool { out = append(out, o.(*store.Object)); return true })
	return out
}

// openObject is the data path's lookup: the object of a file that is open.
func (f *FS) openObject(ino uint64) (*store.Object, error) {
	if o := f.loaded(ino); o != nil {
		return o, nil
	}
	return nil, fmt.Errorf("volume %s: inode %d is not an open regular file: %w", f.v.Ref(), ino, store.ErrInvalid)
}

// Open pins ino for IO until the matching Release: a regular file's chunk
// table is loaded (and, the first time since the store opened, anything
// past its persisted length is discarded). Directories may be opened too,
// so that an open but removed directory stays stat-able.
func (f *FS) Open(ctx context.Context, ino uint64) (Attr, error) {
	// Pin first, then read: an unlink that runs after the pin sees the
	// inode in use and keeps it as an orphan; one that ran before makes
	// the read fail.
	if err := f.pin(ino); err != nil {
		return Attr{}, err
	}
	a, err := f.GetAttr(ctx, ino)
	if err == nil && a.IsRegular() {
		err = f.ensureObject(ino)
	}
	if err != nil {
		f.unpin(ino)
		return Attr{}, err
	}
	if o := f.loaded(ino); o != nil && a.IsRegular() {
		a.Size, a.Blocks = o.Size(), o.Held()/512
	}
	return a, nil
}

// acquireNew pins a file created a moment ago: it has no chunks, so its
// object starts empty without reading the chunk map.
func (f *FS) acquireNew(ino uint64) error {
	f.objMu.Lock()
	defer f.objMu.Unlock()
	if f.deleted {
		return fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrNotFound)
	}
	if u := f.inUse[ino]; u != nil {
		u.refs++
		return nil
	}
	o := f.v.NewFileObject(ino)
	f.inUse[ino] = &inUse{refs: 1, obj: o}
	f.objs.Store(ino, o)
	f.trimmed[ino] = true
	return nil
}

// CreateOpen is Create of a regular file followed by Open (O_CREAT).
func (f *FS) CreateOpen(ctx context.Context, parent uint64, name string, in NewInode) (Attr, error) {
	if in.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return Attr{}, fmt.Errorf("create-open of mode %#o: %w", in.Mode, store.ErrInvalid)
	}
	a, err := f.Create(ctx, parent, name, in)
	if err != nil {
		return Attr{}, err
	}
	return a, f.acquireNew(a.Ino)
}

// pin takes one reference on ino.
func (f *FS) pin(ino uint64) error {
	f.objMu.Lock()
	defer f.objMu.Unlock()
	if f.deleted {
		return fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrNotFound)
	}
	if u := f.inUse[ino]; u != nil {
		if u.purging {
			return fmt.Errorf("inode %d: %w", ino, store.ErrNotFound)
		}
		u.refs++
		return nil
	}
	f.inUse[ino] = &inUse{refs: 1}
	return nil
}

// unpin drops a reference taken by pin that never became an open.
func (f *FS) unpin(ino uint64) {
	f.objMu.Lock()
	defer f.objMu.Unlock()
	if u := f.inUse[ino]; u != nil {
		if u.refs--; u.refs == 0 {
			delete(f.inUse, ino)
			if u.obj != nil {
				f.objs.Delete(ino)
			}
		}
	}
}

// ensureObject loads the object of a pinned regular file.
func (f *FS) ensureObject(ino uint64) error {
	f.objMu.Lock()
	defer f.objMu.Unlock()
	u := f.inUse[ino]
	if u == nil {
		return fmt.Errorf("inode %d is not pinned: %w", ino, store.ErrInvalid)
	}
	if u.obj != nil {
		return nil
	}
	o, err := f.loadObject(ino)
	if err != nil {
		return err
	}
	u.obj = o
	f.objs.Store(ino, o) // its live values now overlay the cached record
	return nil
}

// loadObject builds a file's object from its length and chunk map (the
// engine reads the map). The caller holds objMu.
func (f *FS) loadObject(ino uint64) (*store.Object, error) {
	v := f.v
	var o *store.Object
	err := f.view(func(txn kv) error {
		size, err := readLength(txn, v.ID(), ino)
		if err != nil {
			return err
		}
		o, err = v.LoadFileObject(txn, ino, size)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load inode %d: %w", ino, err)
	}
	if !f.trimmed[ino] {
		// Bytes past the persisted length may be writes that a crash
		// cut off from their length: make them zeros/holes again.
		if err := o.TrimPastEnd(); err != nil {
			return nil, err
		}
		f.trimmed[ino] = true
	}
	return o, nil
}

// Release drops one reference taken by Open. The last one persists a
// file's length and mtime, and purges the inode if it was unlinked.
func (f *FS) Release(ctx context.Context, ino uint64) error {
	f.objMu.Lock()
	u := f.inUse[ino]
	if u == nil {
		f.objMu.Unlock()
		return fmt.Errorf("release of inode %d that is not open: %w", ino, store.ErrInvalid)
	}
	u.refs--
	last := u.refs == 0
	f.objMu.Unlock()
	if !last {
		return nil
	}
	var err error
	if u.obj != nil {
		err = f.persist(ctx, u.obj)
	}
	f.objMu.Lock()
	if u.refs == 0 && f.inUse[ino] == u { // nobody reopened it meanwhile
		delete(f.inUse, ino)
		if o := u.obj; o != nil {
			// The cache first, then the object: see overlayCached.
			f.attrs.refresh(ino, func(a *Attr) { liveValues(a, o) })
			f.objs.Delete(ino)
		}
	}
	f.objMu.Unlock()
	f.purgeIfUnused(ctx, ino)
	return err
}

// persist writes a file's length and mtime if they changed since last time.
//
// The values written are o's own, never a lookup of the loaded object:
// a Release racing a reopen (FUSE sends RELEASE asynchronously, so the
// durable-rename pattern's close-then-reopen-fsync-close does this) may
// see the other Release unload o before this persist reads it, and a
// lookup would then write back the stale stored length. persistMu makes
// a second persist wait for the first, so an fsync that finds nothing
// dirty still covers what the one in flight writes.
func (f *FS) persist(ctx context.Context, o *store.Object) error {
	o.LockPersist()
	defer o.UnlockPersist()
	if !o.TakeDirty() {
		return nil
	}
	err := f.update(ctx, func(txn kv) error {
		a, err := f.rawAttr(txn, o.Ino())
		if err != nil {
			return err
		}
		liveValues(&a, o)
		if err := f.putAttr(txn, a); err != nil { // a carries the live mtime
			return err
		}
		return txn.Set(lengthKey(f.v.ID(), o.Ino()), binary.BigEndian.AppendUint64(nil, uint64(a.Size)))
	})
	if err != nil {
		o.SetDirty()
		if errors.Is(err, store.ErrNotFound) {
			return nil // removed meanwhile: nothing to keep
		}
		return fmt.Errorf("persist inode %d: %w", o.Ino(), err)
	}
	return nil
}

// Fsync makes a file's data and attributes durable. dataOnly is
// fdatasync(2): the attributes only if reading the data needs them, that
// is the length; a file overwritten in place (a database's WAL segment)
// then costs the device's flush alone (Store.Flush skips a metadata sync
// with nothing committed since the last).
func (f *FS) Fsync(ctx context.Context, ino uint64, dataOnly bool) error {
	if o := f.loaded(ino); o != nil && (!dataOnly || o.LengthDirty()) {
		if err := f.persist(ctx, o); err != nil {
			return err
		}
	}
	if err := f.settle(); err != nil {
		return err
	}
	return f.v.Store().Flush(ctx)
}

// Length returns a file's current length (the live one while open).
func (f *FS) Length(ctx context.Context, ino uint64) (int64, error) {
	if o := f.loaded(ino); o != nil {
		return o.Size(), nil
	}
	a, err := f.GetAttr(ctx, ino)
	return a.Size, err
}

// purgeIfUnused removes an orphan inode nobody has open: chunks first (in
// batches; their space returns after the next durable commit), then its
// records. Errors are logged: the orphan record stays, and the purge is
// retried when the store next opens.
func (f *FS) purgeIfUnused(ctx context.Context, ino uint64) {
	f.objMu.Lock()
	busy := f.inUse[ino] != nil || !f.orphans[ino]
	if !busy {
		f.inUse[ino] = &inUse{refs: 1, purging: true} // no reopening during the purge
	}
	f.objMu.Unlock()
	if busy {
		return
	}
	defer func() {
		f.objMu.Lock()
		delete(f.inUse, ino)
		f.objMu.Unlock()
	}()
	if err := f.purge(ino); err != nil {
		f.v.Store().Log().Error("purge of removed inode failed; retried at next start", "volume", f.v.Ref(), "inode", ino, "err", err)
		return
	}
	f.setOrphan(ino, false)
}

func (f *FS) isOrphan(ino uint64) bool {
	err := f.view(func(txn kv) error {
		_, err := txn.Get(orphanKey(f.v.ID(), ino))
		return err
	})
	return err == nil
}

// purge deletes orphan ino (a no-op for an inode that is not an orphan).
func (f *FS) purge(ino uint64) error {
	v := f.v
	if !f.isOrphan(ino) {
		return nil
	}
	// The orphan record goes to badger before the chunks go: a crash in
	// between must not leave a named file without its data.
	f.barrier()
	if err := v.DropChunks(ino); err != nil {
		return err
	}
	// The records go in a namespace transaction, under f.mu: a persist
	// of the same inode still in flight (a last Release that raced a
	// reopen and its own last Release) then either lands before them or
	// finds the inode gone, instead of rewriting a record this deletes
	// (with badger's conflict check, failing after its caller returned).
	// The inode has no name, so no door has anything of it to drop.
	return f.update(context.Background(), func(txn kv) error {
		f.noteDrop(ino)
		f.forgetFresh(ino)
		return deleteInode(txn, v.ID(), ino, true, true, true)
	})
}

// purgeOrphans removes the orphans a crash left behind (store open),
// except those in keep: still open after a planned handover, they are
// purged at their last Release (purgeIfUnused).
func (f *FS) purgeOrphans(keep map[uint64]bool) error {
	var inos []uint64
	prefix := inoKey(prefixOrphan, f.v.ID(), 0)[:9]
	err := f.view(func(txn kv) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if k := it.Item().Key(); len(k) == 17 {
				inos = append(inos, binary.BigEndian.Uint64(k[9:]))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	kept := 0
	for _, ino := range inos {
		if keep[ino] || keep[0] { // 0: keep all (store.Options.KeepOrphans)
			f.setOrphan(ino, true)
			kept++
			continue
		}
		if err := f.purge(ino); err != nil {
			return fmt.Errorf("purge orphan inode %d: %w", ino, err)
		}
	}
	if len(inos) > kept {
		if err := f.v.Store().SyncMeta(); err != nil { // their space is free again
			return err
		}
		f.v.Store().Log().Info("purged inodes unlinked while open before the last stop", "volume", f.v.Ref(), "count", len(inos)-kept)
	}
	if kept > 0 {
		f.v.Store().Log().Info("kept inodes unlinked while open: still open after the handover", "volume", f.v.Ref(), "count", kept)
	}
	return nil
}

// SetAttr says which attributes to change; nil fields stay.
type SetAttr struct {
	Mode         *uint32 // permission bits only; the type never changes
	UID, GID     *uint32
	Size         *int64
	Atime, Mtime *int64 // Unix ns
}

// SetAttr changes attributes; a new size truncates or extends the file
// (extended bytes read as zeros).
func (f *FS) SetAttr(ctx context.Context, ino uint64, in SetAttr) (Attr, error) {
	if f.v.ReadOnly() {
		return Attr{}, fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrReadOnly)
	}
	if in.Size != nil {
		if err := f.truncate(ctx, ino, *in.Size); err != nil {
			return Attr{}, err
		}
	}
	var a Attr
	err := f.update(ctx, func(txn kv) error {
		var err error
		if a, err = f.getAttr(txn, ino); err != nil {
			return err
		}
		t := now()
		if in.Mode != nil {
			a.Mode = a.Mode&syscall.S_IFMT | *in.Mode&^uint32(syscall.S_IFMT)
		}
		if in.UID != nil {
			a.UID = *in.UID
		}
		if in.GID != nil {
			a.GID = *in.GID
		}
		if in.Atime != nil {
			a.Atime = *in.Atime
		}
		if in.Mtime != nil {
			a.Mtime = *in.Mtime
			if o := f.loaded(ino); o != nil {
				o.ClearMtime() // the explicit time wins over the live one
			}
		}
		if in.Size != nil {
			a.Mtime = t
		}
		a.Ctime = t
		return f.putAttr(txn, a)
	})
	return a, err
}

// truncate sets a file's length: chunks past the new end are unmapped and
// the rest of the last chunk is zeroed, then the length is recorded, so a
// crash midway leaves either the old length with zeros at its end or the
// new length.
func (f *FS) truncate(ctx context.Context, ino uint64, size int64) error {
	if size < 0 || size > store.MaxFileSize {
		return fmt.Errorf("truncate inode %d to %d: %w", ino, size, store.ErrTooBig)
	}
	a, err := f.GetAttr(ctx, ino)
	if err != nil {
		return err
	}
	switch {
	case a.IsDir():
		return fmt.Errorf("truncate inode %d: %w", ino, store.ErrIsDir)
	case !a.IsRegular():
		return fmt.Errorf("truncate inode %d: %w", ino, store.ErrInvalid)
	}
	if err := f.pin(ino); err != nil {
		return err
	}
	if err := f.ensureObject(ino); err != nil {
		f.unpin(ino)
		return err
	}
	defer f.Release(ctx, ino)
	o := f.loaded(ino)
	if o == nil {
		return fmt.Errorf("truncate inode %d: %w", ino, store.ErrNotFound)
	}
	// The length is recorded after the chunks are cut, so a crash midway
	// leaves the old length with zeros at its end.
	return o.Truncate(size, func() error {
		defer f.noteData(ctx, ino, size, 0)
		return f.update(ctx, func(txn kv) error {
			f.noteDrop(ino)
			return txn.Set(lengthKey(f.v.ID(), ino), binary.BigEndian.AppendUint64(nil, uint64(size)))
		})
	})
}
