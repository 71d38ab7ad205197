package shim

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// file is a registered fd: the gateway's copy of the client's fd (the
// same open file description, so the same access mode and flags), and
// what its requests need.
type file struct {
	fd       int  // an O_PATH descriptor of the file (for its name), closed on unregister
	dsync    bool // opened O_DSYNC or O_SYNC: every write is durable when answered
	vol      *gateway.Volume
	ns       gateway.Namespace
	ino      uint64
	readable bool
	writable bool

	dir     string            // the mount's directory
	renames func() uint64     // the mount's rename count; nil: never re-check
	settle  func()            // the mount's Settle; nil: none
	cached  func(uint64) bool // the mount's PageCached; nil: none
	length  *lengthRef        // its word in the channel's length table; nil: none

	at atomic.Pointer[named] // the path inside the volume, for QoS file rules and policies

	// use is held (read) by each request on the file and (write) by
	// close, so fd is not closed, and its number reused, under a request.
	use  sync.RWMutex
	gone bool
}

// acquire holds the file for one request; false once it is closed.
func (f *file) acquire() bool {
	f.use.RLock()
	if f.gone {
		f.use.RUnlock()
		return false
	}
	return true
}

func (f *file) release() { f.use.RUnlock() }

// close waits for the file's requests and closes our fd.
func (f *file) close(l *lengths) {
	f.use.Lock()
	defer f.use.Unlock()
	if !f.gone {
		f.gone = true
		unix.Close(f.fd)
		if f.length != nil {
			l.remove(f.ns, f.ino, f.length)
			f.length.t.release(f.length.i)
		}
	}
}

// path is the file's path inside its volume: the one it was registered
// with, looked up again (from the kernel's name for our fd) after a
// rename or link through the mount.
func (f *file) path() string {
	at := f.at.Load()
	if f.renames == nil {
		return at.path
	}
	n := f.renames() // before the name is read: a rename after this is seen next time
	if n == at.renames {
		return at.path
	}
	next := &named{renames: n, path: at.path}
	if p, ok := pathOf(f.fd, f.dir); ok {
		next.path = p
	}
	f.at.Store(next)
	return next.path
}

// named is a file's path as of a count of its mount's renames.
type named struct {
	renames uint64
	path    string
}

// pathOf is the path inside the volume mounted at dir of the file fd has
// open, from the kernel's name for it (/proc/self/fd: no request to the
// mount). An unlinked file keeps its last name.
func pathOf(fd int, dir string) (string, bool) {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", false
	}
	link = strings.TrimSuffix(link, " (deleted)")
	rel, ok := strings.CutPrefix(link, strings.TrimSuffix(dir, "/")+"/")
	return rel, ok
}

// file returns the registered file of handle h, or nil.
func (c *channel) file(h uint64) *file {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.files[h]
}

// register checks fd, a descriptor the client handed over, and keeps it
// as a handle. This is the proof of access: the client could only send
// what it could open through the kernel. The checks read the received fd
// itself, never the client's word: the kernel's type, device and inode
// (statx without asking the mount: AT_STATX_DONT_SYNC), and the open
// file's flags (access mode, O_APPEND, O_PATH). It must be a regular file
// of one of this gateway's fs mounts. fd is closed unless kept.
func (c *channel) register(fd int, clientFd uint32) registered {
	r, f := c.check(fd)
	unix.Close(fd) // the file keeps an O_PATH descriptor (check)
	if r.Reason != ReasonNone {
		c.s.stats.refused[r.Reason].Add(1)
		c.log.Debug("shim: fd not served", "fd", clientFd, "reason", ReasonName(r.Reason))
		return r
	}
	c.mu.Lock()
	if len(c.files) >= c.s.opt.MaxHandles {
		c.mu.Unlock()
		f.close(&c.s.lens)
		c.s.stats.refused[ReasonTooMany].Add(1)
		return registered{Reason: ReasonTooMany, Dev: r.Dev, Ino: r.Ino}
	}
	c.next++
	r.Handle = c.next
	c.files[r.Handle] = f
	c.mu.Unlock()
	c.s.stats.registered.Add(1)
	c.s.stats.handles.Add(1)
	if c.lens != nil {
		if i := c.lens.alloc(); i != 0 {
			ref := &lengthRef{t: c.lens, i: i}
			if err := c.s.lens.add(f.ns, f.ino, ref); err == nil {
				f.length = ref
				r.LengthWord = i
			} else {
				c.lens.release(i)
			}
		}
	}
	return r
}

// check is register's verdict on fd, and the file to keep.
func (c *channel) check(fd int) (registered, *file) {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return registered{Reason: ReasonError}, nil
	}
	if flags&unix.O_PATH != 0 {
		return registered{Reason: ReasonPath}, nil
	}
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE|unix.STATX_INO, &st); err != nil {
		return registered{Reason: ReasonError}, nil
	}
	r := registered{Dev: unix.Mkdev(st.Dev_major, st.Dev_minor), Ino: st.Ino}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		r.Reason = ReasonNotRegular
		return r, nil
	}
	m, ok := c.s.mounts.ByDevice(r.Dev)
	if !ok {
		r.Reason = ReasonNotSluice
		return r, nil
	}
	if flags&unix.O_APPEND != 0 {
		r.Reason = ReasonAppend
		return r, nil
	}
	ns := m.Volume.Namespace()
	if ns == nil {
		r.Reason = ReasonNotSluice
		return r, nil
	}
	if a, err := ns.GetAttr(c.ctx, r.Ino); err != nil || !a.IsRegular() {
		c.log.Warn("shim: a file of a mount is not a regular file of its volume", "volume", m.Volume.Ref(), "ino", r.Ino, "err", err)
		r.Reason = ReasonError
		return r, nil
	}
	// We keep an O_PATH descriptor, not the client's open file: closing
	// an open file of our own mount sends FLUSH to ourselves, which a
	// gateway that is being killed can never answer (its exit would
	// hang). Opening O_PATH asks nothing of the mount.
	opath, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		r.Reason = ReasonError
		return r, nil
	}
	f := &file{fd: opath, dsync: flags&unix.O_DSYNC != 0, vol: m.Volume, ns: ns, ino: r.Ino, dir: m.Dir, renames: m.Renames, settle: m.Settle, cached: m.PageCached}
	switch flags & unix.O_ACCMODE {
	case unix.O_RDONLY:
		f.readable = true
	case unix.O_WRONLY:
		f.writable = true
	case unix.O_RDWR:
		f.readable, f.writable = true, true
	}
	if m.ReadOnly || m.Volume.ReadOnly() {
		f.writable = false
	}
	at := &named{}
	if f.renames != nil {
		at.renames = f.renames()
	}
	at.path, _ = pathOf(opath, m.Dir)
	f.at.Store(at)
	if f.readable {
		r.Flags |= regReadable
	}
	if f.writable {
		r.Flags |= regWritable
	}
	if f.cached != nil && flags&unix.O_ACCMODE == unix.O_RDONLY && flags&unix.O_DIRECT == 0 {
		r.Flags |= regCached
	}
	return r, f
}

// unregister forgets handle h (the client closed its fd). An unknown
// handle is ignored: the client may have raced a close with a failure.
func (c *channel) unregister(h uint64) {
	c.mu.Lock()
	f := c.files[h]
	delete(c.files, h)
	c.mu.Unlock()
	if f != nil {
		f.close(&c.s.lens)
		c.s.stats.handles.Add(-1)
	}
}
