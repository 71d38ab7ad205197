package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// attach → mkfs.ext4 → mount → write files with known hashes → umount →
// detach → attach again → fsck.ext4 -n clean → hashes match. Attaching twice,
// attaching an fs volume, detaching a busy device and deleting an attached
// volume are refused. The loop method, as on this machine; the nbd method
// runs in a guest (TestAttachKernelNBD).
func TestAttachExt4(t *testing.T) {
	testtool.Need(t, "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount")
	g := startGateway(t, t.TempDir(), "--attach-method", "loop")
	g.mustSluice("volume", "create", "t/disk", "--size", "1G")
	g.mustSluice("volume", "create", "t/files", "--size", "1G", "--kind", "fs")
	dev := strings.TrimSpace(g.mustSluice("attach", "t/disk"))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("attach printed %q, want a loop device", dev)
	}
	detached := false
	t.Cleanup(func() {
		if !detached {
			g.sluice("detach", dev)
		}
	})
	if dio, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop/dio")); err != nil || strings.TrimSpace(string(dio)) != "1" {
		t.Errorf("loop device without direct IO (dio=%q, %v): page cache between loop and gateway", dio, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"attach", "t/disk"}, "already attached"},
		{[]string{"attach", "t/files"}, "fs volume"},
		{[]string{"attach", "t/none"}, "not found"},
		{[]string{"detach", "/dev/loop999"}, "not a device sluice attached"},
		{[]string{"volume", "delete", "t/disk"}, "attached as " + dev},
	} {
		if out, code := g.sluice(c.args...); code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("sluice %v: exit %d, %q; want an error containing %q", c.args, code, out, c.want)
		}
	}

	run(t, 2*time.Minute, "mkfs.ext4", "-q", dev)
	mnt := filepath.Join(t.TempDir(), "ext4")
	must(t, os.Mkdir(mnt, 0o755))
	run(t, time.Minute, "mount", dev, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			run(t, time.Minute, "umount", mnt)
		}
	})
	sums := map[string][32]byte{}
	for i := 0; i < 20; i++ {
		data := make([]byte, 100000*(i+1))
		rand.Read(data)
		name := fmt.Sprintf("f%02d", i)
		must(t, os.WriteFile(filepath.Join(mnt, name), data, 0o644))
		sums[name] = sha256.Sum256(data)
	}
	if out, code := g.sluice("detach", dev); code == 0 || !strings.Contains(out, "busy") {
		t.Errorf("detach of a mounted device: exit %d, %q; want a busy error", code, out)
	}
	run(t, time.Minute, "umount", mnt)
	mounted = false
	g.mustSluice("detach", dev)
	detached = true

	dev = strings.TrimSpace(g.mustSluice("attach", "t/disk"))
	detached = false
	run(t, 2*time.Minute, "fsck.ext4", "-n", "-f", dev)
	run(t, time.Minute, "mount", dev, mnt)
	mounted = true
	for name, sum := range sums {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || sha256.Sum256(got) != sum {
			t.Fatalf("%s after detach and re-attach: %v (hash match %v)", name, err, err == nil && sha256.Sum256(got) == sum)
		}
	}
	run(t, time.Minute, "umount", mnt)
	mounted = false
	g.mustSluice("detach", dev)
	detached = true
}

// --attach-method nbd where the kernel has no nbd driver is a start-up
// error that says so, not a silent fall back to loop.
func TestAttachMethodNBDWithoutDriver(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Skip("this kernel has the nbd driver loaded")
	}
	out, err := exec.Command(sluiceBin, "gateway", "--data-dir", t.TempDir(), "--nbd-listen", "", "--attach-method", "nbd").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "nbd driver is not available") {
		t.Fatalf("gateway --attach-method nbd without the driver: %v\n%s", err, out)
	}
	out, err = exec.Command(sluiceBin, "gateway", "--data-dir", t.TempDir(), "--attach-method", "floppy").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--attach-method must be") {
		t.Fatalf("gateway --attach-method floppy: %v\n%s", err, out)
	}
}
