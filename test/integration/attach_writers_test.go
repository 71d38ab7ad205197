package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// TestBlockVolumeOneWriter: a block volume has at most one writable door
// among attach, a read-write mount and a virtio export; a read-only mount
// is allowed beside the writer (issue 16: a second writer to an attached
// ext4 image went unnoticed).
func TestBlockVolumeOneWriter(t *testing.T) {
	testtool.Need(t, "losetup", "mkfs.ext4", "mount", "umount")
	g := startGateway(t, t.TempDir(), "--attach-method", "loop")
	g.mustSluice("volume", "create", "t/disk", "--size", "256M")
	newDir := func() string {
		d := filepath.Join(t.TempDir(), "mnt")
		must(t, os.Mkdir(d, 0o755))
		return d
	}
	refused := func(what string, args ...string) {
		t.Helper()
		out, code := g.sluice(args...)
		if code == 0 || !strings.Contains(out, "second writer") {
			t.Errorf("%s: exit %d, %q; want a refusal naming a second writer", what, code, out)
		}
	}

	dev := strings.TrimSpace(g.mustSluice("attach", "t/disk"))
	refused("read-write mount of an attached volume", "mount", "t/disk", newDir())
	refused("virtio export of an attached volume", "virtio", "export", "t/disk")
	ro := newDir()
	g.mustSluice("mount", "--read-only", "t/disk", ro)
	if _, err := os.Stat(filepath.Join(ro, "image")); err != nil {
		t.Fatalf("read-only mount beside the attachment: %v", err)
	}
	g.mustSluice("umount", ro)
	g.mustSluice("detach", dev)

	rw := newDir()
	g.mustSluice("mount", "t/disk", rw)
	refused("attach of a volume mounted read-write", "attach", "t/disk")
	refused("second read-write mount", "mount", "t/disk", newDir())
	g.mustSluice("umount", rw)

	g.mustSluice("virtio", "export", "t/disk")
	refused("attach of an exported volume", "attach", "t/disk")
	refused("read-write mount of an exported volume", "mount", "t/disk", newDir())
	g.mustSluice("virtio", "unexport", "t/disk")

	// fs volumes are not affected: their mounts share one namespace.
	g.mustSluice("volume", "create", "t/files", "--size", "64M", "--kind", "fs")
	a, b := newDir(), newDir()
	g.mustSluice("mount", "t/files", a)
	g.mustSluice("mount", "t/files", b)
	g.mustSluice("umount", a)
	g.mustSluice("umount", b)
}

// TestResizeAttachedVolume: growing an attached volume grows its loop
// device at once, and the ext4 on it grows with resize2fs while the
// device stays attached. (Offline: online resize needs CAP_SYS_RESOURCE,
// which this machine's root lacks.)
func TestResizeAttachedVolume(t *testing.T) {
	testtool.Need(t, "losetup", "mkfs.ext4", "mount", "umount", "resize2fs", "e2fsck", "blockdev")
	g := startGateway(t, t.TempDir(), "--attach-method", "loop")
	g.mustSluice("volume", "create", "t/disk", "--size", "256M")
	dev := strings.TrimSpace(g.mustSluice("attach", "t/disk"))
	t.Cleanup(func() { g.sluice("detach", dev) })
	run(t, 2*time.Minute, "mkfs.ext4", "-q", dev)
	mnt := filepath.Join(t.TempDir(), "ext4")
	must(t, os.Mkdir(mnt, 0o755))
	run(t, time.Minute, "mount", dev, mnt)
	// Whatever happens, leave no mount behind (a dead one breaks other
	// tests that walk the mount table, stress-ng's among them).
	t.Cleanup(func() { runCmd(time.Minute, "umount", "-l", mnt) })
	must(t, os.WriteFile(filepath.Join(mnt, "before-grow"), []byte("kept"), 0o644))

	g.mustSluice("volume", "resize", "t/disk", "--size", "512M")
	got, err := strconv.ParseInt(strings.TrimSpace(run(t, time.Minute, "blockdev", "--getsize64", dev)), 10, 64)
	if err != nil || got != 512<<20 {
		t.Fatalf("device size after resize: %d %v, want %d", got, err, 512<<20)
	}
	run(t, time.Minute, "umount", mnt)
	run(t, 2*time.Minute, "e2fsck", "-f", "-y", dev)
	run(t, 2*time.Minute, "resize2fs", dev)
	run(t, time.Minute, "mount", dev, mnt)
	var st syscall.Statfs_t
	must(t, syscall.Statfs(mnt, &st))
	if total := int64(st.Blocks) * st.Bsize; total < 400<<20 {
		t.Fatalf("ext4 has %d bytes after resize2fs, want about 512 MiB", total)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "before-grow")); err != nil || string(b) != "kept" {
		t.Fatalf("file written before the resize: %q %v", b, err)
	}
	must(t, os.WriteFile(filepath.Join(mnt, "after-grow"), make([]byte, 300<<20), 0o644))
}

// TestStopAbandonsMountedDevice: stopping the gateway under an ext4
// mounted on an attached device cannot keep the device alive; the
// gateway says so in its log, naming the device and where it is mounted,
// and stops without waiting on it (issue 16).
func TestStopAbandonsMountedDevice(t *testing.T) {
	testtool.Need(t, "losetup", "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	g := startGateway(t, dir, "--attach-method", "loop")
	g.mustSluice("volume", "create", "t/disk", "--size", "256M")
	dev := strings.TrimSpace(g.mustSluice("attach", "t/disk"))
	run(t, 2*time.Minute, "mkfs.ext4", "-q", dev)
	mnt := filepath.Join(t.TempDir(), "ext4")
	must(t, os.Mkdir(mnt, 0o755))
	run(t, time.Minute, "mount", dev, mnt)
	t.Cleanup(func() {
		runCmd(time.Minute, "umount", "-l", mnt)
		runCmd(time.Minute, "losetup", "--detach", dev)
	})
	start := time.Now()
	g.stop()
	took := time.Since(start)
	log := g.logTail()
	if !strings.Contains(log, "abandoning an attached device") || !strings.Contains(log, dev) || !strings.Contains(log, mnt) {
		t.Fatalf("the gateway's log does not name the abandoned device %s mounted on %s:\n%s", dev, mnt, log)
	}
	if took > 15*time.Second {
		t.Errorf("stopping took %v with an abandoned device", took)
	}
	t.Logf("stopped in %v", took)
}
