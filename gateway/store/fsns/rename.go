package fsns

import (
	"context"
	"errors"
	"fmt"

	"github.com/sluice-storage/sluice/gateway/store"
)

// Rename moves name in parent to newName in newParent, in one transaction.
// Without flags an existing target is replaced (a directory only by an
// empty directory, a non-directory only by a non-directory).
// RenameNoReplace fails with ErrExists if the target exists;
// RenameExchange swaps the two entries, which must both exist.
func (f *FS) Rename(ctx context.Context, parent uint64, name string, newParent uint64, newName string, flags uint32) error {
	if err := validEntryName(newName); err != nil {
		return err
	}
	if name == "." || name == ".." {
		return fmt.Errorf("rename %q: %w", name, store.ErrInvalid)
	}
	switch {
	case flags&^(RenameNoReplace|RenameExchange) != 0,
		flags&RenameNoReplace != 0 && flags&RenameExchange != 0:
		return fmt.Errorf("rename flags %#x: %w", flags, store.ErrInvalid)
	}
	if f.v.ReadOnly() {
		return fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrReadOnly)
	}
	var gone uint64
	err := f.update(ctx, func(txn kv) error {
		r := renamer{f: f, txn: txn, t: now()}
		var err error
		gone, err = r.rename(parent, name, newParent, newName, flags)
		return err
	})
	if err == nil && gone != 0 {
		f.setOrphan(gone, true)
		f.purgeIfUnused(ctx, gone)
	}
	return err
}

// renamer holds one rename's transaction and the directories it changes,
// so that a directory touched twice (same parent) is written once.
type renamer struct {
	f    *FS
	txn  kv
	t    int64
	dirs map[uint64]*Attr
}

func (r *renamer) dir(ino uint64) (*Attr, error) {
	if a, ok := r.dirs[ino]; ok {
		return a, nil
	}
	a, err := r.f.dirAttr(r.txn, ino)
	if err != nil {
		return nil, err
	}
	if r.dirs == nil {
		r.dirs = make(map[uint64]*Attr)
	}
	r.dirs[ino] = &a
	return &a, nil
}

func (r *renamer) rename(parent uint64, name string, newParent uint64, newName string, flags uint32) (uint64, error) {
	f, txn := r.f, r.txn
	vol := f.v.ID()
	if _, err := r.dir(parent); err != nil {
		return 0, err
	}
	if _, err := r.dir(newParent); err != nil {
		return 0, err
	}
	srcIno, _, err := f.entryOf(txn, parent, name)
	if err != nil {
		return 0, err
	}
	src, err := f.recordOf(txn, srcIno)
	if err != nil {
		return 0, err
	}
	dstIno, _, err := f.entryOf(txn, newParent, newName)
	dstExists := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, err
	}
	switch {
	case flags&RenameNoReplace != 0 && dstExists:
		return 0, fmt.Errorf("%q: %w", newName, store.ErrExists)
	case flags&RenameExchange != 0 && !dstExists:
		return 0, fmt.Errorf("%q: %w", newName, store.ErrNotFound)
	case dstExists && dstIno == srcIno:
		return 0, nil // same inode: POSIX says do nothing
	}
	// A directory may not move below itself.
	if src.IsDir() && parent != newParent {
		if err := r.checkNotBelow(srcIno, newParent); err != nil {
			return 0, err
		}
	}
	var dst Attr
	if dstExists {
		if dst, err = f.recordOf(txn, dstIno); err != nil {
			return 0, err
		}
		if flags&RenameExchange != 0 && dst.IsDir() && parent != newParent {
			if err := r.checkNotBelow(dstIno, parent); err != nil {
				return 0, err
			}
		}
	}

	if flags&RenameExchange != 0 {
		if err := f.setDentry(txn, parent, name, dstIno, dst.Mode); err != nil {
			return 0, err
		}
		if err := f.setDentry(txn, newParent, newName, srcIno, src.Mode); err != nil {
			return 0, err
		}
		if err := r.moved(&src, parent, newParent); err != nil {
			return 0, err
		}
		if err := r.moved(&dst, newParent, parent); err != nil {
			return 0, err
		}
		return 0, r.finish()
	}

	var gone uint64
	if dstExists {
		switch {
		case src.IsDir() && !dst.IsDir():
			return 0, fmt.Errorf("%q: %w", newName, store.ErrNotDir)
		case !src.IsDir() && dst.IsDir():
			return 0, fmt.Errorf("%q: %w", newName, store.ErrIsDir)
		case dst.IsDir() && !dirEmpty(txn, vol, dstIno):
			return 0, fmt.Errorf("%q: %w", newName, store.ErrNotEmpty)
		}
		if dst.IsDir() {
			np, _ := r.dir(newParent)
			np.Nlink-- // the replaced directory's ".."
		}
		if gone, err = f.dropLink(txn, dst, r.t); err != nil {
			return 0, err
		}
	}
	if err := f.deleteDentry(txn, parent, name); err != nil {
		return 0, err
	}
	if err := f.setDentry(txn, newParent, newName, srcIno, src.Mode); err != nil {
		return 0, err
	}
	if err := r.moved(&src, parent, newParent); err != nil {
		return 0, err
	}
	return gone, r.finish()
}

// moved updates an inode that moved from directory from to directory to:
// ctime, and for a directory its parent and both parents' link counts.
func (r *renamer) moved(a *Attr, from, to uint64) error {
	a.Ctime = r.t
	if a.IsDir() && from != to {
		a.Parent = to
		fp, _ := r.dir(from)
		tp, _ := r.dir(to)
		fp.Nlink--
		tp.Nlink++
		if d, ok := r.dirs[a.Ino]; ok {
			d.Parent = to
		}
	}
	if d, ok := r.dirs[a.Ino]; ok { // a directory also in r.dirs: keep one copy
		d.Ctime = r.t
		return nil
	}
	return r.f.putAttr(r.txn, *a)
}

// finish stamps and writes every directory the rename changed.
func (r *renamer) finish() error {
	for _, d := range r.dirs {
		d.Mtime, d.Ctime = r.t, r.t
		if err := r.f.putAttr(r.txn, *d); err != nil {
			return err
		}
	}
	return nil
}

// checkNotBelow fails with ErrInvalid if dir is ino or one of its
// descendants (walking parent links up to the root).
func (r *renamer) checkNotBelow(ino, dir uint64) error {
	for seen := 0; ; seen++ {
		if dir == ino {
			return fmt.Errorf("move directory inode %d below itself: %w", ino, store.ErrInvalid)
		}
		if dir == RootIno {
			return nil
		}
		if seen > 1<<16 {
			return fmt.Errorf("directory inode %d: parent chain too deep or cyclic: %w", dir, store.ErrIO)
		}
		a, err := r.f.dirAttr(r.txn, dir)
		if err != nil {
			return err
		}
		dir = a.Parent
	}
}
