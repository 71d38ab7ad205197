package rpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/spdktest"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
	"github.com/sluice-storage/sluice/virtio"
)

// TestTarget drives a real SPDK vhost target, started with --wait-for-rpc,
// through every method of the client and its error paths. The subtests
// share the one target and run in order: each leaves the target as the
// next expects it.
func TestTarget(t *testing.T) {
	tg := spdktest.Start(t, spdktest.Options{WaitForRPC: true})
	ctx := t.Context()
	c, err := rpc.Dial(ctx, tg.RPCSocket, rpc.Options{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	t.Run("before init", func(t *testing.T) { testBeforeInit(t, c) })
	t.Run("bdevs", func(t *testing.T) { testBdevs(t, c) })
	t.Run("vhost", func(t *testing.T) { testVhost(t, c, tg) })
	t.Run("delete", func(t *testing.T) { testDelete(t, c) })
	t.Run("target stopped", func(t *testing.T) { testStopped(t, c, tg) })
	t.Run("target gone", func(t *testing.T) { testGone(t, c, tg) })
}

// wantError checks that err is SPDK's answer with code and message, and that
// it matches sentinel with errors.Is.
func wantError(t *testing.T, err error, method string, code int, sentinel error) {
	t.Helper()
	var e *rpc.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: %v (%T), want an *rpc.Error", method, err, err)
	}
	if e.Code != code || e.Method != method {
		t.Errorf("%s: got code %d from %q (%v), want code %d", method, e.Code, e.Method, e, code)
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Errorf("%s: %v does not match %v", method, err, sentinel)
	}
	if !strings.Contains(err.Error(), e.Message) || !strings.Contains(err.Error(), method) {
		t.Errorf("%q does not quote the method and SPDK's message", err)
	}
}

// testBeforeInit: on a target waiting for RPC, start-up methods work and
// runtime ones are refused until framework_start_init, which works once.
func testBeforeInit(t *testing.T, c *rpc.Client) {
	ctx := t.Context()
	v, err := c.SPDKGetVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.Fields.Major != 23 || v.Fields.Minor != 1 || v.Fields.Patch != 1 || !strings.Contains(v.Version, "v23.01.1") {
		t.Errorf("version %+v, want SPDK v23.01.1", v)
	}
	_, err = c.BdevMallocCreate(ctx, rpc.MallocBdev{Name: "M0", NumBlocks: 16384, BlockSize: 4096})
	wantError(t, err, "bdev_malloc_create", rpc.CodeInvalidState, rpc.ErrNotInitialized)
	_, err = c.BdevGetBdevs(ctx, rpc.GetBdevs{})
	wantError(t, err, "bdev_get_bdevs", rpc.CodeInvalidState, rpc.ErrNotInitialized)
	if errors.Is(err, rpc.ErrAlreadyInitialized) || errors.Is(err, rpc.ErrNoSuchDevice) {
		t.Errorf("%v matches the wrong sentinel", err)
	}

	if err := c.FrameworkStartInit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.FrameworkWaitInit(ctx); err != nil {
		t.Fatal(err)
	}
	err = c.FrameworkStartInit(ctx)
	wantError(t, err, "framework_start_init", rpc.CodeInvalidState, rpc.ErrAlreadyInitialized)
}

const testUUID = "0b7e3f4c-2d1a-4c55-9a43-6f0e8d2b1c77"

// testBdevs creates a malloc bdev M0 (64 MiB of 4 KiB blocks) and an aio
// bdev A0 (a 32 MiB file, 512-byte blocks), and checks what SPDK reports.
func testBdevs(t *testing.T, c *rpc.Client) {
	ctx := t.Context()
	name, err := c.BdevMallocCreate(ctx, rpc.MallocBdev{Name: "M0", NumBlocks: 16384, BlockSize: 4096, UUID: testUUID})
	if err != nil || name != "M0" {
		t.Fatalf("bdev_malloc_create: %q, %v", name, err)
	}
	_, err = c.BdevMallocCreate(ctx, rpc.MallocBdev{Name: "M0", NumBlocks: 16384, BlockSize: 4096})
	wantError(t, err, "bdev_malloc_create", -int(syscall.EEXIST), rpc.ErrExists)

	img := filepath.Join(t.TempDir(), "aio.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	name, err = c.BdevAIOCreate(ctx, rpc.AIOBdev{Name: "A0", Filename: img, BlockSize: 512})
	if err != nil || name != "A0" {
		t.Fatalf("bdev_aio_create: %q, %v", name, err)
	}

	bdevs, err := c.BdevGetBdevs(ctx, rpc.GetBdevs{Name: "M0"})
	if err != nil || len(bdevs) != 1 {
		t.Fatalf("bdev_get_bdevs M0: %+v, %v", bdevs, err)
	}
	m := bdevs[0]
	io := m.SupportedIOTypes
	if m.Name != "M0" || m.BlockSize != 4096 || m.NumBlocks != 16384 || m.Size() != 64<<20 ||
		m.UUID != testUUID || m.ProductName != "Malloc disk" || m.Claimed ||
		!io.Read || !io.Write || !io.Flush || !io.Unmap || !io.WriteZeroes || io.NVMeIO {
		t.Errorf("M0: %+v", m)
	}

	bdevs, err = c.BdevGetBdevs(ctx, rpc.GetBdevs{Name: "A0", TimeoutMs: 100})
	if err != nil || len(bdevs) != 1 {
		t.Fatalf("bdev_get_bdevs A0: %+v, %v", bdevs, err)
	}
	a := bdevs[0]
	var driver struct {
		AIO struct {
			Filename string `json:"filename"`
		} `json:"aio"`
	}
	if err := json.Unmarshal(a.DriverSpecific, &driver); err != nil {
		t.Errorf("A0 driver_specific %s: %v", a.DriverSpecific, err)
	}
	if a.BlockSize != 512 || a.NumBlocks != 32<<20/512 || a.ProductName != "AIO disk" ||
		driver.AIO.Filename != img {
		t.Errorf("A0: %+v (driver_specific %s)", a, a.DriverSpecific)
	}

	bdevs, err = c.BdevGetBdevs(ctx, rpc.GetBdevs{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range bdevs {
		names = append(names, b.Name)
	}
	if !slices.Contains(names, "M0") || !slices.Contains(names, "A0") {
		t.Errorf("bdev_get_bdevs lists %v, want M0 and A0 among them", names)
	}

	_, err = c.BdevGetBdevs(ctx, rpc.GetBdevs{Name: "nope"})
	wantError(t, err, "bdev_get_bdevs", -int(syscall.ENODEV), rpc.ErrNoSuchDevice)
	_, err = c.BdevGetIostat(ctx, "nope")
	wantError(t, err, "bdev_get_iostat", -int(syscall.ENODEV), rpc.ErrNoSuchDevice)
	wantError(t, c.BdevMallocDelete(ctx, "nope"), "bdev_malloc_delete", -int(syscall.ENODEV), rpc.ErrNoSuchDevice)
	wantError(t, c.BdevAIODelete(ctx, "nope"), "bdev_aio_delete", -int(syscall.ENODEV), rpc.ErrNoSuchDevice)

	// No NVMe device exists here: SPDK takes the parameters (a misnamed
	// one would answer CodeInvalidParams) and finds no controller.
	_, err = c.BdevNVMeAttachController(ctx, rpc.NVMeController{Name: "Nvme0", TrType: "PCIe", TrAddr: "0000:ff:1f.7"})
	wantError(t, err, "bdev_nvme_attach_controller", -int(syscall.ENODEV), rpc.ErrNoSuchDevice)
}

// testVhost exposes M0 as vhost-user-blk controller vb0, moves 1 MiB
// through it with our initiator and reads SPDK's counters for it.
func testVhost(t *testing.T, c *rpc.Client, tg *spdktest.Target) {
	ctx := t.Context()
	sock := filepath.Join(tg.VhostDir, "vb0")
	if err := c.VhostCreateBlkController(ctx, rpc.VhostBlkController{Ctrlr: "vb0", DevName: "M0"}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("vb0's socket %s: %v, %v", sock, fi, err)
	}
	ctrls, err := c.VhostGetControllers(ctx, "vb0")
	if err != nil || len(ctrls) != 1 || ctrls[0].Socket != sock || !bytes.Contains(ctrls[0].BackendSpecific, []byte(`"bdev":"M0"`)) {
		t.Fatalf("vhost_get_controllers vb0: %+v, %v", ctrls, err)
	}

	err = c.VhostCreateBlkController(ctx, rpc.VhostBlkController{Ctrlr: "vb0", DevName: "A0"})
	wantError(t, err, "vhost_create_blk_controller", rpc.CodeInvalidParams, rpc.ErrExists)
	err = c.VhostCreateBlkController(ctx, rpc.VhostBlkController{Ctrlr: "vb1", DevName: "nope"})
	wantError(t, err, "vhost_create_blk_controller", rpc.CodeInvalidParams, rpc.ErrNoSuchDevice)

	before, err := c.BdevGetIostat(ctx, "M0")
	if err != nil || len(before.Bdevs) != 1 {
		t.Fatalf("bdev_get_iostat M0: %+v, %v", before, err)
	}
	moveData(t, sock, 1<<20)
	after, err := c.BdevGetIostat(ctx, "M0")
	if err != nil || len(after.Bdevs) != 1 {
		t.Fatalf("bdev_get_iostat M0: %+v, %v", after, err)
	}
	b, a := before.Bdevs[0], after.Bdevs[0]
	if a.Name != "M0" || a.BytesWritten-b.BytesWritten != 1<<20 || a.BytesRead-b.BytesRead < 1<<20 ||
		a.NumWriteOps <= b.NumWriteOps || a.WriteLatencyTicks <= b.WriteLatencyTicks ||
		after.TickRate == 0 || after.Ticks <= before.Ticks {
		t.Errorf("iostat after 1 MiB written and read:\nbefore %+v\nafter  %+v", before, after)
	}
	all, err := c.BdevGetIostat(ctx, "")
	if err != nil || len(all.Bdevs) < 2 {
		t.Errorf("bdev_get_iostat for every bdev: %+v, %v", all, err)
	}

	if err := c.VhostDeleteController(ctx, "vb0"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vb0's socket after vhost_delete_controller: %v, want it gone", err)
	}
	err = c.VhostDeleteController(ctx, "vb0")
	wantError(t, err, "vhost_delete_controller", rpc.CodeInvalidParams, rpc.ErrNoSuchDevice)
}

// moveData writes n patterned bytes through the vhost-user-blk socket with
// our initiator and reads them back.
func moveData(t *testing.T, sock string, n int) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	vc, err := virtio.Dial(ctx, sock, virtio.Options{HugePages: true, QueueDepth: 4, MaxIO: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	want := make([]byte, n)
	for i := range want {
		want[i] = byte(i*7 + i>>12)
	}
	if _, err := vc.WriteAt(want, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n)
	if _, err := vc.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from what was written")
	}
}

// testDelete removes both bdevs.
func testDelete(t *testing.T, c *rpc.Client) {
	ctx := t.Context()
	if err := c.BdevMallocDelete(ctx, "M0"); err != nil {
		t.Fatal(err)
	}
	if err := c.BdevAIODelete(ctx, "A0"); err != nil {
		t.Fatal(err)
	}
	bdevs, err := c.BdevGetBdevs(ctx, rpc.GetBdevs{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bdevs {
		if b.Name == "M0" || b.Name == "A0" {
			t.Errorf("%s still listed after its delete", b.Name)
		}
	}
}

// testStopped: a target that stops answering (SIGSTOP) costs a call its
// context's deadline or the client's timeout, not forever; once it runs
// again the next call dials afresh and works.
func testStopped(t *testing.T, c *rpc.Client, tg *spdktest.Target) {
	if err := tg.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer tg.Signal(syscall.SIGCONT)

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.SPDKGetVersion(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("call to a stopped target: %v after %v, want the context's deadline", err, time.Since(start))
	}

	short, err := rpc.Dial(t.Context(), tg.RPCSocket, rpc.Options{Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err) // the kernel accepts for a stopped listener
	}
	defer short.Close()
	start = time.Now()
	_, err = short.SPDKGetVersion(t.Context())
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("call with a 300 ms client timeout: %v after %v, want the timeout", err, time.Since(start))
	}

	if err := tg.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SPDKGetVersion(t.Context()); err != nil {
		t.Errorf("call after the target resumed: %v", err)
	}
}

// testGone: with the target killed, calls fail at once with a transport
// error (not an SPDK answer), and so does dialing it.
func testGone(t *testing.T, c *rpc.Client, tg *spdktest.Target) {
	tg.Kill()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.SPDKGetVersion(ctx)
	var e *rpc.Error
	if err == nil || errors.As(err, &e) || ctx.Err() != nil {
		t.Errorf("call to a killed target: %v after %v, want a prompt transport error", err, time.Since(start))
	}
	t.Logf("call to a killed target: %v", err)
	if _, err := rpc.Dial(ctx, tg.RPCSocket, rpc.Options{}); err == nil {
		t.Error("dial to a killed target succeeded")
	}
	c.Close()
	if _, err := c.SPDKGetVersion(ctx); !errors.Is(err, rpc.ErrClosed) {
		t.Errorf("call after Close: %v, want ErrClosed", err)
	}
}
