package fsns

import (
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/store"
)

// Fallocate modes (Linux fallocate(2)).
const (
	FallocKeepSize  = 0x01
	FallocPunchHole = 0x02
	FallocZeroRange = 0x10
)

// Fallocate allocates, punches or zeroes [off, off+length) of an open
// file. Mode 0 allocates the holes of the range (reading as zeros) and
// extends the file to cover it; FallocKeepSize keeps the length;
// FallocPunchHole|FallocKeepSize unmaps the range; FallocZeroRange makes it
// read as zeros. Other modes (collapse, insert, unshare) are ErrUnsupported.
func (f *FS) Fallocate(ctx context.Context, ino uint64, off, length int64, mode uint32) error {
	o, err := f.openObject(ino)
	if err != nil {
		return err
	}
	if f.v.ReadOnly() {
		return fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrReadOnly)
	}
	if off < 0 || length <= 0 {
		return fmt.Errorf("fallocate offset %d length %d: %w", off, length, store.ErrInvalid)
	}
	if err := o.CheckRange(off, length, store.ErrNoSpace); err != nil {
		return err
	}
	f.willWrite(o)
	defer f.noteData(ctx, ino, off, length)
	switch mode &^ FallocKeepSize {
	case 0:
		if err := o.Allocate(off, length); err != nil {
			return err
		}
	case FallocPunchHole:
		if mode&FallocKeepSize == 0 {
			return fmt.Errorf("punch hole without keep-size: %w", store.ErrUnsupported)
		}
		if err := o.Discard(off, length); err != nil {
			return err
		}
	case FallocZeroRange:
		if err := o.Discard(off, length); err != nil {
			return err
		}
	default:
		return fmt.Errorf("fallocate mode %#x: %w", mode, store.ErrUnsupported)
	}
	if mode&FallocKeepSize == 0 {
		o.ExtendTo(off + length)
	}
	o.Touch()
	return nil
}

// Lseek whence values for holes and data.
const (
	SeekData = 3
	SeekHole = 4
)

// Lseek implements SEEK_DATA and SEEK_HOLE on an open file: the first data
// (or hole) offset at or after off. Past the end is ErrNXIO; the end of the
// file counts as a hole.
func (f *FS) Lseek(ctx context.Context, ino uint64, off int64, whence int) (int64, error) {
	o, err := f.openObject(ino)
	if err != nil {
		return 0, err
	}
	size := o.Size()
	if off < 0 {
		return 0, fmt.Errorf("seek to %d: %w", off, store.ErrInvalid)
	}
	if off >= size {
		return 0, fmt.Errorf("seek to %d of %d bytes: %w", off, size, store.ErrNXIO)
	}
	for _, e := range o.Extents(off, size-off) {
		if whence == SeekData && !e.Hole || whence == SeekHole && e.Hole {
			return e.Offset, nil
		}
	}
	if whence == SeekHole {
		return size, nil
	}
	if whence != SeekData {
		return 0, fmt.Errorf("whence %d: %w", whence, store.ErrInvalid)
	}
	return 0, fmt.Errorf("no data after %d: %w", off, store.ErrNXIO)
}

// FSStats is what statfs reports.
type FSStats struct {
	BlockSize   int64 `json:"block_size"`
	Blocks      int64 `json:"blocks"`
	BlocksFree  int64 `json:"blocks_free"`
	Files       int64 `json:"files"`
	FilesFree   int64 `json:"files_free"`
	NameMax     int64 `json:"name_max"`
	FragmentLen int64 `json:"fragment_size"`
}

// StatFS reports the volume's size and use: the pool space its chunks
// hold (a short tail chunk its units, a transformed chunk its extent).
func (f *FS) StatFS(ctx context.Context) FSStats {
	const bs = 4096
	size := f.v.Size()
	used := f.v.UsedBytes()
	const files = 1 << 32
	f.mu.Lock()
	next := f.nextIno
	f.mu.Unlock()
	return FSStats{
		BlockSize: bs, FragmentLen: bs, Blocks: size / bs, BlocksFree: max(0, size-used) / bs,
		Files: files, FilesFree: files - int64(next), NameMax: MaxNameLen,
	}
}

// Xattr flags (setxattr(2)).
const (
	XattrCreate  = 1
	XattrReplace = 2
)

func validXattrName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty xattr name: %w", store.ErrInvalid)
	case len(name) > MaxXattrNameLen:
		return fmt.Errorf("xattr name of %d bytes: %w", len(name), store.ErrRange)
	}
	return nil
}

// GetXattr returns the value of xattr name of ino (ErrNoData if absent).
func (f *FS) GetXattr(ctx context.Context, ino uint64, name string) ([]byte, error) {
	if err := validXattrName(name); err != nil {
		return nil, err
	}
	var val []byte
	err := f.view(func(txn kv) error {
		if _, err := f.rawAttr(txn, ino); err != nil {
			return err
		}
		b, err := txn.Get(xattrKey(f.v.ID(), ino, name))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("xattr %q: %w", name, store.ErrNoData)
		} else if err != nil {
			return err
		}
		val = b
		return nil
	})
	return val, err
}

// ListXattr returns the names of ino's xattrs.
func (f *FS) ListXattr(ctx context.Context, ino uint64) ([]string, error) {
	var names []string
	err := f.view(func(txn kv) error {
		if _, err := f.rawAttr(txn, ino); err != nil {
			return err
		}
		prefix := xattrPrefix(f.v.ID(), ino)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			names = append(names, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	return names, err
}

// SetXattr sets xattr name of ino; flags XattrCreate (fail if it exists) or
// XattrReplace (fail if it does not).
func (f *FS) SetXattr(ctx context.Context, ino uint64, name string, value []byte, flags uint32) error {
	if err := validXattrName(name); err != nil {
		return err
	}
	if len(value) > MaxXattrValueLen {
		return fmt.Errorf("xattr value of %d bytes: %w", len(value), store.ErrTooBig)
	}
	return f.changeXattr(ctx, ino, name, func(txn kv, key []byte, exists bool) error {
		switch {
		case flags&XattrCreate != 0 && exists:
			return fmt.Errorf("xattr %q: %w", name, store.ErrExists)
		case flags&XattrReplace != 0 && !exists:
			return fmt.Errorf("xattr %q: %w", name, store.ErrNoData)
		}
		return txn.Set(key, append([]byte{}, value...))
	})
}

// RemoveXattr removes xattr name of ino (ErrNoData if absent).
func (f *FS) RemoveXattr(ctx context.Context, ino uint64, name string) error {
	if err := validXattrName(name); err != nil {
		return err
	}
	return f.changeXattr(ctx, ino, name, func(txn kv, key []byte, exists bool) error {
		if !exists {
			return fmt.Errorf("xattr %q: %w", name, store.ErrNoData)
		}
		return txn.Delete(key)
	})
}

// changeXattr runs change on xattr name of ino in one transaction that
// also sets the inode's ctime; exists says whether the xattr is there.
func (f *FS) changeXattr(ctx context.Context, ino uint64, name string, change func(txn kv, key []byte, exists bool) error) error {
	if f.v.ReadOnly() {
		return fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrReadOnly)
	}
	return f.update(ctx, func(txn kv) error {
		a, err := f.rawAttr(txn, ino)
		if err != nil {
			return err
		}
		f.spoilFresh(ino, freshNoXattrs)
		key := xattrKey(f.v.ID(), ino, name)
		_, err = txn.Get(key)
		if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		a.Ctime = now()
		if err := f.putAttr(txn, a); err != nil {
			return err
		}
		return change(txn, key, err == nil)
	})
}
