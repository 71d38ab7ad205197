package shim

import (
	"encoding/binary"
	"errors"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// result is a request's completion.
type result struct {
	status uint32 // statusDone or statusFallback
	reason uint32 // with statusFallback
	value  int64  // with statusDone: >= 0 the answer, < 0 -errno
}

func done(v int64) result           { return result{status: statusDone, value: v} }
func failed(e syscall.Errno) result { return result{status: statusDone, value: -int64(e)} }
func fallback(reason uint32) result { return result{status: statusFallback, reason: reason} }

// exec checks one request (copied out of shared memory) and runs it
// through Volume.Do with the file's inode and path; f is the file its
// handle names (c.file), nil if the channel holds none. Numbers that do
// not fit fail EINVAL; a handle the channel does not hold falls back.
func (c *channel) exec(f *file, r record) result {
	if f == nil || !f.acquire() {
		return fallback(ReasonStale)
	}
	defer f.release()
	switch r.op {
	case opRead:
		return c.read(f, r)
	case opWrite:
		return c.write(f, r)
	case opFsync, opFdatasync:
		return c.do(f, &gateway.Request{Op: gateway.OpSync, DataOnly: r.op == opFdatasync})
	case opFtruncate:
		if !f.writable {
			return failed(unix.EINVAL) // ftruncate(2) on an fd not open for writing
		}
		if r.length < 0 {
			return failed(unix.EINVAL)
		}
		return f.settled(c.do(f, &gateway.Request{Op: gateway.OpSetLength, Length: r.length}))
	case opFallocate:
		return f.settled(c.fallocate(f, r))
	case opFstat:
		return c.fstat(f, r)
	}
	c.s.stats.bad.Add(1)
	return failed(unix.EINVAL)
}

// do runs req on f's file and maps its error.
func (c *channel) do(f *file, req *gateway.Request) result {
	req.Inode, req.Door, req.Path = f.ino, gateway.DoorShim, f.path()
	if err := f.vol.Do(c.ctx, req); err != nil {
		return failed(c.errno(req.Op.String(), err))
	}
	return done(0)
}

func (c *channel) errno(op string, err error) syscall.Errno {
	e, ok := gateway.Errno(err)
	if !ok {
		c.log.Error("shim: request failed", "op", op, "err", err)
	}
	return e
}

// dataRange checks a read's or write's record: its slot data range, its
// file range, and that the fd allows the access (allowed). It returns the
// data's place in the shared memory, or the result to answer with.
func (c *channel) dataRange(r record, allowed bool) (lo, hi int, res result, ok bool) {
	lo, hi, err := c.l.dataRange(r.data, r.length)
	if err == nil {
		err = fileRange(r.offset, r.length)
	}
	if err != nil {
		c.s.stats.bad.Add(1)
		return 0, 0, failed(unix.EINVAL), false
	}
	if !allowed {
		return 0, 0, failed(unix.EBADF), false
	}
	return lo, hi, result{}, true
}

// read serves pread(2): it stops at the file's end, as the kernel does.
func (c *channel) read(f *file, r record) result {
	lo, hi, res, ok := c.dataRange(r, f.readable)
	if !ok {
		return res
	}
	size, err := f.size(c)
	if err != nil {
		return failed(c.errno("read", err))
	}
	if r.offset >= size || r.length == 0 {
		return done(0)
	}
	n := min(r.length, size-r.offset)
	req := gateway.Request{Op: gateway.OpRead, Offset: r.offset, Buf: c.mem[lo : lo+int(n) : hi]}
	if res := c.do(f, &req); res.value < 0 {
		return res
	}
	return done(n)
}

// write serves pwrite(2); an fd opened O_DSYNC or O_SYNC, or a write
// with writeFUA (pwritev2's RWF_DSYNC), writes FUA.
func (c *channel) write(f *file, r record) result {
	lo, hi, res, ok := c.dataRange(r, f.writable)
	if !ok {
		return res
	}
	if r.arg&^writeFUA != 0 {
		c.s.stats.bad.Add(1)
		return failed(unix.EINVAL)
	}
	if r.length == 0 {
		return done(0)
	}
	size, err := f.size(c)
	if err != nil {
		return failed(c.errno("write", err))
	}
	req := gateway.Request{Op: gateway.OpWrite, Offset: r.offset, Buf: c.mem[lo:hi:hi], Shared: true,
		FUA: f.dsync || r.arg&writeFUA != 0}
	if res := c.do(f, &req); res.value < 0 {
		return res
	}
	if r.offset+r.length > size || (f.cached != nil && f.cached(f.ino)) {
		return f.settled(done(r.length))
	}
	return done(r.length)
}

// size is the file's length: its word in the length table, which the
// engine's change reports keep current before any change returns
// (lengths.go), or else the engine's.
func (f *file) size(c *channel) (int64, error) {
	if f.length != nil {
		return f.length.get(), nil
	}
	return f.ns.Length(c.ctx, f.ino)
}

// settled waits until the mount's kernel caches have dropped what a
// change made stale: after a change of the file's length (a program that
// maps the file next, SQLite's WAL index, must fault on the new length,
// not SIGBUS on the old), and after an overwrite of a file whose pages
// the kernel may hold (Mount.PageCached). Other overwrites do not wait
// (docs/SHIM.md).
func (f *file) settled(res result) result {
	if f.settle != nil {
		f.settle()
	}
	return res
}

// fallocate serves fallocate(2), mapped by gateway.Fallocate as in the
// FUSE door.
func (c *channel) fallocate(f *file, r record) result {
	if r.offset < 0 || r.length <= 0 || fileRange(r.offset, r.length) != nil {
		return failed(unix.EINVAL)
	}
	if !f.writable {
		return failed(unix.EBADF)
	}
	req, err := gateway.Fallocate(r.arg, r.offset, r.length)
	if err != nil {
		return failed(c.errno("fallocate", err))
	}
	return c.do(f, &req)
}

// fstat writes the file's attributes (statLen bytes) to the request's
// data; the client fills st_dev from its registration.
func (c *channel) fstat(f *file, r record) result {
	lo, _, err := c.l.dataRange(r.data, statLen)
	if err != nil {
		c.s.stats.bad.Add(1)
		return failed(unix.EINVAL)
	}
	a, err := f.ns.GetAttr(c.ctx, f.ino)
	if err != nil {
		if errors.Is(err, gateway.ErrNotFound) {
			return fallback(ReasonStale)
		}
		return failed(c.errno("fstat", err))
	}
	var b [statLen]byte
	encodeStat(b[:], a)
	copy(c.mem[lo:lo+statLen], b[:])
	return done(statLen)
}

// encodeStat lays out a's fields as fstat's answer (docs/SHIM.md).
func encodeStat(b []byte, a gateway.Attr) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], a.Ino)
	le.PutUint64(b[8:], uint64(a.Size))
	le.PutUint64(b[16:], uint64(a.Blocks))
	le.PutUint32(b[24:], a.Mode)
	le.PutUint32(b[28:], a.Nlink)
	le.PutUint32(b[32:], a.UID)
	le.PutUint32(b[36:], a.GID)
	le.PutUint64(b[40:], uint64(a.Rdev))
	le.PutUint64(b[48:], uint64(a.Atime))
	le.PutUint64(b[56:], uint64(a.Mtime))
	le.PutUint64(b[64:], uint64(a.Ctime))
	le.PutUint32(b[72:], 4096) // st_blksize, as the FUSE door reports it
}
