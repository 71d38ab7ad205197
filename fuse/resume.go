package fuse

import (
	"context"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// Crash resume (docs/HANDOVER.md, "Crash resume"): a mount whose
// gateway was killed is served again by the next gateway from its
// /dev/fuse fd (kept by the fd holder) and what its INIT negotiated
// (kept in the data directory), without the dead process's node and
// handle tables. go-fuse's bridge asks for a node ID or a file handle
// it does not know (fs.ResumeOptions, third_party/go-fuse/PATCHES.md):
// node IDs of an fs volume's mount are the engine's inode numbers, so
// the node is made from the engine; a handle is opened again as OPEN
// would. Requests the dead process read and never answered are sent
// again by the kernel (NotifyResend).

// epochShift places each resume's file handles in a range no earlier
// process of the session used: the handles of the process started
// after the Nth crash are N<<24+1, N<<24+2, ... (the first process's
// from 1). Handle numbers are 32 bits in go-fuse, so a session has 256
// ranges: MaxResumes.
const epochShift = 24

// MaxResumes is how many times one FUSE session can be resumed after a
// crash. The next resume is refused and the mount ends (as without
// --fuse-resume): its handles would reuse the first process's range,
// whose handles the kernel may still hold, and a request on an old
// handle would reach a new one's file. Mounting again starts a new
// session.
const MaxResumes = 1<<(32-epochShift) - 1

// resumeOptions are go-fuse's hooks for a mount resumed epoch times.
func (p *prepared) resumeOptions(epoch uint32) *fs.ResumeOptions {
	if epoch == 0 {
		return nil
	}
	return &fs.ResumeOptions{
		FileHandleBase: epoch << epochShift, // Resume refuses epoch > MaxResumes
		Node:           p.resumeNode,
		File:           p.resumeFile,
	}
}

// resumeNode makes the node for a node ID the kernel holds from before
// the crash: for an fs volume the engine's inode (its type from the
// engine; one the engine no longer has answers its errors, ENOENT), for
// a block volume the image file its root made (node ID 2) or a node
// with no operations.
func (p *prepared) resumeNode(nodeID uint64) (fs.InodeEmbedder, fs.StableAttr) {
	if p.m.fs != nil {
		mode := uint32(syscall.S_IFREG)
		if a, err := p.m.fs.GetAttr(context.Background(), nodeID); err == nil {
			mode = a.Mode
		}
		p.m.kc.gave(nodeID, 0) // the kernel may cache its attributes
		return &node{m: p.m, ino: nodeID}, fs.StableAttr{Ino: nodeID, Mode: mode}
	}
	if p.m.img != nil && nodeID == imageNodeID {
		return p.m.img.Operations(), p.m.img.StableAttr()
	}
	return &fs.Inode{}, fs.StableAttr{Ino: nodeID, Mode: syscall.S_IFREG}
}

// imageNodeID is the image file's node ID in a block volume's mount:
// the first node ID go-fuse hands out after the root's (its root makes
// it in OnAdd, before the kernel asks anything).
const imageNodeID = 2

// resumeFile opens a handle of the dead process again, as restoreFile
// does for a handover: pinned in the engine, a directory with a fresh
// listing. A file the engine cannot open answers ESTALE. A regular
// file's next fsync reports EIO once (file.crashFh): the dead process
// may have answered writes it had not made durable.
func (p *prepared) resumeFile(ops fs.InodeEmbedder, fh uint32, dir bool) fs.FileHandle {
	f, err := p.restoreFile(ops, fs.SessionFile{Dir: dir})
	if err != nil || f == nil {
		if _, ok := ops.(*node); ok {
			return staleFile{}
		}
		return nil
	}
	if rf, ok := f.(*file); ok {
		rf.markCrashed(fh)
	}
	return f
}

// Resume serves a mount whose gateway died: fd is its /dev/fuse fd (Resume
// owns it), st its volume, directory and INIT settings (no tables:
// st.Table is ignored), epoch how many times the session has been
// resumed, this time included (1 to MaxResumes; otherwise the fd is
// closed and the mount detached, as when Adopt fails). Once serving, it asks the kernel
// to send again the requests the dead process read but did not answer.
func Resume(ctx context.Context, vol *gateway.Volume, st *HandoverState, fd int, epoch uint32, opts Options) (*Mount, error) {
	if epoch == 0 || epoch > MaxResumes {
		unix.Close(fd)
		unix.Unmount(st.Dir, unix.MNT_DETACH)
		return nil, fmt.Errorf("resume %s at %s: resume %d of the session: at most %d, the FUSE session's file handle ranges are used up (mount it again): %w",
			vol.Ref(), st.Dir, epoch, MaxResumes, gateway.ErrInvalid)
	}
	st.Table = &fs.SessionTable{}
	opts.Epoch = epoch
	mt, err := Adopt(ctx, vol, st, fd, opts)
	if err != nil {
		return nil, err
	}
	if !mt.server.CanResend() {
		mt.m.log.Warn("resume: the kernel cannot resend requests (FUSE_NOTIFY_RESEND, Linux 6.9+): programs waiting for an answer from the dead gateway wait until they are killed",
			"volume", mt.Volume, "dir", mt.Dir)
	} else if s := mt.server.NotifyResend(); s != fuse.OK {
		mt.m.log.Warn("resume: asking the kernel to resend requests failed", "volume", mt.Volume, "dir", mt.Dir, "status", s)
	}
	return mt, nil
}

// resent reports whether a request is one the kernel sent again after a
// resume (its unique ID carries FUSE_UNIQUE_RESEND): the dead process may
// have done it already.
func resent(h *fuse.InHeader) bool { return h.Unique&fuse.UniqueResend != 0 }

// What a resent request means (the dead process read it; it may have
// done it, and its answer was lost):
//   - WRITE, SETATTR, FSYNC, READ, FLUSH...: done again, which is
//     harmless (the same bytes at the same offset; the same absolute
//     attributes).
//   - CREATE, MKDIR, MKNOD, SYMLINK, LINK failing with EEXIST: the dead
//     process made it; the entry is looked up and answered (CREATE also
//     opens it, without O_TRUNC and O_EXCL). A name made by someone else
//     in between is answered the same way: indistinguishable.
//   - UNLINK, RMDIR, RENAME failing with ENOENT: the dead process did it;
//     answered 0.

func (c namesCounted) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	s := c.RawFileSystem.Create(cancel, in, name, out)
	if s != fuse.Status(syscall.EEXIST) || !resent(&in.InHeader) {
		return s
	}
	if s := c.RawFileSystem.Lookup(cancel, &in.InHeader, name, &out.EntryOut); s != fuse.OK {
		return s
	}
	oin := fuse.OpenIn{InHeader: in.InHeader, Flags: in.Flags &^ uint32(syscall.O_CREAT|syscall.O_EXCL|syscall.O_TRUNC)}
	oin.NodeId = out.NodeId
	return c.RawFileSystem.Open(cancel, &oin, &out.OpenOut)
}

