package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"golang.org/x/sys/unix"
)

// mountVolume creates volume ref of kind and size, mounts it with the
// gateway's FUSE door and unmounts it when the test ends.
func (g *gw) mountVolume(ref, kind, size string) string {
	g.t.Helper()
	g.mustSluice("volume", "create", ref, "--size", size, "--kind", kind)
	dir := filepath.Join(g.t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		g.t.Fatal(err)
	}
	g.mustSluice("mount", ref, dir)
	g.t.Cleanup(func() {
		if g.cmd != nil {
			g.sluice("umount", dir)
		}
	})
	return dir
}

// posixSkips are posixtest cases that cannot pass against a mount served
// by another process, with the reason (also in docs/FUSE.md).
var posixSkips = map[string]string{
	"FcntlFlockLocksFile": "expects a F_SETLK conflict between two descriptors of the same process; " +
		"POSIX record locks belong to the process, so Linux reports none on any filesystem " +
		"(go-fuse's own posixtest.TestAll skips it too)",
}

// TestPosixSuite runs go-fuse's own conformance suite, posixtest.All,
// against a Sluice fs mount served by a separate gateway process.
func TestPosixSuite(t *testing.T) {
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/posix", "fs", "2G")
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			if why, ok := posixSkips[name]; ok {
				t.Skip(why)
			}
			dir := filepath.Join(mnt, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			posixtest.All[name](t, dir)
		})
	}
	fsckClean(t, g, "t/posix")
}

func fsckClean(t *testing.T, g *gw, ref string) {
	t.Helper()
	out, code := g.sluice("fsck", ref)
	if code != 0 || !strings.Contains(out, " pending records, ") || !strings.HasSuffix(out, "clean\n") {
		t.Fatalf("fsck %s: exit %d\n%s", ref, code, out)
	}
}

// The basics a user sees: files, links, xattrs, statfs from the volume,
// ENOSPC at the volume's size, and everything still there after a restart.
func TestFUSEBasicsAndRestart(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	mnt := g.mountVolume("t/fs", "fs", "64M")
	data := make([]byte, 5<<20+123)
	rand.Read(data)
	sum := sha256.Sum256(data)
	if err := os.MkdirAll(filepath.Join(mnt, "a/b/c"), 0o755); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(mnt, "a/b/c/data"), data, 0o644))
	must(t, os.Link(filepath.Join(mnt, "a/b/c/data"), filepath.Join(mnt, "hard")))
	must(t, os.Symlink("a/b/c/data", filepath.Join(mnt, "sym")))
	must(t, syscall.Setxattr(filepath.Join(mnt, "hard"), "user.k", []byte("v"), 0))

	var st syscall.Statfs_t
	must(t, syscall.Statfs(mnt, &st))
	if total := int64(st.Blocks) * st.Bsize; total != 64<<20 {
		t.Fatalf("statfs size %d, want the volume's 64 MiB", total)
	}
	// Filling the volume fails with ENOSPC, not a silent overrun.
	f, err := os.Create(filepath.Join(mnt, "fill"))
	must(t, err)
	_, werr := f.Write(make([]byte, 80<<20))
	f.Close()
	if !errorsIs(werr, syscall.ENOSPC) {
		t.Fatalf("writing past the volume's size: %v, want ENOSPC", werr)
	}
	must(t, os.Remove(filepath.Join(mnt, "fill")))
	fsckClean(t, g, "t/fs")

	g.stop()
	g.restart()
	g.mustSluice("mount", "t/fs", mnt)
	got, err := os.ReadFile(filepath.Join(mnt, "sym"))
	must(t, err)
	if sha256.Sum256(got) != sum {
		t.Fatal("file content changed across a restart")
	}
	fi, err := os.Stat(filepath.Join(mnt, "hard"))
	must(t, err)
	if fi.Sys().(*syscall.Stat_t).Nlink != 2 {
		t.Fatalf("nlink %d after restart, want 2", fi.Sys().(*syscall.Stat_t).Nlink)
	}
	buf := make([]byte, 10)
	n, err := syscall.Getxattr(filepath.Join(mnt, "hard"), "user.k", buf)
	if err != nil || string(buf[:n]) != "v" {
		t.Fatalf("xattr after restart: %q %v", buf[:n], err)
	}
	var vols []struct {
		Allocated int64 `json:"allocated"`
	}
	json.Unmarshal([]byte(g.mustSluice("volume", "list", "--json")), &vols)
	if len(vols) != 1 || vols[0].Allocated > 6<<20+128<<10 {
		t.Fatalf("volume holds %+v after deleting the filler, want about 5 MiB", vols)
	}
	fsckClean(t, g, "t/fs")
}

