package integration

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/posixtest"

	"github.com/sluice-storage/sluice/internal/spdktest"
	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
)

// spdkTarget starts SPDK's vhost target (spdktest's 256 MiB of huge-page
// memory, which holds a malloc bdev of 64 MiB, not 128) with a malloc bdev
// "M0" of mallocMiB and an aio bdev "A0" over a sparse file
// of aioMiB (aio bdevs use O_DIRECT, so the file's page cache is not in
// the way).
func spdkTarget(t *testing.T, mallocMiB, aioMiB int) (*spdktest.Target, *rpc.Client) {
	t.Helper()
	tg := spdktest.Start(t, spdktest.Options{})
	ctx := t.Context()
	rc, err := rpc.Dial(ctx, tg.RPCSocket, rpc.Options{})
	must(t, err)
	t.Cleanup(func() { rc.Close() })
	if mallocMiB > 0 {
		if _, err := rc.BdevMallocCreate(ctx, rpc.MallocBdev{Name: "M0", NumBlocks: uint64(mallocMiB) << 8, BlockSize: 4096}); err != nil {
			t.Fatal(err)
		}
	}
	if aioMiB > 0 {
		img := filepath.Join(t.TempDir(), "aio.img")
		must(t, os.WriteFile(img, nil, 0o600))
		must(t, os.Truncate(img, int64(aioMiB)<<20))
		if _, err := rc.BdevAIOCreate(ctx, rpc.AIOBdev{Name: "A0", Filename: img, BlockSize: 4096}); err != nil {
			t.Fatal(err)
		}
	}
	return tg, rc
}

// spdkGateway starts a gateway whose store lives on bdev of tg.
func spdkGateway(t *testing.T, tg *spdktest.Target, bdev string, extra ...string) *gw {
	t.Helper()
	return startGateway(t, t.TempDir(), append([]string{"--device", "spdk:" + tg.RPCSocket + "?bdev=" + bdev}, extra...)...)
}

// noControllers fails t unless the target serves no vhost controller: a
// gateway that stopped deleted its own.
func noControllers(t *testing.T, rc *rpc.Client) {
	t.Helper()
	cs, err := rc.VhostGetControllers(t.Context(), "")
	must(t, err)
	if len(cs) != 0 {
		t.Fatalf("%d vhost controllers left after the gateways stopped: %+v", len(cs), cs)
	}
}

// TestSPDKFioVerify: fio's verified random and sequential writes through
// NBD to a gateway whose store is on an SPDK malloc bdev, then on an aio
// bdev; the gateway's vhost controller is gone once it stops.
func TestSPDKFioVerify(t *testing.T) {
	testtool.Need(t, "fio")
	tg, rc := spdkTarget(t, 64, 512)
	for _, c := range []struct {
		bdev string
		jobs [][]string
	}{
		// 40 MiB written at most: the malloc bdev is 64 MiB.
		{"M0", [][]string{
			{"--rw=randwrite", "--bs=4k", "--size=16m"},
			{"--rw=randwrite", "--bsrange=512-256k", "--size=24m"},
			{"--rw=write", "--bs=1m", "--size=16m", "--offset=24m"},
		}},
		{"A0", [][]string{
			{"--rw=randwrite", "--bs=4k", "--size=64m"},
			{"--rw=randwrite", "--bsrange=512-256k", "--size=128m"},
			{"--rw=write", "--bs=1m", "--size=128m", "--offset=128m"},
		}},
	} {
		t.Run(c.bdev, func(t *testing.T) {
			g := spdkGateway(t, tg, c.bdev)
			g.createVolume("acme/fio", "256M")
			for _, job := range c.jobs {
				args := append([]string{"--name=verify", "--ioengine=nbd", "--uri=" + g.uri("acme/fio"),
					"--iodepth=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--thread"}, job...)
				out := g.run(5*time.Minute, "fio", args...)
				if !strings.Contains(out, "err= 0") || strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
					t.Fatalf("fio %v:\n%s", job, out)
				}
			}
			st := g.stats()
			if st.Volumes[0].Allocated < 16*MiB {
				t.Fatalf("the volume holds %d bytes after fio wrote at least 16 MiB", st.Volumes[0].Allocated)
			}
			// The device's metrics saw fio's writes reach the bdev.
			m := g.metrics()
			written := metricValue(t, m, `sluice_device_bytes_total{bdev="`+c.bdev+`",op="write"}`)
			if written < float64(st.Volumes[0].Allocated) || !strings.Contains(m, `sluice_device_latency_seconds_count{bdev="`+c.bdev+`",op="read"}`) ||
				metricValue(t, m, `sluice_device_inflight{bdev="`+c.bdev+`"}`) != 0 {
				t.Fatalf("device metrics after fio (%d bytes allocated):\n%s", st.Volumes[0].Allocated, grepLines(m, "sluice_device_"))
			}
			g.stop()
			noControllers(t, rc)
		})
	}
}

