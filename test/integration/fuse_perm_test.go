package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// nobody is the unprivileged user the permission tests run commands as.
const nobodyID = 65534

// asNobody runs a command as uid/gid 65534 and returns its output and
// exit error.
func asNobody(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyID, Gid: nobodyID}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// openToAll makes every directory from dir up to / traversable, so that
// an unprivileged user reaches a mount under a test's temporary dir.
func openToAll(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		must(t, err)
		if fi.Mode().Perm()&0o005 != 0o005 {
			must(t, os.Chmod(d, fi.Mode().Perm()|0o005))
		}
	}
}

// TestFUSEModeZero: a mode of 0000 is stored and reported as 0000 by
// every way of making or changing an inode, across a restart, and the
// kernel's permission check (default_permissions) then refuses an
// unprivileged reader, as ext4 does.
func TestFUSEModeZero(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	mnt := g.mountVolume("t/perm", "fs", "64M")
	openToAll(t, mnt)
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	p := func(name string) string { return filepath.Join(mnt, name) }
	fd, err := syscall.Open(p("created"), syscall.O_CREAT|syscall.O_WRONLY, 0)
	must(t, err)
	syscall.Close(fd)
	must(t, syscall.Mknod(p("node"), syscall.S_IFREG, 0))
	must(t, syscall.Mkfifo(p("fifo"), 0))
	must(t, syscall.Mkdir(p("dir"), 0))
	must(t, os.WriteFile(p("secret"), []byte("secret\n"), 0o644))
	must(t, os.WriteFile(p("public"), []byte("public\n"), 0o644))
	// The control: nobody reads a 0644 file, so a refusal below comes
	// from the mode and not from the path.
	if out, err := asNobody("cat", p("public")); err != nil || out != "public\n" {
		t.Fatalf("nobody cannot read a 0644 file: %v %q", err, out)
	}
	must(t, os.Chmod(p("secret"), 0))
	tmp, err := unix.Open(mnt, unix.O_TMPFILE|unix.O_RDWR, 0)
	must(t, err)
	defer unix.Close(tmp)
	var st unix.Stat_t
	must(t, unix.Fstat(tmp, &st))
	if st.Mode&0o7777 != 0 {
		t.Errorf("O_TMPFILE with mode 0: mode %#o", st.Mode&0o7777)
	}

	names := []string{"created", "node", "fifo", "dir", "secret"}
	check := func(when string) {
		t.Helper()
		for _, name := range names {
			var st syscall.Stat_t
			must(t, syscall.Lstat(p(name), &st))
			if st.Mode&0o7777 != 0 {
				t.Errorf("%s: %s has mode %#o, want 0", when, name, st.Mode&0o7777)
			}
		}
		out, err := asNobody("cat", p("secret"))
		if err == nil || !strings.Contains(out, "Permission denied") {
			t.Errorf("%s: nobody read a mode-0 file: %v %q", when, err, out)
		}
	}
	check("on the mount")
	dropCaches(t)
	check("after drop_caches")
	unix.Close(tmp)
	g.stop()
	g.restart()
	g.mustSluice("mount", "t/perm", mnt)
	check("after a restart")
	// Root still reads it (CAP_DAC_OVERRIDE), and chmod restores access.
	b, err := os.ReadFile(p("secret"))
	if err != nil || string(b) != "secret\n" {
		t.Fatalf("root reads the mode-0 file: %v %q", err, b)
	}
	must(t, os.Chmod(p("secret"), 0o644))
	if out, err := asNobody("cat", p("secret")); err != nil || out != "secret\n" {
		t.Fatalf("after chmod 0644: %v %q", err, out)
	}
}