// Mount and umount refuse what they should, with one-line errors.
func TestFUSEMountBadInput(t *testing.T) {
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/fs", "fs", "64M")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"mount", "t/nope", t.TempDir()}, "not found"},
		{[]string{"mount", "t/fs", mnt}, "already"},
		{[]string{"mount", "t/fs", "/nonexistent/dir"}, "mount point"},
		{[]string{"mount", "t/fs"}, "want TENANT/NAME and DIR"},
		{[]string{"umount", t.TempDir()}, "no sluice mount"},
		{[]string{"volume", "delete", "t/fs"}, "mounted on " + mnt},
	} {
		out, code := g.sluice(c.args...)
		if code == 0 || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("sluice %v: exit %d, output %q; want a one-line error containing %q", c.args, code, out, c.want)
		}
	}
	// A busy mount is not unmounted.
	f, err := os.Create(filepath.Join(mnt, "open"))
	must(t, err)
	if out, code := g.sluice("umount", mnt); code == 0 {
		t.Errorf("umount with an open file succeeded: %s", out)
	}
	f.Close()
	// The kernel sends the file's release after close returns: the mount
	// is busy until it lands.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, code := g.sluice("umount", mnt)
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("umount after close, still failing after 10s: %s", out)
		}
	}
	// Unmounted, it can be deleted.
	g.mustSluice("volume", "delete", "t/fs")
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func errorsIs(err error, errno syscall.Errno) bool {
	for err != nil {
		if e, ok := err.(syscall.Errno); ok {
			return e == errno
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// fallocate(2) in each mode, ftruncate and fsync on a mount do what Linux
// says, and each enters the gateway's one data path: the volume's counters
// show them under the fuse door.
func TestFUSEFallocateTruncateSync(t *testing.T) {
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/fs", "fs", "64M")
	f, err := os.Create(filepath.Join(mnt, "f"))
	must(t, err)
	defer f.Close()
	fd := int(f.Fd())
	size := func() int64 {
		t.Helper()
		fi, err := f.Stat()
		must(t, err)
		return fi.Size()
	}
	must(t, unix.Fallocate(fd, 0, 0, 1<<20))
	if s := size(); s != 1<<20 {
		t.Fatalf("fallocate 1 MiB: size %d", s)
	}
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 1<<20, 1<<20))
	if s := size(); s != 1<<20 {
		t.Fatalf("fallocate keep-size: size %d, want 1 MiB", s)
	}
	data := bytes.Repeat([]byte{0xa5}, 3*4096)
	_, err = f.WriteAt(data, 0)
	must(t, err)
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096))
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 4096, 4096))
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE, 0, 4096); !errorsIs(err, syscall.EOPNOTSUPP) {
		t.Fatalf("punch hole without keep-size: %v, want EOPNOTSUPP", err)
	}
	must(t, unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 2<<20, 4096))
	if s := size(); s != 2<<20+4096 {
		t.Fatalf("zero range past the end: size %d, want %d", s, 2<<20+4096)
	}
	must(t, f.Truncate(3*4096))
	must(t, f.Sync())
	got, err := os.ReadFile(filepath.Join(mnt, "f"))
	must(t, err)
	want := append(make([]byte, 2*4096), data[:4096]...)
	if !bytes.Equal(got, want) {
		t.Fatalf("after punch, zero range and truncate: %d bytes, want two zero pages then 0xa5s", len(got))
	}
	ops := map[string]int{}
	for _, v := range g.stats().Volumes {
		for _, o := range v.Ops {
			if v.Ref == "t/fs" && o.Door == "fuse" {
				ops[o.Op]++
			}
		}
	}
	for _, op := range []string{"allocate", "discard", "write_zeroes", "set_length", "sync"} {
		if ops[op] == 0 {
			t.Errorf("no %s op counted for the fuse door: %v", op, ops)
		}
	}
	fsckClean(t, g, "t/fs")
}