func (c namesCounted) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return c.lookupIfResent(cancel, &in.InHeader, name, out, c.RawFileSystem.Mkdir(cancel, in, name, out))
}

func (c namesCounted) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return c.lookupIfResent(cancel, &in.InHeader, name, out, c.RawFileSystem.Mknod(cancel, in, name, out))
}

func (c namesCounted) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	return c.lookupIfResent(cancel, h, name, out, c.RawFileSystem.Symlink(cancel, h, target, name, out))
}

// lookupIfResent answers a resent request that made name and failed
// with EEXIST with the entry's lookup.
func (c namesCounted) lookupIfResent(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut, s fuse.Status) fuse.Status {
	if s != fuse.Status(syscall.EEXIST) || !resent(h) {
		return s
	}
	return c.RawFileSystem.Lookup(cancel, h, name, out)
}

func (c namesCounted) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return doneIfResent(h, c.RawFileSystem.Unlink(cancel, h, name))
}

func (c namesCounted) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return doneIfResent(h, c.RawFileSystem.Rmdir(cancel, h, name))
}

// doneIfResent answers 0 for a resent removal that found nothing.
func doneIfResent(h *fuse.InHeader, s fuse.Status) fuse.Status {
	if s == fuse.ENOENT && resent(h) {
		return fuse.OK
	}
	return s
}
