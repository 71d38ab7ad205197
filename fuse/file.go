package fuse

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sluice-storage/sluice/gateway"
)

// file is an open regular file of an fs volume. Its data goes through
// Volume.Do, labelled with the file's path (for QoS file rules and FILE
// policies): the path it was opened or created through, and after a rename
// through this mount, its new path.
type file struct {
	n  *node
	at atomic.Pointer[filePath]
	// paged: the handle has read or written through the kernel, which
	// may keep the pages (the mount's kcache counts it until Release).
	paged atomic.Bool
	// crashFh: the handle was opened before a crash (resumeFile), and
	// this is the kernel's number for it (0: not). The dead process may
	// have answered writes it never made durable, so the handle's next
	// fsync reports EIO, once, as Linux reports a writeback error to each
	// file description open before it: until then fh is in the mount's
	// crashed set. Set before the handle serves, then only read.
	crashFh uint32
}

// reportCrash reports whether f's crash is still to be told, and takes
// it out of the mount's crashed set (true once).
func (f *file) reportCrash() bool {
	_, pending := f.n.m.crashed.LoadAndDelete(f.crashFh)
	return pending
}

// markCrashed makes f, the kernel's handle fh, report EIO from its next
// fsync (file.crashFh).
func (f *file) markCrashed(fh uint32) {
	f.crashFh = fh
	f.n.m.crashed.Store(fh, struct{}{})
}

// paging counts the handle in the mount's pages before its first read or
// write is served: a change made behind the mount after that sees it.
func (f *file) paging() {
	if !f.paged.Load() && f.paged.CompareAndSwap(false, true) {
		f.n.m.kc.addPages(f.n.ino)
	}
}

// filePath is an open file's path as of a count of the mount's renames.
type filePath struct {
	renames uint64
	path    string
}

func newFile(n *node, path string) *file {
	f := &file{n: n}
	f.at.Store(&filePath{renames: n.m.renames.Load(), path: path})
	return f
}

// path is the path the file's requests carry. After a rename or link
// through the mount it is checked again: it stays while it still names the
// file (another file renamed, or a link added), else it becomes the path
// the mount's tree now has for the file. An unlinked file keeps its last.
func (f *file) path() string {
	p := f.at.Load()
	renames := f.n.m.renames.Load() // before the tree is read: a rename after this is seen next time
	if renames == p.renames {
		return p.path
	}
	np := &filePath{renames: renames, path: p.path}
	if !f.n.named(p.path) {
		if now := f.n.path(); now != "" {
			np.path = now
		}
	}
	f.at.Store(np)
	return np.path
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileFlusher   = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileLseeker   = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
)

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	m := f.n.m
	f.paging()
	size, err := m.fs.Length(ctx, f.n.ino)
	if err != nil {
		return nil, f.n.errno("read", err)
	}
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	req := gateway.Request{Op: gateway.OpRead, Inode: f.n.ino, Offset: off, Buf: dest, Door: gateway.DoorFUSE, Path: f.path()}
	if err := m.vol.Do(ctx, &req); err != nil {
		return nil, f.n.errno("read", err)
	}
	return fuse.ReadResultData(dest), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	ctx = f.n.m.own(ctx)
	f.paging()
	req := gateway.Request{Op: gateway.OpWrite, Inode: f.n.ino, Offset: off, Buf: data, Door: gateway.DoorFUSE, Path: f.path()}
	if err := f.n.m.vol.Do(ctx, &req); err != nil {
		return 0, f.n.errno("write", err)
	}
	return uint32(len(data)), 0
}

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	ctx = f.n.m.own(ctx)
	// FUSE_FSYNC_FDATASYNC (bit 0): fdatasync(2).
	req := gateway.Request{Op: gateway.OpSync, Inode: f.n.ino, DataOnly: flags&1 != 0, Door: gateway.DoorFUSE, Path: f.path()}
	errno := f.n.errno("fsync", f.n.m.vol.Do(ctx, &req))
	if errno == 0 && f.crashFh != 0 && f.reportCrash() {
		// What this process has is durable now; what the dead one
		// answered and lost is not, and the program must hear of it.
		f.n.m.log.Warn("fsync of a file opened before the gateway crashed: EIO, once (writes answered before the crash may be lost)",
			"volume", f.n.m.vol.Ref(), "ino", f.n.ino, "path", f.path())
		return syscall.EIO
	}
	return errno
}

