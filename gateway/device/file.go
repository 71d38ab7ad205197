package device

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is a Device on a regular file or a block device.
type File struct {
	f         *os.File
	fd        int
	size      int64
	blockDev  bool
	punchHole bool // regular file whose filesystem supports FALLOC_FL_PUNCH_HOLE
}

// OpenFile opens path as a device, creating it if it does not exist (the
// gateway's default pool file): see OpenFileWith.
func OpenFile(path string, size int64) (*File, error) {
	return OpenFileWith(path, FileOptions{Size: size, Create: true})
}

// FileOptions say how OpenFileWith treats a path.
type FileOptions struct {
	// Size: a regular file smaller than Size is grown (sparse); a new one
	// is created with it. 0 means "whatever it is".
	Size int64
	// Create allows creating a regular file that does not exist. Without
	// it a missing path is an error: a mistyped /dev/sdX must not become
	// a file.
	Create bool
}

// OpenFileWith opens path as a device: a regular file or a block device.
// A regular file holds every volume's data, so its mode is made 0600 if
// group or others had any access.
func OpenFileWith(path string, opts FileOptions) (*File, error) {
	flags := os.O_RDWR
	if opts.Create {
		flags |= os.O_CREATE
	}
	size := opts.Size
	f, err := os.OpenFile(path, flags, 0o600)
	if errors.Is(err, os.ErrNotExist) && !opts.Create {
		return nil, fmt.Errorf("device %s does not exist: name an existing block device or file (create a pool file with `truncate -s 64G %s`)", path, path)
	}
	if err != nil {
		return nil, fmt.Errorf("device: open %s: %w", path, err)
	}
	d := &File{f: f, fd: int(f.Fd())}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("device: stat %s: %w", path, err)
	}
	switch {
	case fi.Mode()&os.ModeDevice != 0:
		d.blockDev = true
		var sz uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&sz))); e != 0 {
			f.Close()
			return nil, fmt.Errorf("device: BLKGETSIZE64 %s: %w", path, e)
		}
		d.size = int64(sz)
	case fi.Mode().IsRegular():
		if fi.Mode().Perm()&0o077 != 0 {
			if err := f.Chmod(0o600); err != nil {
				f.Close()
				return nil, fmt.Errorf("device: %s has mode %04o and chmod 0600 failed: %w", path, fi.Mode().Perm(), err)
			}
		}
		d.size = fi.Size()
		if size > d.size {
			if err := f.Truncate(size); err != nil {
				f.Close()
				return nil, fmt.Errorf("device: grow %s to %d: %w", path, size, err)
			}
			d.size = size
		}
		d.punchHole = probePunchHole(d.fd, d.size)
	default:
		f.Close()
		return nil, fmt.Errorf("device: %s is neither a regular file nor a block device", path)
	}
	if d.size == 0 {
		f.Close()
		return nil, fmt.Errorf("device: %s has size 0; give a size", path)
	}
	return d, nil
}

// probePunchHole checks that the filesystem can punch holes, by punching an
// empty-range-safe hole in the last byte of a sparse file only when it is
// already a hole. Punching a hole over a hole is harmless either way.
func probePunchHole(fd int, size int64) bool {
	if size == 0 {
		return false
	}
	// Punching over data would destroy it, so probe with a zero-length-safe
	// call: fallocate with length 0 is EINVAL everywhere, so instead ask for a
	// range past EOF, which changes nothing and succeeds only if supported.
	err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, size, 4096)
	return err == nil
}

// ReadAt reads len(p) bytes at off.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		m, err := unix.Pread(d.fd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("device: pread at %d: %w", off+int64(n), err)
		}
		if m == 0 { // past the end of a file that shrank underneath us
			clear(p[n:])
			return len(p), nil
		}
		n += m
	}
	return n, nil
}

// maxWriteLen is the most one pwrite carries. The page cache sizes the
// folios a buffered write creates by the write's length (Linux 6.x large
// folios; ext4 has them since 6.16), and a folio stays that size. A later
// 4 KiB overwrite inside a 1 MiB folio then walks its 256 buffer heads
// under the file's exclusive inode lock and dirties the whole MiB for
// writeback: on this kernel random 4 KiB writes ran at ~28K IOPS into a
// pool filled by 1 MiB writes and at ~88K into one filled by 64 KiB
// writes, while 1 MiB sequential writes kept their speed (bench/nbd.sh;
// docs/BENCHMARKS.md). 64 KiB is also the default chunk size: no folio
// spans two chunks.
const maxWriteLen = 64 << 10

// WriteAt writes p at off, at most maxWriteLen bytes per pwrite.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		m, err := unix.Pwrite(d.fd, p[n:n+min(len(p)-n, maxWriteLen)], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("device: pwrite at %d: %w", off+int64(n), err)
		}
		n += m
	}
	return n, nil
}

// WriteAtSync writes p at off and makes it durable before returning
// (pwritev2 with RWF_DSYNC), for FUA writes that touch no metadata; at
// most maxWriteLen bytes per call, like WriteAt.
func (d *File) WriteAtSync(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		m, err := unix.Pwritev2(d.fd, [][]byte{p[n : n+min(len(p)-n, maxWriteLen)]}, off+int64(n), unix.RWF_DSYNC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("device: pwritev2(RWF_DSYNC) at %d: %w", off+int64(n), err)
		}
		n += m
	}
	return n, nil
}

// Flush makes completed writes durable (fdatasync).
func (d *File) Flush() error {
	for {
		err := unix.Fdatasync(d.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("device: fdatasync: %w", err)
		}
		return nil
	}
}

// Discard punches a hole (regular file) or issues BLKDISCARD (block device).
// On a file system without hole punching it writes zeros instead, so
// DiscardZeroes stays true for every regular file.
func (d *File) Discard(off, length int64) error {
	if err := checkRange(off, length, d.size); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	switch {
	case d.blockDev:
		r := [2]uint64{uint64(off), uint64(length)}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r))); e != 0 {
			return fmt.Errorf("device: BLKDISCARD %d+%d: %w", off, length, e)
		}
		return nil
	case d.punchHole:
		err := unix.Fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("device: punch hole %d+%d: %w", off, length, err)
		}
		d.punchHole = false
	}
	return writeZeros(d, off, length)
}

func writeZeros(d Device, off, length int64) error {
	zero := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if _, err := d.WriteAt(zero[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// DiscardZeroes is true for regular files. Block devices make no promise
// (BLKDISCARD may leave old data), so the store zero-fills there.
func (d *File) DiscardZeroes() bool { return !d.blockDev }

// Size is the device size in bytes.
func (d *File) Size() int64 { return d.size }

// Allocated reports the bytes the host filesystem holds for a regular file
// (st_blocks), which is how thin provisioning shows up from outside.
func (d *File) Allocated() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return 0, fmt.Errorf("device: fstat: %w", err)
	}
	return st.Blocks * 512, nil
}

// Close closes the file.
func (d *File) Close() error { return d.f.Close() }
