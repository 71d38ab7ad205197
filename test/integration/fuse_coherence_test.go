package integration

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestFUSEMountsStayCoherent mounts one fs volume twice and changes it
// through one mount while the other has cached the names, attributes and
// pages involved. The kernel keeps those for an hour (fuse/notify.go); the
// other mount must see every change within a few milliseconds, which only
// the engine's change reports can make happen.
func TestFUSEMountsStayCoherent(t *testing.T) {
	g := startGateway(t, t.TempDir())
	a := g.mountVolume("t/co", "fs", "256M")
	b := filepath.Join(t.TempDir(), "b")
	must(t, os.Mkdir(b, 0o755))
	g.mustSluice("mount", "t/co", b)
	t.Cleanup(func() {
		if g.cmd != nil {
			g.sluice("umount", b)
		}
	})
	// soon fails the test unless cond holds within 500 ms (the kernel
	// caches for an hour).
	soon := func(what string, cond func() (bool, string)) {
		t.Helper()
		var last string
		for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
			var ok bool
			if ok, last = cond(); ok {
				return
			}
		}
		t.Fatalf("not seen within 500 ms: %s (last: %s)", what, last)
	}
	statB := func(name string) (os.FileInfo, error) { return os.Stat(filepath.Join(b, name)) }

	// A name b looked up and found missing (a cached negative entry).
	if _, err := statB("x"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat of a missing name: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(a, "x"), []byte("one"), 0o644))
	soon("mount b: a file created through a", func() (bool, string) {
		got, err := os.ReadFile(filepath.Join(b, "x"))
		return err == nil && string(got) == "one", string(got) + " " + errString(err)
	})

	// Pages b holds in its page cache, through a descriptor it keeps open.
	fb, err := os.Open(filepath.Join(b, "x"))
	must(t, err)
	defer fb.Close()
	buf := make([]byte, 3)
	if _, err := fb.ReadAt(buf, 0); err != nil || string(buf) != "one" {
		t.Fatalf("read through b: %q, %v", buf, err)
	}
	fa, err := os.OpenFile(filepath.Join(a, "x"), os.O_WRONLY, 0)
	must(t, err)
	_, err = fa.WriteAt([]byte("two"), 0)
	must(t, err)
	must(t, fa.Close())
	soon("mount b: data overwritten through a, on a descriptor opened before", func() (bool, string) {
		_, err := fb.ReadAt(buf, 0)
		return err == nil && string(buf) == "two", string(buf) + " " + errString(err)
	})

	// Attributes b holds: size, mode.
	if st, err := statB("x"); err != nil || st.Size() != 3 {
		t.Fatalf("stat through b: %v, %v", st, err)
	}
	must(t, os.WriteFile(filepath.Join(a, "x"), []byte("three!"), 0o644))
	must(t, os.Chmod(filepath.Join(a, "x"), 0o600))
	soon("mount b: the size and mode changed through a", func() (bool, string) {
		st, err := statB("x")
		if err != nil {
			return false, err.Error()
		}
		return st.Size() == 6 && st.Mode().Perm() == 0o600, st.Mode().String()
	})

	// Hard links: b knows the inode under two names (its lookup of the
	// second finds the inode the kernel already has); a change of the
	// inode through a reaches b under either name.
	h := filepath.Join(a, "h")
	must(t, os.WriteFile(h, []byte("hi"), 0o600))
	soon("mount b: a new file", func() (bool, string) {
		_, err := statB("h")
		return err == nil, errString(err)
	})
	must(t, os.Link(h, filepath.Join(a, "h2")))
	// The link's reports must reach b before b looks h2 up (a late one
	// would drop the entry b looked up, and the chmod below would be seen
	// through a new lookup). b is told of changes in order, so once b sees
	// a later change (x's mode), it has been told of the link.
	must(t, os.Chmod(filepath.Join(a, "x"), 0o644))
	soon("mount b: a mode change through a, after the link", func() (bool, string) {
		st, err := statB("x")
		if err != nil {
			return false, err.Error()
		}
		return st.Mode().Perm() == 0o644, st.Mode().String()
	})
	if _, err := statB("h2"); err != nil {
		t.Fatalf("mount b: a hard link made through a: %v", err)
	}
	must(t, os.Chmod(h, 0o640))
	soon("mount b: a mode change through a, under the second name", func() (bool, string) {
		st, err := statB("h2")
		if err != nil {
			return false, err.Error()
		}
		return st.Mode().Perm() == 0o640, st.Mode().String()
	})
	must(t, os.Remove(h))
	must(t, os.Remove(filepath.Join(a, "h2")))

	// Names: a rename into a new directory, then an unlink.
	must(t, os.Mkdir(filepath.Join(a, "d"), 0o755))
	must(t, os.Rename(filepath.Join(a, "x"), filepath.Join(a, "d", "y")))
	soon("mount b: a rename through a", func() (bool, string) {
		_, errOld := statB("x")
		got, err := os.ReadFile(filepath.Join(b, "d", "y"))
		return errors.Is(errOld, fs.ErrNotExist) && err == nil && string(got) == "three!", errString(errOld) + " " + errString(err)
	})
	must(t, os.Remove(filepath.Join(a, "d", "y")))
	soon("mount b: an unlink through a", func() (bool, string) {
		_, err := statB("d/y")
		return errors.Is(err, fs.ErrNotExist), errString(err)
	})
	// b's own changes reach a the same way.
	must(t, os.Symlink("target", filepath.Join(b, "d", "l")))
	soon("mount a: a symlink made through b", func() (bool, string) {
		l, err := os.Readlink(filepath.Join(a, "d", "l"))
		return err == nil && l == "target", l + " " + errString(err)
	})
	must(t, os.Remove(filepath.Join(b, "d", "l")))
	must(t, syscall.Rmdir(filepath.Join(b, "d")))
	soon("mount a: a directory removed through b", func() (bool, string) {
		_, err := os.Stat(filepath.Join(a, "d"))
		return errors.Is(err, fs.ErrNotExist), errString(err)
	})
	fsckClean(t, g, "t/co")
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
