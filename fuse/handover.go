package fuse

import (
	"context"
	"fmt"
	"os"
	"slices"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// HandoverState is what another process needs to serve a mount without
// unmounting it (Mount.Detach, Adopt, docs/HANDOVER.md): where it is,
// what the kernel's INIT negotiated, and go-fuse's tables of the node
// IDs and file handles the kernel holds (third_party/go-fuse/PATCHES.md).
type HandoverState struct {
	Volume   string // tenant/name
	Dir      string
	ReadOnly bool // as asked when mounting (the volume's own read-only is read again)
	Session  fuse.Session
	Table    *fs.SessionTable
	// Epoch: how many times the session was resumed after a crash
	// (Options.Epoch; not sent: the taking process reads it from the
	// data directory's session record).
	Epoch uint32
	// CrashEIO: the file handles opened before a crash whose next fsync
	// must still report EIO (file.crashFh), sorted.
	CrashEIO []uint32
}

// Detach stops serving the mount for a handover, without unmounting it:
// the notifier stops, go-fuse's readers stop at a request boundary and
// every request read is answered; requests the kernel sends from then on
// wait in its queue for the process that adopts the mount. It returns the
// mount's /dev/fuse fd (the caller owns it) and the state to adopt it
// with. The Mount must not be used afterwards. On an error after the
// server stopped, the session cannot be served by anyone: the fd is
// closed (the kernel fails what waits) and the mount detached lazily.
// If the requests read do not all finish before ctx ends (one held by a
// QoS limit, say), the mount ends: its connection is aborted (what waits
// on it fails, ECONNABORTED) and it is detached lazily.
func (mt *Mount) Detach(ctx context.Context) (int, *HandoverState, error) {
	mt.detaching.Store(true)
	mt.stopNote()
	type detached struct {
		fd  int
		err error
	}
	ch := make(chan detached, 1)
	go func() {
		fd, err := mt.server.Detach()
		ch <- detached{fd, err}
	}()
	var d detached
	select {
	case d = <-ch:
	case <-ctx.Done():
		mt.abort()
		go func() {
			// The stuck request ends (its answer is dropped), then
			// the server: close what it hands back.
			if d := <-ch; d.err == nil {
				unix.Close(d.fd)
			}
		}()
		return -1, nil, fmt.Errorf("detach %s at %s: requests still running: %w", mt.Volume, mt.Dir, ctx.Err())
	}
	fd, err := d.fd, d.err
	if err != nil {
		return -1, nil, fmt.Errorf("detach %s at %s: %w", mt.Volume, mt.Dir, err)
	}
	table, err := fs.ExportSession(mt.raw)
	if err == nil {
		err = mt.persistOpen(table)
	}
	if err != nil {
		unix.Close(fd)
		unix.Unmount(mt.Dir, unix.MNT_DETACH)
		return -1, nil, fmt.Errorf("detach %s at %s: %w", mt.Volume, mt.Dir, err)
	}
	return fd, &HandoverState{Volume: mt.Volume, Dir: mt.Dir, ReadOnly: mt.asked,
		Session: mt.server.Session(), Table: table, Epoch: mt.Epoch, CrashEIO: mt.m.pendingCrashEIO()}, nil
}

// pendingCrashEIO lists the handles whose fsync must still report a
// crash (mount.crashed), sorted.
func (m *mount) pendingCrashEIO() []uint32 {
	var fhs []uint32
	m.crashed.Range(func(k, _ any) bool {
		fhs = append(fhs, k.(uint32))
		return true
	})
	slices.Sort(fhs)
	return fhs
}

// abort ends the mount's FUSE connection (fusectl's abort: the kernel
// fails every request waiting and every later one) and detaches the
// mount lazily.
func (mt *Mount) abort() {
	p := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(mt.Dev))
	if err := os.WriteFile(p, []byte("1"), 0); err != nil {
		mt.m.log.Warn("fuse: aborting the connection", "dir", mt.Dir, "err", err)
	}
	unix.Unmount(mt.Dir, unix.MNT_DETACH)
}

// persistOpen makes the live length and times of every file open on an
// fs volume's mount durable (the engine keeps them in memory until the
// last release or an fsync; the new process's engine would discard what
// lies past the persisted length): an fsync of each, as the file's own
// would be, so one store flush per open file.
func (mt *Mount) persistOpen(table *fs.SessionTable) error {
	if mt.m.fs == nil {
		return nil
	}
	done := map[uint64]bool{}
	for _, f := range table.Files {
		if f.Dir || done[f.NodeID] {
			continue
		}
		done[f.NodeID] = true // node IDs are inode numbers (ExternalNodeID)
		req := gateway.Request{Op: gateway.OpSync, Inode: f.NodeID, Door: gateway.DoorFUSE}
		if err := mt.m.vol.Do(mt.m.own(context.Background()), &req); err != nil {
			return fmt.Errorf("persist open inode %d: %w", f.NodeID, err)
		}
	}
	return nil
}

