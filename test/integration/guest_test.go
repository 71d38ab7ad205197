package integration

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// A guest for the tests that need a kernel this machine does not run
// (vhost-user-blk over QEMU, the kernel nbd driver): Debian's kernel
// (apt-get download, never installed) and a busybox initramfs built here,
// booted by QEMU under TCG with its RAM in a shared memfd, so a
// vhost-user back-end can map it. Booting takes about 8 s on this class of
// machine.

// guestKit holds what a boot needs.
type guestKit struct {
	kernel  string            // vmlinuz
	modules map[string]string // module name → .ko path
	busybox string
}

var (
	kitOnce sync.Once
	kit     guestKit
	kitErr  error
)

// virtioModules are the virtio-blk stack, in insmod order (all =m in Debian).
var virtioModules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk"}

// nbdModules are the nbd driver and ext4 (which mounts the ext2 that
// busybox's mke2fs makes), in insmod order.
var nbdModules = []string{"nbd", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4"}

// guestCache is where the kernel and busybox packages are kept between
// runs; `make deps` fills it (test/integration/guest-fetch.sh).
func guestCache() string {
	if d := os.Getenv("SLUICE_GUEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/sluice-test-guest"
}

// loadGuestKit finds (fetching once if needed) the kernel, modules and busybox.
func loadGuestKit(t *testing.T) guestKit {
	t.Helper()
	testtool.Need(t, "qemu-system-x86_64", "apt-get", "dpkg-deb")
	kitOnce.Do(func() {
		dir := guestCache()
		// The script decides whether the cache is complete (it checks
		// its content, and returns at once when it is).
		script, _ := filepath.Abs("guest-fetch.sh")
		if out, err := exec.Command("bash", script, dir).CombinedOutput(); err != nil {
			kitErr = fmt.Errorf("guest-fetch.sh: %v\n%s", err, out)
			return
		}
		kernels, _ := filepath.Glob(filepath.Join(dir, "root/boot/vmlinuz-*"))
		if len(kernels) != 1 {
			kitErr = fmt.Errorf("want one kernel in %s, found %v", dir, kernels)
			return
		}
		kit.kernel = kernels[0]
		kit.busybox = filepath.Join(dir, "root/bin/busybox")
		kit.modules = map[string]string{}
		filepath.WalkDir(filepath.Join(dir, "root/lib/modules"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(p, ".ko") {
				kit.modules[strings.TrimSuffix(d.Name(), ".ko")] = p
			}
			return nil
		})
		for _, m := range append(slices.Clone(virtioModules), nbdModules...) {
			if kit.modules[m] == "" {
				kitErr = fmt.Errorf("module %s is not in %s", m, dir)
				return
			}
		}
	})
	if kitErr != nil {
		t.Fatalf("guest kit: %v", kitErr)
	}
	return kit
}

// guestImage is what an initramfs holds besides busybox.
type guestImage struct {
	script  string     // run by /init after the mounts and modules
	modules []string   // loaded in order
	files   []cpioFile // extra files (their directories must be listed first)
	waitVDA bool       // wait for /dev/vda before the script
}

// initramfs builds a gzipped newc cpio archive with busybox, the image's
// modules and files, and /init running its script (after mounting /proc,
// /sys, /dev and /tmp and loading the modules).
func (k guestKit) initramfs(t *testing.T, img guestImage) string {
	t.Helper()
	var modLoad strings.Builder
	files := []cpioFile{ // directories first: the kernel unpacks in order
		{name: "bin", mode: 0o040755}, {name: "lib", mode: 0o040755},
		{name: "proc", mode: 0o040755}, {name: "sys", mode: 0o040755},
		{name: "dev", mode: 0o040755}, {name: "tmp", mode: 0o041777},
		{name: "mnt", mode: 0o040755},
	}
	for _, m := range img.modules {
		b, err := os.ReadFile(k.modules[m])
		if err != nil {
			t.Fatal(err)
		}
		name := "lib/" + m + ".ko"
		files = append(files, cpioFile{name: name, mode: 0o100644, data: b})
		fmt.Fprintf(&modLoad, "insmod /%s\n", name)
	}
	bb, err := os.ReadFile(k.busybox)
	if err != nil {
		t.Fatal(err)
	}
	wait := ""
	if img.waitVDA {
		wait = "for i in $(seq 1 100); do [ -b /dev/vda ] && break; sleep 0.1; done\n"
	}
	init := "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n" +
		"mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp\n" +
		modLoad.String() + wait +
		"echo GUEST_START\n" + img.script + "\necho GUEST_END\npoweroff -f\n"
	files = append(files, img.files...)
	files = append(files,
		cpioFile{name: "bin/busybox", mode: 0o100755, data: bb},
		cpioFile{name: "init", mode: 0o100755, data: []byte(init)})
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	writeCpio(zw, files)
	zw.Close()
	path := filepath.Join(t.TempDir(), "initrd.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

type cpioFile struct {
	name string
	mode uint32
	data []byte
}

// writeCpio writes files in the "newc" format the kernel unpacks.
func writeCpio(w interface{ Write([]byte) (int, error) }, files []cpioFile) {
	pad := func(n int) {
		if r := n % 4; r != 0 {
			w.Write(make([]byte, 4-r))
		}
	}
	for i, f := range append(files, cpioFile{name: "TRAILER!!!"}) {
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			i+1, f.mode, 0, 0, 1, 0, len(f.data), 0, 0, 0, 0, len(f.name)+1, 0)
		w.Write([]byte(hdr))
		w.Write(append([]byte(f.name), 0))
		pad(len(hdr) + len(f.name) + 1)
		w.Write(f.data)
		pad(len(f.data))
	}
}

// bootGuest boots the kit with a vhost-user-blk disk on socket and returns
// what the guest printed between GUEST_START and GUEST_END.
func (k guestKit) bootGuest(t *testing.T, socket, script string) string {
	t.Helper()
	initrd := k.initramfs(t, guestImage{script: script, modules: virtioModules, waitVDA: true})
	return k.boot(t, initrd, "256M", 3*time.Minute,
		"-chardev", "socket,id=vub0,path="+socket, "-device", "vhost-user-blk-pci,chardev=vub0,num-queues=1")
}

// boot runs QEMU on initrd with mem of RAM (in a shared memfd) and extra
// arguments until the guest powers off, and returns what it printed
// between GUEST_START and GUEST_END.
func (k guestKit) boot(t *testing.T, initrd, mem string, timeout time.Duration, extra ...string) string {
	t.Helper()
	args := []string{"-accel", "tcg", "-machine", "q35,memory-backend=mem",
		"-cpu", "max", "-smp", "1", "-m", mem,
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-kernel", k.kernel, "-initrd", initrd, "-append", "console=ttyS0 quiet panic=-1 rdinit=/init",
		"-nographic", "-no-reboot", "-serial", "stdio", "-monitor", "none", "-display", "none"}
	cmd := exec.Command("qemu-system-x86_64", append(args, extra...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("qemu: %v\n%s", err, out.String())
		}
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("guest did not finish in %v\n%s", timeout, out.String())
	}
	t.Logf("guest ran in %.1fs", time.Since(start).Seconds())
	m := regexp.MustCompile(`(?s)GUEST_START\r?\n(.*)GUEST_END`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("guest output lacks its markers:\n%s", out.String())
	}
	return m[1]
}

// guestDirectIO is the guest side of the end-to-end test: 16 MiB of random
// data written to /dev/vda with O_DIRECT, read back with O_DIRECT, compared,
// and its SHA-256 printed.
const guestDirectIO = `dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null
dd if=/tmp/data of=/dev/vda bs=1M oflag=direct 2>/dev/null || echo WRITE_FAILED
sync
dd if=/dev/vda of=/tmp/back bs=1M count=16 iflag=direct 2>/dev/null || echo READ_FAILED
cmp /tmp/data /tmp/back && echo GUEST_IO_OK
echo GUEST_SHA=$(sha256sum /tmp/data | cut -d' ' -f1)`

func guestSHA(t *testing.T, out string) string {
	t.Helper()
	if !strings.Contains(out, "GUEST_IO_OK") {
		t.Fatalf("guest IO failed:\n%s", out)
	}
	m := regexp.MustCompile(`GUEST_SHA=([0-9a-f]{64})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no GUEST_SHA in:\n%s", out)
	}
	return m[1]
}
