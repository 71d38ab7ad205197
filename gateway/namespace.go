package gateway

import (
	"context"
	"fmt"

	"github.com/sluice-storage/sluice/gateway/store/fsns"
)

// Namespace is an fs volume's names and attributes, as the file doors (FUSE,
// the shim) see them. It changes no file data: reads and writes, a file's
// length, fallocate, punch and fsync go through Volume.Do, so that queues,
// filters, counters and change reports apply to them from every door.
//
// Open and Release bracket a door's use of a file (the store keeps an open
// file's live state and reclaims an unlinked file at its last Release);
// Length and Lseek read that live state.
type Namespace interface {
	Lookup(ctx context.Context, parent uint64, name string) (Attr, error)
	GetAttr(ctx context.Context, ino uint64) (Attr, error)
	// SetAttr changes mode, owner and times. A new length is OpSetLength:
	// SetAttr with Size set fails with ErrInvalid.
	SetAttr(ctx context.Context, ino uint64, in SetAttr) (Attr, error)
	Readlink(ctx context.Context, ino uint64) (string, error)
	ReadDir(ctx context.Context, ino uint64) ([]DirEntry, error)
	StatFS(ctx context.Context) FSStats

	Create(ctx context.Context, parent uint64, name string, in NewInode) (Attr, error)
	CreateOpen(ctx context.Context, parent uint64, name string, in NewInode) (Attr, error)
	Tmpfile(ctx context.Context, parent uint64, in NewInode) (Attr, error)
	Link(ctx context.Context, ino, newParent uint64, newName string) (Attr, error)
	Unlink(ctx context.Context, parent uint64, name string) error
	Rmdir(ctx context.Context, parent uint64, name string) error
	Rename(ctx context.Context, parent uint64, name string, newParent uint64, newName string, flags uint32) error

	Open(ctx context.Context, ino uint64) (Attr, error)
	Release(ctx context.Context, ino uint64) error
	Length(ctx context.Context, ino uint64) (int64, error)
	Lseek(ctx context.Context, ino uint64, off int64, whence int) (int64, error)

	GetXattr(ctx context.Context, ino uint64, name string) ([]byte, error)
	ListXattr(ctx context.Context, ino uint64) ([]string, error)
	SetXattr(ctx context.Context, ino uint64, name string, value []byte, flags uint32) error
	RemoveXattr(ctx context.Context, ino uint64, name string) error

	// Watch registers a door that caches names or attributes: w hears of
	// every change made through another door (see fsns.FS.Watch).
	Watch(w Watcher) (stop func())
}

// namespace is the store's FS without its data calls.
type namespace struct{ *fsns.FS }

func (n namespace) SetAttr(ctx context.Context, ino uint64, in SetAttr) (Attr, error) {
	if in.Size != nil {
		return Attr{}, fmt.Errorf("setattr inode %d: a length change is OpSetLength: %w", ino, ErrInvalid)
	}
	return n.FS.SetAttr(ctx, ino, in)
}

// Namespace returns an fs volume's namespace, or nil for a block volume.
func (v *Volume) Namespace() Namespace {
	fs := fsns.Of(v.sv)
	if fs == nil {
		return nil
	}
	return namespace{fs}
}
