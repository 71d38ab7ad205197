package fuse

import (
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sluice-storage/sluice/gateway"
)

// fillAttr copies every field of the engine's inode record to the kernel's
// attributes: type and permission bits untouched (mode 0000 stays 0000),
// ids, rdev, size and 512-byte blocks as stored, a 4 KiB block size, and
// nanosecond times split into seconds and nanoseconds.
func TestFillAttr(t *testing.T) {
	ts := time.Date(2024, 2, 29, 12, 30, 45, 123456789, time.UTC).UnixNano()
	cases := []struct {
		name string
		a    gateway.Attr
	}{
		{"regular file", gateway.Attr{Ino: 7, Mode: syscall.S_IFREG | 0o644, Nlink: 1, UID: 1000, GID: 100, Size: 5000, Blocks: 16}},
		{"mode 0000", gateway.Attr{Ino: 8, Mode: syscall.S_IFREG, Nlink: 1}},
		{"setuid, setgid, sticky", gateway.Attr{Ino: 9, Mode: syscall.S_IFREG | syscall.S_ISUID | syscall.S_ISGID | syscall.S_ISVTX | 0o755, Nlink: 1}},
		{"directory", gateway.Attr{Ino: 1, Mode: syscall.S_IFDIR | 0o755, Nlink: 3, Size: 4096, Parent: 1}},
		{"symlink", gateway.Attr{Ino: 10, Mode: syscall.S_IFLNK | 0o777, Nlink: 1, Size: int64(len("target/of/link"))}},
		{"fifo", gateway.Attr{Ino: 11, Mode: syscall.S_IFIFO | 0o600, Nlink: 1}},
		{"socket", gateway.Attr{Ino: 12, Mode: syscall.S_IFSOCK | 0o600, Nlink: 1}},
		{"char device", gateway.Attr{Ino: 13, Mode: syscall.S_IFCHR | 0o620, Nlink: 1, Rdev: 5<<8 | 1}},
		{"block device", gateway.Attr{Ino: 14, Mode: syscall.S_IFBLK | 0o660, Nlink: 1, Rdev: 8<<8 | 16}},
		{"sparse file", gateway.Attr{Ino: 15, Mode: syscall.S_IFREG | 0o600, Nlink: 2, Size: 1 << 40, Blocks: 8}},
		{"times", gateway.Attr{Ino: 16, Mode: syscall.S_IFREG | 0o600, Nlink: 1, Atime: ts, Mtime: ts + 1, Ctime: ts + 999_999_999}},
		{"epoch", gateway.Attr{Ino: 17, Mode: syscall.S_IFREG | 0o600, Nlink: 1}},
	}
	for _, c := range cases {
		a := c.a
		var out fuse.Attr
		out.Mode = 0o7777 // stale values must not survive
		fillAttr(a, &out)
		if out.Ino != a.Ino || out.Nlink != a.Nlink || out.Uid != a.UID || out.Gid != a.GID || out.Rdev != a.Rdev {
			t.Errorf("%s: ino/nlink/uid/gid/rdev %d/%d/%d/%d/%d, want %d/%d/%d/%d/%d", c.name,
				out.Ino, out.Nlink, out.Uid, out.Gid, out.Rdev, a.Ino, a.Nlink, a.UID, a.GID, a.Rdev)
		}
		if out.Mode != a.Mode {
			t.Errorf("%s: mode %#o, want %#o", c.name, out.Mode, a.Mode)
		}
		if out.Size != uint64(a.Size) || out.Blocks != uint64(a.Blocks) || out.Blksize != 4096 {
			t.Errorf("%s: size %d blocks %d blksize %d, want %d %d 4096", c.name, out.Size, out.Blocks, out.Blksize, a.Size, a.Blocks)
		}
		for _, tm := range []struct {
			what string
			sec  uint64
			nsec uint32
			want int64
		}{
			{"atime", out.Atime, out.Atimensec, a.Atime},
			{"mtime", out.Mtime, out.Mtimensec, a.Mtime},
			{"ctime", out.Ctime, out.Ctimensec, a.Ctime},
		} {
			if tm.nsec >= 1e9 || time.Unix(int64(tm.sec), int64(tm.nsec)).UnixNano() != tm.want {
				t.Errorf("%s: %s %d s %d ns, want %v", c.name, tm.what, tm.sec, tm.nsec, time.Unix(0, tm.want).UTC())
			}
		}
	}
}

// The kernel takes the type from the mode fillAttr gives: each file type's
// bits survive as they are, and fuse.Attr reports the same type.
func TestFillAttrFileTypes(t *testing.T) {
	types := map[uint32]func(*fuse.Attr) bool{
		syscall.S_IFREG:  (*fuse.Attr).IsRegular,
		syscall.S_IFDIR:  (*fuse.Attr).IsDir,
		syscall.S_IFLNK:  (*fuse.Attr).IsSymlink,
		syscall.S_IFIFO:  (*fuse.Attr).IsFifo,
		syscall.S_IFSOCK: (*fuse.Attr).IsSocket,
		syscall.S_IFCHR:  (*fuse.Attr).IsChar,
		syscall.S_IFBLK:  (*fuse.Attr).IsBlock,
	}
	for typ, is := range types {
		var out fuse.Attr
		fillAttr(gateway.Attr{Ino: 2, Mode: typ, Nlink: 1}, &out)
		if !is(&out) || out.Mode&syscall.S_IFMT != typ || out.Mode&0o7777 != 0 {
			t.Errorf("type %#o: mode %#o", typ, out.Mode)
		}
	}
}

// Times before 1970 with a fraction of a second: FUSE wants the seconds
// rounded down and the nanoseconds in 0-999,999,999.
func TestFillAttrTimesBefore1970(t *testing.T) {
	when := time.Date(1960, 1, 1, 0, 0, 0, 500_000_000, time.UTC)
	var out fuse.Attr
	fillAttr(gateway.Attr{Mode: syscall.S_IFREG, Mtime: when.UnixNano(), Atime: -1, Ctime: 0}, &out)
	if got := time.Unix(int64(out.Mtime), int64(out.Mtimensec)); !got.Equal(when) || out.Mtimensec != 500_000_000 {
		t.Errorf("mtime %d s %d ns = %v, want %v", int64(out.Mtime), out.Mtimensec, got.UTC(), when)
	}
	if int64(out.Atime) != -1 || out.Atimensec != 999_999_999 {
		t.Errorf("atime -1 ns: %d s %d ns, want -1 s 999999999 ns", int64(out.Atime), out.Atimensec)
	}
	if out.Ctime != 0 || out.Ctimensec != 0 {
		t.Errorf("ctime 0: %d s %d ns", out.Ctime, out.Ctimensec)
	}
}
