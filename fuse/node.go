package fuse

import (
	"context"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sluice-storage/sluice/gateway"
)

// node is one inode of an fs volume. It holds only the inode number; the
// engine holds everything else.
type node struct {
	fs.Inode
	m   *mount
	ino uint64
}

var (
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeTmpfiler       = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRmdirer        = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeStatfser       = (*node)(nil)
	_ fs.NodeGetxattrer     = (*node)(nil)
	_ fs.NodeSetxattrer     = (*node)(nil)
	_ fs.NodeListxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer  = (*node)(nil)
)

func (n *node) errno(op string, err error) syscall.Errno { return errnoOf(n.m.log, op, err) }

// path is the node's path inside the volume (relative to its root, as QoS
// file rules and policies see it): of a file with several links, the link
// the mount created, looked up or renamed last (go-fuse's newest parent;
// FUSE's open names an inode, not a link). It is "" for the root and for a
// node not (or no longer) in the mount's tree.
func (n *node) path() string {
	if _, parent := n.Parent(); parent == nil {
		return ""
	}
	return n.Path(n.Root())
}

// named reports whether p (a path relative to the volume's root) names n in
// the mount's tree.
func (n *node) named(p string) bool {
	if p == "" {
		return false
	}
	in := n.Root()
	for name := range strings.SplitSeq(p, "/") {
		if in = in.GetChild(name); in == nil {
			return false
		}
	}
	return in == n.EmbeddedInode()
}

// fill answers with a's attributes, which the kernel then caches: the
// mount's kcache notes it, and tells the kernel at once if a change it
// skipped since s0 (the answer's start, n.begin) may have made them stale.
func (n *node) fill(a gateway.Attr, out *fuse.Attr, s0 uint64) {
	fillAttr(a, out)
	if k := n.m.kc; k != nil && k.gave(a.Ino, s0) {
		n.m.note.Changed(gateway.Change{Ino: a.Ino})
	}
}

// begin is the start of an answer that carries attributes (fill).
func (n *node) begin() uint64 {
	if n.m.kc == nil {
		return 0
	}
	return n.m.kc.begin()
}

func fillAttr(a gateway.Attr, out *fuse.Attr) {
	out.Ino = a.Ino
	out.Mode = a.Mode
	out.Nlink = a.Nlink
	out.Uid, out.Gid = a.UID, a.GID
	out.Rdev = a.Rdev
	out.Size = uint64(a.Size)
	out.Blocks = uint64(a.Blocks)
	out.Blksize = 4096
	out.Atime, out.Atimensec = splitTime(a.Atime)
	out.Mtime, out.Mtimensec = splitTime(a.Mtime)
	out.Ctime, out.Ctimensec = splitTime(a.Ctime)
}

// splitTime turns Unix nanoseconds into FUSE's seconds and nanoseconds
// (0-999,999,999, so times before 1970 round their seconds down).
func splitTime(ns int64) (uint64, uint32) {
	t := time.Unix(0, ns)
	return uint64(t.Unix()), uint32(t.Nanosecond())
}

// child makes (or finds: hard links share one) the go-fuse inode for a,
// an answer that started at s0 (kcache.begin).
func (n *node) child(ctx context.Context, a gateway.Attr, out *fuse.EntryOut, s0 uint64) *fs.Inode {
	n.fill(a, &out.Attr, s0)
	return n.NewInode(ctx, &node{m: n.m, ino: a.Ino}, fs.StableAttr{Mode: a.Mode & syscall.S_IFMT, Ino: a.Ino})
}

func caller(ctx context.Context) (uid, gid uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	s0 := n.begin()
	a, err := n.m.fs.Lookup(ctx, n.ino, name)
	if err != nil {
		return nil, n.errno("lookup", err)
	}
	return n.child(ctx, a, out, s0), 0
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	s0 := n.begin()
	a, err := n.m.fs.GetAttr(ctx, n.ino)
	if err != nil {
		return n.errno("getattr", err)
	}
	n.fill(a, &out.Attr, s0)
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	s0 := n.begin()
	ctx = n.m.own(ctx)
	var sa gateway.SetAttr
	if m, ok := in.GetMode(); ok {
		sa.Mode = &m
	}
	if u, ok := in.GetUID(); ok {
		sa.UID = &u
	}
	if g, ok := in.GetGID(); ok {
		sa.GID = &g
	}
	if t, ok := in.GetATime(); ok {
		ns := t.UnixNano()
		sa.Atime = &ns
	}
	if t, ok := in.GetMTime(); ok {
		ns := t.UnixNano()
		sa.Mtime = &ns
	}
	if s, ok := in.GetSize(); ok {
		// A length change is data: it goes through Volume.Do.
		req := gateway.Request{Op: gateway.OpSetLength, Inode: n.ino, Length: int64(s), Door: gateway.DoorFUSE, Path: n.path()}
		if err := n.m.vol.Do(ctx, &req); err != nil {
			return n.errno("setattr", err)
		}
	}
	a, err := n.m.fs.SetAttr(ctx, n.ino, sa)
	if err != nil {
		return n.errno("setattr", err)
	}
	n.fill(a, &out.Attr, s0)
	return 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.m.readOnly && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	a, err := n.m.fs.Open(ctx, n.ino)
	if err != nil {
		return nil, 0, n.errno("open", err)
	}
	if !a.IsRegular() {
		n.m.fs.Release(ctx, n.ino)
		return nil, 0, syscall.EINVAL
	}
	return n.handle(flags, n.path())
}