// Adopt serves a mount another server detached (Mount.Detach, possibly
// in another process): fd is its /dev/fuse fd, which Adopt owns from
// here. The node IDs and file handles the kernel holds are restored
// before the first request is read. A handle whose file the engine can
// no longer open (a file unlinked while open is purged when the store
// opens) answers ESTALE. If the mount cannot be adopted, the fd is
// closed and the mount detached lazily: what waits on it fails.
func Adopt(ctx context.Context, vol *gateway.Volume, st *HandoverState, fd int, opts Options) (*Mount, error) {
	opts.ReadOnly = st.ReadOnly
	if opts.Epoch == 0 {
		opts.Epoch = st.Epoch
	}
	p := prepare(vol, opts)
	fail := func(err error) (*Mount, error) {
		p.unwatch()
		unix.Close(fd)
		unix.Unmount(st.Dir, unix.MNT_DETACH)
		return nil, fmt.Errorf("adopt the mount of %s at %s: %w", vol.Ref(), st.Dir, err)
	}
	if st.Table == nil || st.Session.Kernel.Major == 0 {
		return fail(fmt.Errorf("no session state: %w", gateway.ErrInvalid))
	}
	if p.m.kc != nil {
		p.m.kc.gave(gateway.RootIno, 0)
	}
	raw := fs.NewNodeFS(p.root, p.opts)
	restore := func(ops fs.InodeEmbedder, sf fs.SessionFile) (fs.FileHandle, error) {
		h, err := p.restoreFile(ops, sf)
		if f, ok := h.(*file); ok && err == nil {
			if _, found := slices.BinarySearch(st.CrashEIO, sf.Fh); found {
				f.markCrashed(sf.Fh)
			}
		}
		return h, err
	}
	if err := fs.RestoreSession(raw, st.Table, p.restoreNode, restore); err != nil {
		return fail(err)
	}
	server, err := fuse.NewServerSession(namesCounted{RawFileSystem: raw, n: &p.m.renames}, fd, st.Dir, &p.opts.MountOptions, st.Session)
	if err != nil {
		p.unwatch()
		unix.Unmount(st.Dir, unix.MNT_DETACH)
		return nil, fmt.Errorf("adopt the mount of %s at %s: %w", vol.Ref(), st.Dir, err)
	}
	go server.Serve()
	return p.start(server, raw, st.Dir, opts)
}

// restoreNode makes the node for a node ID the kernel holds: for an fs
// volume the engine's inode (node IDs are inode numbers), for a block
// volume the image file its root made.
func (p *prepared) restoreNode(sn fs.SessionNode) (fs.InodeEmbedder, error) {
	if p.m.fs != nil {
		// The kernel may hold its attributes: reports of changes to it
		// are told (kcache).
		p.m.kc.gave(sn.Attr.Ino, 0)
		return &node{m: p.m, ino: sn.Attr.Ino}, nil
	}
	if p.m.img != nil && sn.Attr == p.m.img.StableAttr() {
		return p.m.img.Operations(), nil // RestoreSession checks its node ID
	}
	return nil, fmt.Errorf("block volume mount: unknown node %d (%v): %w", sn.NodeID, sn.Attr, gateway.ErrInvalid)
}

// restoreFile opens an open handle again: pinned in the engine as OPEN
// pins it, a directory with a fresh listing (the kernel's next READDIR
// offset then seeks in it), a file counted as holding pages (the kernel
// may have cached some).
func (p *prepared) restoreFile(ops fs.InodeEmbedder, sf fs.SessionFile) (fs.FileHandle, error) {
	n, ok := ops.(*node)
	if !ok {
		return nil, nil // the image file keeps no state per handle
	}
	ctx := context.Background()
	if _, err := n.m.fs.Open(ctx, n.ino); err != nil {
		p.m.log.Warn("handover: an open file is gone; its handle answers ESTALE", "volume", n.m.vol.Ref(), "ino", n.ino, "err", err)
		return staleFile{}, nil
	}
	if sf.Dir {
		d := &dir{n: n}
		if errno := d.snapshot(ctx); errno != 0 {
			n.m.fs.Release(ctx, n.ino)
			return staleFile{}, nil
		}
		return d, nil
	}
	f := newFile(n, n.path())
	f.paging()
	return f, nil
}

// staleFile is a handle the new process could not open again: every
// operation on it fails with ESTALE; its release has nothing to do.
type staleFile struct{}

var (
	_ fs.FileReader       = staleFile{}
	_ fs.FileWriter       = staleFile{}
	_ fs.FileFsyncer      = staleFile{}
	_ fs.FileReaddirenter = staleFile{}
)

func (staleFile) Read(context.Context, []byte, int64) (fuse.ReadResult, syscall.Errno) {
	return nil, syscall.ESTALE
}
func (staleFile) Write(context.Context, []byte, int64) (uint32, syscall.Errno) {
	return 0, syscall.ESTALE
}
func (staleFile) Fsync(context.Context, uint32) syscall.Errno { return syscall.ESTALE }
func (staleFile) Readdirent(context.Context) (*fuse.DirEntry, syscall.Errno) {
	return nil, syscall.ESTALE
}