// metricValue is the value of the sample named exactly name (with its
// labels) in a /metrics text.
func metricValue(t *testing.T, metrics, name string) float64 {
	t.Helper()
	for line := range strings.Lines(metrics) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			must(t, err)
			return f
		}
	}
	t.Fatalf("no %s in /metrics:\n%s", name, grepLines(metrics, "sluice_device_"))
	return 0
}

// TestSPDKPosixSuite runs go-fuse's posixtest against an fs volume whose
// store is on an SPDK malloc bdev, then on an aio bdev: small, unaligned
// writes go through the device's read-modify-write of 4 KiB blocks.
func TestSPDKPosixSuite(t *testing.T) {
	tg, _ := spdkTarget(t, 64, 256)
	for _, bdev := range []string{"M0", "A0"} {
		t.Run(bdev, func(t *testing.T) {
			g := spdkGateway(t, tg, bdev)
			mnt := g.mountVolume("t/posix", "fs", "2G")
			for name, test := range posixtest.All {
				t.Run(name, func(t *testing.T) {
					if why, ok := posixSkips[name]; ok {
						t.Skip(why)
					}
					dir := filepath.Join(mnt, name)
					must(t, os.Mkdir(dir, 0o755))
					test(t, dir)
				})
			}
			fsckClean(t, g, "t/posix")
		})
	}
}

// TestSPDKAttachExt4: attach a block volume whose store is on an SPDK
// bdev, mkfs.ext4, write files with known hashes, detach, attach again,
// fsck.ext4 -n clean, hashes match; on a malloc bdev and an aio bdev.
func TestSPDKAttachExt4(t *testing.T) {
	testtool.Need(t, "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount")
	tg, _ := spdkTarget(t, 64, 256)
	for _, bdev := range []string{"M0", "A0"} {
		t.Run(bdev, func(t *testing.T) {
			g := spdkGateway(t, tg, bdev, "--attach-method", "loop")
			// 256 MiB: mkfs's journal and tables and the files fit in
			// the 64 MiB malloc bdev.
			g.mustSluice("volume", "create", "t/disk", "--size", "256M")
			dev := strings.TrimSpace(g.mustSluice("attach", "t/disk"))
			attached := true
			t.Cleanup(func() {
				if attached {
					g.sluice("detach", dev)
				}
			})
			g.run(2*time.Minute, "mkfs.ext4", "-q", dev)
			mnt := filepath.Join(t.TempDir(), "ext4")
			must(t, os.Mkdir(mnt, 0o755))
			g.run(time.Minute, "mount", dev, mnt)
			mounted := true
			t.Cleanup(func() {
				if mounted {
					run(t, time.Minute, "umount", mnt)
				}
			})
			sums := map[string][32]byte{}
			rnd := rand.New(rand.NewPCG(5, 6))
			for i := range 20 {
				data := make([]byte, 100000*(i+1)+rnd.IntN(4096))
				for j := range data {
					data[j] = byte(rnd.Uint32())
				}
				name := fmt.Sprintf("f%02d", i)
				must(t, os.WriteFile(filepath.Join(mnt, name), data, 0o644))
				sums[name] = sha256.Sum256(data)
			}
			run(t, time.Minute, "umount", mnt)
			mounted = false
			g.mustSluice("detach", dev)
			attached = false

			dev = strings.TrimSpace(g.mustSluice("attach", "t/disk"))
			attached = true
			g.run(2*time.Minute, "fsck.ext4", "-n", "-f", dev)
			g.run(time.Minute, "mount", dev, mnt)
			mounted = true
			for name, want := range sums {
				b, err := os.ReadFile(filepath.Join(mnt, name))
				must(t, err)
				if sha256.Sum256(b) != want {
					t.Fatalf("%s differs after detach and attach", name)
				}
			}
		})
	}
}