// Flush (close(2) of one descriptor) has nothing to do: writes are already
// in the store, and POSIX locks are the kernel's. It answers ENOSYS, so
// the kernel sends no FLUSH again on this mount: a close costs no round
// trip, and a gateway that dies holding files of its own mount (the shim
// door keeps clients' fds) is not left waiting at exit for a FLUSH only
// it could answer.
func (f *file) Flush(ctx context.Context) syscall.Errno { return syscall.ENOSYS }

func (f *file) Release(ctx context.Context) syscall.Errno {
	ctx = f.n.m.own(ctx)
	if f.crashFh != 0 {
		f.n.m.crashed.Delete(f.crashFh)
	}
	if f.paged.Load() {
		f.n.m.kc.dropPages(f.n.ino)
	}
	return f.n.errno("release", f.n.m.fs.Release(ctx, f.n.ino))
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	pos, err := f.n.m.fs.Lseek(ctx, f.n.ino, int64(off), int(whence))
	if err != nil {
		return 0, f.n.errno("lseek", err)
	}
	return uint64(pos), 0
}

// Allocate is fallocate(2), mapped onto Volume.Do by gateway.Fallocate.
func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	ctx = f.n.m.own(ctx)
	req, err := gateway.Fallocate(mode, int64(off), int64(size))
	if err != nil {
		return f.n.errno("fallocate", err)
	}
	req.Inode, req.Door, req.Path = f.n.ino, gateway.DoorFUSE, f.path()
	return f.n.errno("fallocate", f.n.m.vol.Do(ctx, &req))
}

// dir is an open directory: a snapshot of its entries, so that offsets
// (telldir/seekdir) stay valid while the directory changes. Offset k means
// "after the k-th entry"; rewinding to 0 takes a fresh snapshot.
type dir struct {
	n       *node
	mu      sync.Mutex
	entries []fuse.DirEntry
	pos     int
}

var (
	_ fs.FileReaddirenter = (*dir)(nil)
	_ fs.FileSeekdirer    = (*dir)(nil)
	_ fs.FileReleasedirer = (*dir)(nil)
	_ fs.FileFsyncdirer   = (*dir)(nil)
)

func (d *dir) snapshot(ctx context.Context) syscall.Errno {
	list, err := d.n.m.fs.ReadDir(ctx, d.n.ino)
	if err != nil {
		return d.n.errno("readdir", err)
	}
	parent := d.n.ino
	if a, err := d.n.m.fs.GetAttr(ctx, d.n.ino); err == nil && a.Parent != 0 {
		parent = a.Parent
	}
	entries := make([]fuse.DirEntry, 0, len(list)+2)
	entries = append(entries,
		fuse.DirEntry{Name: ".", Ino: d.n.ino, Mode: syscall.S_IFDIR},
		fuse.DirEntry{Name: "..", Ino: parent, Mode: syscall.S_IFDIR})
	for _, e := range list {
		entries = append(entries, fuse.DirEntry{Name: e.Name, Ino: e.Ino, Mode: e.Type})
	}
	for i := range entries {
		entries[i].Off = uint64(i + 1)
	}
	d.entries, d.pos = entries, 0
	return 0
}

func (d *dir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pos >= len(d.entries) {
		return nil, 0
	}
	e := d.entries[d.pos]
	d.pos++
	return &e, 0
}

func (d *dir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off == 0 {
		return d.snapshot(ctx)
	}
	d.pos = int(min(off, uint64(len(d.entries))))
	return 0
}

func (d *dir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	ctx = d.n.m.own(ctx)
	req := gateway.Request{Op: gateway.OpSync, Inode: d.n.ino, Door: gateway.DoorFUSE}
	return d.n.errno("fsyncdir", d.n.m.vol.Do(ctx, &req))
}

func (d *dir) Releasedir(ctx context.Context, releaseFlags uint32) {
	ctx = d.n.m.own(ctx)
	d.n.m.fs.Release(ctx, d.n.ino)
}
