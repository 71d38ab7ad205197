package fuse

import (
	"context"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// ImageName is the one file in the mount of a block volume.
const ImageName = "image"

// imageRoot is the directory a block volume mounts as.
type imageRoot struct {
	fs.Inode
	m *mount
}

var _ fs.NodeOnAdder = (*imageRoot)(nil)

func (r *imageRoot) OnAdd(ctx context.Context) {
	img := r.NewPersistentInode(ctx, &image{m: r.m, created: time.Now()}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(ImageName, img, false)
	r.m.img = img
}

func (r *imageRoot) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	return 0
}

// image is a block volume as one file: reads and writes go to inode 0 of
// the volume, always with direct IO.
type image struct {
	fs.Inode
	m       *mount
	created time.Time
}

var (
	_ fs.NodeGetattrer = (*image)(nil)
	_ fs.NodeSetattrer = (*image)(nil)
	_ fs.NodeOpener    = (*image)(nil)
	_ fs.NodeReader    = (*image)(nil)
	_ fs.NodeWriter    = (*image)(nil)
	_ fs.NodeFsyncer   = (*image)(nil)
	_ fs.NodeAllocater = (*image)(nil)
	_ fs.NodeStatfser  = (*image)(nil)
)

func (i *image) errno(op string, err error) syscall.Errno { return errnoOf(i.m.log, op, err) }

func (i *image) fill(out *fuse.Attr) {
	size := uint64(i.m.vol.Size())
	out.Ino = 2
	out.Mode = syscall.S_IFREG | 0o600
	if i.m.readOnly {
		out.Mode = syscall.S_IFREG | 0o400
	}
	out.Nlink = 1
	out.Size = size
	out.Blocks = uint64(i.m.vol.AllocatedBytes() / 512)
	out.Blksize = 4096
	t := uint64(i.created.Unix())
	out.Atime, out.Mtime, out.Ctime = t, t, t
}

func (i *image) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	i.fill(&out.Attr)
	return 0
}

// Setattr allows only what does not change the volume: its own size
// (ftruncate to the current size), and times/modes are ignored.
func (i *image) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if s, ok := in.GetSize(); ok && int64(s) != i.m.vol.Size() {
		return syscall.EPERM // resize with `sluice volume resize`
	}
	i.fill(&out.Attr)
	return 0
}

func (i *image) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if i.m.readOnly && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (i *image) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := i.m.vol.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	req := gateway.Request{Op: gateway.OpRead, Offset: off, Buf: dest, Door: gateway.DoorFUSE}
	if err := i.m.vol.Do(ctx, &req); err != nil {
		return nil, i.errno("read", err)
	}
	return fuse.ReadResultData(dest), 0
}

func (i *image) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off+int64(len(data)) > i.m.vol.Size() {
		return 0, syscall.ENOSPC
	}
	req := gateway.Request{Op: gateway.OpWrite, Offset: off, Buf: data, Door: gateway.DoorFUSE}
	if err := i.m.vol.Do(ctx, &req); err != nil {
		return 0, i.errno("write", err)
	}
	return uint32(len(data)), 0
}

func (i *image) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	req := gateway.Request{Op: gateway.OpFlush, Door: gateway.DoorFUSE}
	return i.errno("fsync", i.m.vol.Do(ctx, &req))
}

// Allocate: punch hole and zero range discard (the volume is thin), plain
// allocation is accepted as a no-op (the volume's size is fixed).
func (i *image) Allocate(ctx context.Context, f fs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	end := min(int64(off+size), i.m.vol.Size())
	if int64(off) >= end {
		return 0
	}
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case 0:
		return 0
	case unix.FALLOC_FL_PUNCH_HOLE, unix.FALLOC_FL_ZERO_RANGE:
		req := gateway.Request{Op: gateway.OpDiscard, Offset: int64(off), Length: end - int64(off), Door: gateway.DoorFUSE}
		return i.errno("fallocate", i.m.vol.Do(ctx, &req))
	}
	return syscall.EOPNOTSUPP
}

func (i *image) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	size, used := i.m.vol.Size(), i.m.vol.AllocatedBytes()
	out.Bsize, out.Frsize = 4096, 4096
	out.Blocks, out.Bfree, out.Bavail = uint64(size/4096), uint64(max(0, size-used)/4096), uint64(max(0, size-used)/4096)
	out.NameLen = 255
	return 0
}