// TestSPDKCrashKeepsFlushedData: the store on an SPDK aio bdev (the target
// keeps running), ten rounds of a flushed write of a known pattern
// (unaligned: partial 4 KiB blocks are read-modify-written) then a SIGKILL
// of the gateway while fio writes elsewhere; after each restart, which
// reuses the vhost controller the killed gateway left, every flushed byte
// reads back.
func TestSPDKCrashKeepsFlushedData(t *testing.T) {
	testtool.Need(t, "qemu-io", "fio")
	tg, rc := spdkTarget(t, 0, 2048)
	g := spdkGateway(t, tg, "A0")
	g.createVolume("acme/crash", "1G")
	uri := g.uri("acme/crash")
	var flushed []region
	r := rand.New(rand.NewPCG(7, 8))
	const rounds = 10
	for i := range rounds {
		reg := region{off: int64(i)*48*MiB + r.Int64N(MiB), length: 1 + r.Int64N(3*MiB), pat: 1 + i}
		qemuIO(t, uri, fmt.Sprintf("write -P %d %d %d", reg.pat, reg.off, reg.length), "flush")
		flushed = append(flushed, reg)
		killDuringChurn(t, g, "acme/crash", (8+r.Int64N(24))*MiB)
		verifyFlushed(t, uri, flushed)
	}
	if out := g.logTail(); !strings.Contains(out, "reused_controller=true") {
		t.Fatalf("no restart reused the vhost controller the killed gateway left:\n%s", out)
	}
	fsckClean(t, g, "acme/crash")
	g.stop()
	noControllers(t, rc)
}

// TestSPDKLaunch: `--spdk-launch` starts SPDK's target as the gateway's
// child, with the bdev from --spdk-config; data written before a restart
// of both reads back after it (the aio bdev's file keeps it); SIGTERM to
// the gateway stops the target. A bdev that does not exist fails the start
// with SPDK's list of bdevs, and the launched target is stopped.
func TestSPDKLaunch(t *testing.T) {
	testtool.Need(t, "qemu-io")
	dir := spdktest.Dir(t)
	spdktest.ReserveHugePages(t, 300)
	img := filepath.Join(t.TempDir(), "aio.img")
	must(t, os.WriteFile(img, nil, 0o600))
	must(t, os.Truncate(img, 256<<20))
	cfg := filepath.Join(t.TempDir(), "spdk.json")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`{"subsystems": [{"subsystem": "bdev", "config": [
		{"method": "bdev_aio_create", "params": {"name": "A0", "filename": %q, "block_size": 4096}}]}]}`, img)), 0o600))
	launch := []string{"--spdk-launch", filepath.Join(dir, "bin", "vhost"), "--spdk-config", cfg, "--spdk-mem", "256M"}

	data := t.TempDir()
	g := startGateway(t, data, append([]string{"--device", "spdk:?bdev=A0"}, launch...)...)
	sock := filepath.Join(data, "spdk", "rpc.sock")
	pid := spdkPid(t, sock)
	g.createVolume("acme/l", "64M")
	qemuIO(t, g.uri("acme/l"), "write -P 9 1000 100000", "flush")
	g.stop()
	spdkGone(t, pid, sock)

	g.start()
	pid = spdkPid(t, sock)
	qemuIO(t, g.uri("acme/l"), "read -P 9 1000 100000")
	g.stop()
	spdkGone(t, pid, sock)

	out := startFails(t, append([]string{"--data-dir", data, "--nbd-listen", "", "--device", "spdk:?bdev=Nope"}, launch...)...)
	if !strings.Contains(out, `has no bdev "Nope": it has A0`) {
		t.Fatalf("start on a missing bdev: %s", out)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("the launched target's socket after a failed start: %v", err)
	}
}

// spdkPid is the pid of the SPDK target serving sock, from the socket's
// peer credentials.
func spdkPid(t *testing.T, sock string) int {
	t.Helper()
	c, err := net.Dial("unix", sock)
	must(t, err)
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	must(t, err)
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	must(t, err)
	return int(cred.Pid)
}

// spdkGone waits until process pid has exited and sock is gone.
func spdkGone(t *testing.T, pid int, sock string) {
	t.Helper()
	testwait.For(t, fmt.Sprintf("SPDK target %d to exit", pid), func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return os.IsNotExist(err)
	})
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("SPDK's RPC socket %s after it stopped: %v", sock, err)
	}
}
