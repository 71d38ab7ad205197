package spdkbackend

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/internal/spdktest"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
)

// target starts SPDK's vhost target with bdevs M0 (malloc, 64 MiB of 4 KiB
// blocks), M512 (malloc, 16 MiB of 512-byte blocks) and A0 (aio over a
// 32 MiB file, 4 KiB blocks).
func target(t *testing.T) (*spdktest.Target, *rpc.Client) {
	tg := spdktest.Start(t, spdktest.Options{})
	ctx := t.Context()
	rc, err := rpc.Dial(ctx, tg.RPCSocket, rpc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	img := filepath.Join(t.TempDir(), "aio.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	for _, m := range []rpc.MallocBdev{{Name: "M0", NumBlocks: 16384, BlockSize: 4096}, {Name: "M512", NumBlocks: 32768, BlockSize: 512}} {
		if _, err := rc.BdevMallocCreate(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rc.BdevAIOCreate(ctx, rpc.AIOBdev{Name: "A0", Filename: img, BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	return tg, rc
}

func open(t *testing.T, tg *spdktest.Target, bdev, ctrl string) *Device {
	t.Helper()
	d, err := Open(t.Context(), Options{Socket: tg.RPCSocket, Bdev: bdev, Controller: ctrl})
	if err != nil {
		t.Fatalf("open %s: %v", bdev, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func controllers(t *testing.T, rc *rpc.Client) []string {
	t.Helper()
	cs, err := rc.VhostGetControllers(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cs {
		names = append(names, c.Ctrlr+"="+controllerBdev(c))
	}
	return names
}

// TestDevice: the SPDK device on a real target: byte-granular verified IO
// (sequential and from 16 writers at once on bytes that share blocks) on
// malloc bdevs of 4 KiB and 512-byte blocks and on an aio bdev, read back
// through a second device on the same bdev's controller after a reopen;
// flush; discard (zeros on malloc, a hint on aio); Close removes the
// controller and its socket; a controller a killed gateway left behind is
// reused.
func TestDevice(t *testing.T) {
	tg, rc := target(t)
	for _, c := range []struct {
		bdev   string
		bs     int64
		zeroes bool
	}{{"M0", 4096, true}, {"M512", 512, true}, {"A0", 4096, false}} {
		t.Run(c.bdev, func(t *testing.T) {
			ctrl := "test-" + strings.ToLower(c.bdev)
			d := open(t, tg, c.bdev, ctrl)
			if d.BlockSize() != c.bs || d.DiscardZeroes() != c.zeroes || d.Size() != d.Bdev().Size() {
				t.Fatalf("block size %d, discard zeroes %v, size %d (bdev %d); want %d, %v", d.BlockSize(), d.DiscardZeroes(), d.Size(), d.Bdev().Size(), c.bs, c.zeroes)
			}
			shadow := make([]byte, d.Size())
			if _, err := d.ReadAt(shadow, 0); err != nil { // what a previous user left
				t.Fatal(err)
			}
			rnd := rand.New(rand.NewPCG(1, uint64(c.bs)))
			for i := range 300 {
				n := 1 + rnd.IntN(20000)
				off := rnd.Int64N(d.Size() - int64(n))
				p := shadow[off : off+int64(n)]
				fill(rnd, p)
				if _, err := d.WriteAt(p, off); err != nil {
					t.Fatalf("write %d (%d at %d): %v", i, n, off, err)
				}
				if i%10 == 0 {
					checkRange(t, d, shadow, rnd.Int64N(d.Size()-70000), 1+rnd.Int64N(70000))
				}
			}
			concurrentBytes(t, d, shadow)
			checkAll(t, d, shadow)
			if err := d.Flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}

			// Discard, unaligned at both ends.
			off, n := int64(3*c.bs+100), int64(40*c.bs+7)
			if err := d.Discard(off, n); err != nil {
				t.Fatalf("discard: %v", err)
			}
			if c.zeroes {
				clear(shadow[off : off+n])
			}
			checkAll(t, d, shadow)
			if err := d.Discard(d.Size()-10, 20); !errors.Is(err, device.ErrOutOfRange) {
				t.Fatalf("discard past the end: %v", err)
			}
			if _, err := d.WriteAt([]byte{1}, d.Size()); !errors.Is(err, device.ErrOutOfRange) {
				t.Fatalf("write past the end: %v", err)
			}

			// Close removes the controller and its socket; the data
			// stays on the bdev for the next device.
			sock := ctrlSocket(t, rc, ctrl)
			if err := d.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if _, err := rc.VhostGetControllers(t.Context(), ctrl); !errors.Is(err, rpc.ErrNoSuchDevice) {
				t.Fatalf("controller %s after close: %v (controllers %v)", ctrl, err, controllers(t, rc))
			}
			if _, err := os.Stat(sock); !os.IsNotExist(err) {
				t.Fatalf("controller socket %s after close: %v", sock, err)
			}
			d2 := open(t, tg, c.bdev, ctrl+"-2")
			checkAll(t, d2, shadow)

			// A controller left behind (a gateway killed before Close)
			// is reused, not refused. (SPDK itself would let a second
			// controller serve the bdev: only our pre-flight refuses.)
			d2.Close()
			if err := rc.VhostCreateBlkController(t.Context(), rpc.VhostBlkController{Ctrlr: ctrl + "-3", DevName: c.bdev}); err != nil {
				t.Fatal(err)
			}
			d3 := open(t, tg, c.bdev, ctrl+"-3")
			if !d3.Reused() || d2.Reused() {
				t.Fatalf("reused: left-behind controller %v, fresh one %v", d3.Reused(), d2.Reused())
			}
			checkAll(t, d3, shadow)
			d3.Close()
			if got := controllers(t, rc); len(got) != 0 {
				t.Fatalf("controllers left: %v", got)
			}
		})
	}
}

func ctrlSocket(t *testing.T, rc *rpc.Client, name string) string {
	t.Helper()
	cs, err := rc.VhostGetControllers(t.Context(), name)
	if err != nil || len(cs) != 1 {
		t.Fatalf("controller %s: %v %v", name, cs, err)
	}
	return cs[0].Socket
}

// concurrentBytes has 16 writers write interleaved 100-byte pieces of one
// 64 KiB region at once, so that every block is patched by several of
// them at the same time: a read-modify-write without its lock loses bytes.
func concurrentBytes(t *testing.T, d *Device, shadow []byte) {
	t.Helper()
	const writers, piece, base = 16, 100, 1 << 20
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 9))
			for off := int64(base + w*piece); off+piece <= base+64<<10; off += writers * piece {
				p := shadow[off : off+piece]
				fill(rnd, p)
				if _, err := d.WriteAt(p, off); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func checkRange(t *testing.T, d *Device, shadow []byte, off, n int64) {
	t.Helper()
	got := make([]byte, n)
	if _, err := d.ReadAt(got, off); err != nil {
		t.Fatalf("read %d at %d: %v", n, off, err)
	}
	if !bytes.Equal(got, shadow[off:off+n]) {
		t.Fatalf("read %d at %d: differs from what was written", n, off)
	}
}

func checkAll(t *testing.T, d *Device, shadow []byte) {
	t.Helper()
	got := make([]byte, len(shadow))
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, shadow) {
		for i := range got {
			if got[i] != shadow[i] {
				t.Fatalf("device differs from what was written, first at byte %d", i)
			}
		}
	}
}

func fill(rnd *rand.Rand, p []byte) {
	for i := range p {
		p[i] = byte(rnd.Uint32())
	}
}

// TestPreflight: every check of Open fails with ErrPreflight, says what is
// wrong, and creates no controller.
func TestPreflight(t *testing.T) {
	tg, rc := target(t)
	ctx := t.Context()
	if _, err := rc.BdevMallocCreate(ctx, rpc.MallocBdev{Name: "Tiny", NumBlocks: 1024, BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.BdevMallocCreate(ctx, rpc.MallocBdev{Name: "Big8K", NumBlocks: 2048, BlockSize: 8192}); err != nil {
		t.Fatal(err)
	}
	if err := rc.VhostCreateBlkController(ctx, rpc.VhostBlkController{Ctrlr: "other", DevName: "A0"}); err != nil {
		t.Fatal(err)
	}
	before := controllers(t, rc)
	for _, c := range []struct {
		name string
		opt  Options
		want string
	}{
		// Counts of our own: the machine's free pages vary (a benchmark
		// that leaked a reservation once made this case pass Open).
		{"huge pages", Options{Bdev: "M0", QueueDepth: 1024, MaxIO: 1 << 20, HugePageDir: fakeHugePages(t, 300, 100, 0)}, "the SPDK device needs 513"},
		{"no huge pages", Options{Bdev: "M0", HugePageDir: t.TempDir()}, "huge pages"},
		{"socket", Options{Socket: filepath.Join(t.TempDir(), "none.sock"), Bdev: "M0"}, "is the SPDK target running?"},
		{"unknown bdev", Options{Bdev: "Nvme0n1"}, `has no bdev "Nvme0n1": it has A0, Big8K, M0, M512, Tiny`},
		{"too small", Options{Bdev: "Tiny"}, "holds 4194304 bytes (1024 blocks of 4096); the store needs at least 5242880"},
		{"block size", Options{Bdev: "Big8K"}, "has 8192-byte blocks; the store needs a power of two from 512 to 4096"},
		{"bdev served", Options{Bdev: "A0"}, "already served by vhost controller other"},
		{"name taken", Options{Bdev: "M0", Controller: "other"}, `serves bdev "A0", not "M0"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.opt.Socket == "" {
				c.opt.Socket = tg.RPCSocket
			}
			if c.opt.Controller == "" {
				c.opt.Controller = "preflight"
			}
			d, err := Open(ctx, c.opt)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, ErrPreflight) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open: %v; want ErrPreflight saying %q", err, c.want)
			}
			if got := controllers(t, rc); strings.Join(got, " ") != strings.Join(before, " ") {
				t.Fatalf("controllers %v after a failed pre-flight, were %v", got, before)
			}
		})
	}
}

// TestMetrics: the device's Prometheus metrics count what was done to it:
// calls, errors and bytes per operation, the latency histogram's count,
// nothing in flight once the calls returned, the initiator's slots.
func TestMetrics(t *testing.T) {
	tg, _ := target(t)
	d := open(t, tg, "M0", "metrics")
	p := make([]byte, 4096)
	for i := range 10 {
		if _, err := d.WriteAt(p, int64(i)*4096+100); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if _, err := d.ReadAt(p[:1000], int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.WriteAt(p, d.Size()); err == nil {
		t.Fatal("a write past the end succeeded")
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := d.Discard(1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(d))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" {
					key += "/" + l.GetValue()
				}
			}
			switch {
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[key] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				got[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"sluice_device_ops_total/write": 11, "sluice_device_errors_total/write": 1, "sluice_device_bytes_total/write": 40960,
		"sluice_device_ops_total/read": 5, "sluice_device_errors_total/read": 0, "sluice_device_bytes_total/read": 5000,
		"sluice_device_ops_total/flush": 1, "sluice_device_ops_total/discard": 1, "sluice_device_bytes_total/discard": 1 << 20,
		"sluice_device_latency_seconds/write": 11, "sluice_device_latency_seconds/read": 5,
		"sluice_device_inflight": 0, "sluice_device_queue_slots": 64,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

// fakeHugePages is a directory laid out as the kernel's hugepages-2048kB
// with the given counts.
func fakeHugePages(t *testing.T, total, free, resv int) string {
	t.Helper()
	dir := t.TempDir()
	for name, n := range map[string]int{"nr_hugepages": total, "free_hugepages": free, "resv_hugepages": resv} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(fmt.Sprintf("%d\n", n)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