// handle opens n, a regular file reached by path.
func (n *node) handle(flags uint32, path string) (fs.FileHandle, uint32, syscall.Errno) {
	var fuseFlags uint32
	if flags&syscall.O_DIRECT != 0 {
		fuseFlags |= fuse.FOPEN_DIRECT_IO
	}
	return newFile(n, path), fuseFlags, 0
}

func (n *node) newInode(ctx context.Context, mode uint32) gateway.NewInode {
	uid, gid := caller(ctx)
	return gateway.NewInode{Mode: mode, UID: uid, GID: gid}
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	s0 := n.begin()
	ctx = n.m.own(ctx)
	a, err := n.m.fs.CreateOpen(ctx, n.ino, name, n.newInode(ctx, syscall.S_IFREG|mode&07777))
	if err != nil {
		return nil, nil, 0, n.errno("create", err)
	}
	ch := n.child(ctx, a, out, s0)
	// The child joins the mount's tree only when Create returns: its path
	// is its parent's and its name.
	p := name
	if dir := n.path(); dir != "" {
		p = dir + "/" + name
	}
	fh, fuseFlags, _ := ch.Operations().(*node).handle(flags, p)
	return ch, fh, fuseFlags, 0
}

func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	s0 := n.begin()
	ctx = n.m.own(ctx)
	a, err := n.m.fs.Tmpfile(ctx, n.ino, n.newInode(ctx, syscall.S_IFREG|mode&07777))
	if err != nil {
		return nil, nil, 0, n.errno("tmpfile", err)
	}
	n.fill(a, &out.Attr, s0)
	ch := n.NewInode(ctx, &node{m: n.m, ino: a.Ino}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: a.Ino})
	fh, fuseFlags, _ := ch.Operations().(*node).handle(flags, "") // no name until linked
	return ch, fh, fuseFlags, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	s0 := n.begin()
	ctx = n.m.own(ctx)
	a, err := n.m.fs.Create(ctx, n.ino, name, n.newInode(ctx, syscall.S_IFDIR|mode&07777))
	if err != nil {
		return nil, n.errno("mkdir", err)
	}
	return n.child(ctx, a, out, s0), 0
}

func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	s0 := n.begin()
	ctx = n.m.own(ctx)
	in := n.newInode(ctx, mode)
	in.Rdev = dev
	a, err := n.m.fs.Create(ctx, n.ino, name, in)
	if err != nil {
		return nil, n.errno("mknod", err)
	}
	return n.child(ctx, a, out, s0), 0
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	s0 := n.begin()
	ctx = n.m.own(ctx)
	in := n.newInode(ctx, syscall.S_IFLNK|0o777)
	in.Target = target
	a, err := n.m.fs.Create(ctx, n.ino, name, in)
	if err != nil {
		return nil, n.errno("symlink", err)
	}
	return n.child(ctx, a, out, s0), 0
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	s0 := n.begin()
	ctx = n.m.own(ctx)
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	a, err := n.m.fs.Link(ctx, t.ino, n.ino, name)
	if err != nil {
		return nil, n.errno("link", err)
	}
	return n.child(ctx, a, out, s0), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	target, err := n.m.fs.Readlink(ctx, n.ino)
	if err != nil {
		return nil, n.errno("readlink", err)
	}
	return []byte(target), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	ctx = n.m.own(ctx)
	return n.errno("unlink", n.m.fs.Unlink(ctx, n.ino, name))
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	ctx = n.m.own(ctx)
	return n.errno("rmdir", n.m.fs.Rmdir(ctx, n.ino, name))
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	ctx = n.m.own(ctx)
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	return n.errno("rename", n.m.fs.Rename(ctx, n.ino, name, np.ino, newName, flags))
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	st := n.m.fs.StatFS(ctx)
	out.Bsize, out.Frsize = uint32(st.BlockSize), uint32(st.FragmentLen)
	out.Blocks, out.Bfree, out.Bavail = uint64(st.Blocks), uint64(st.BlocksFree), uint64(st.BlocksFree)
	out.Files, out.Ffree = uint64(st.Files), uint64(st.FilesFree)
	out.NameLen = uint32(st.NameMax)
	return 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	val, err := n.m.fs.GetXattr(ctx, n.ino, attr)
	if err != nil {
		return 0, n.errno("getxattr", err)
	}
	if len(dest) < len(val) {
		return uint32(len(val)), syscall.ERANGE
	}
	return uint32(copy(dest, val)), 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	ctx = n.m.own(ctx)
	return n.errno("setxattr", n.m.fs.SetXattr(ctx, n.ino, attr, data, flags))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	ctx = n.m.own(ctx)
	return n.errno("removexattr", n.m.fs.RemoveXattr(ctx, n.ino, attr))
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, err := n.m.fs.ListXattr(ctx, n.ino)
	if err != nil {
		return 0, n.errno("listxattr", err)
	}
	size := 0
	for _, s := range names {
		size += len(s) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for _, s := range names {
		off += copy(dest[off:], s)
		dest[off] = 0
		off++
	}
	return uint32(size), 0
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if _, err := n.m.fs.Open(ctx, n.ino); err != nil {
		return nil, 0, n.errno("opendir", err)
	}
	d := &dir{n: n}
	if errno := d.snapshot(ctx); errno != 0 {
		n.m.fs.Release(ctx, n.ino)
		return nil, 0, errno
	}
	return d, 0, 0
}

// cacheTimeout is how long the kernel keeps entries, attributes and
// negative lookups of an fs volume: long, because the engine reports every
// change made through other doors and the notifier drops what they made
// stale (notify.go).
const cacheTimeout = time.Hour

// imageTimeout is the same for a block volume's mount: its image file's
// content is served with direct IO, and its size can change by a resize
// that no notifier reports.
const imageTimeout = time.Second
