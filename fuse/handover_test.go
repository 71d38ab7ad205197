package fuse

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/qos"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// handoverVolumes opens a gateway with an fs volume and a block volume.
func handoverVolumes(t *testing.T) (g *gateway.Gateway, fsVol, blockVol *gateway.Volume) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("a FUSE mount needs root and /dev/fuse; CI=true requires them")
		}
		t.Skip("a FUSE mount needs root and /dev/fuse")
	}
	ctx := context.Background()
	var err error
	g, err = gateway.Open(ctx, gateway.Config{DataDir: t.TempDir(), PoolSize: 256 << 20, AutomationInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	for _, o := range []gateway.CreateOptions{
		{Tenant: "t", Name: "fs", Kind: gateway.KindFS, Size: 128 << 20},
		{Tenant: "t", Name: "blk", Size: 16 << 20},
	} {
		if _, err := g.CreateVolume(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	if fsVol, err = g.Volume("t/fs"); err != nil {
		t.Fatal(err)
	}
	if blockVol, err = g.Volume("t/blk"); err != nil {
		t.Fatal(err)
	}
	return g, fsVol, blockVol
}

func mountAt(t *testing.T, v *gateway.Volume) (*Mount, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := MountVolume(context.Background(), v, dir, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	// Whatever happens, the mount goes (lazily: a failed handover leaves
	// a mount no one serves).
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return m, dir
}

// TestHandoverSession hands live mounts (an fs volume and a block
// volume's image) from server to server five times while goroutines keep
// files open on them and write and read back blocks, and stat and list a
// directory: no operation fails, every read returns what was written, and
// handles, directory handles and FORGETs stay right across the handovers.
func TestHandoverSession(t *testing.T) {
	_, fsVol, blockVol := handoverVolumes(t)
	mfs, dfs := mountAt(t, fsVol)
	mblk, dblk := mountAt(t, blockVol)

	if err := os.MkdirAll(filepath.Join(dfs, "d", "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(dfs, "d", n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.OpenFile(filepath.Join(dfs, "d", "e", "data"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	img, err := os.OpenFile(filepath.Join(dblk, ImageName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	dirh, err := os.Open(filepath.Join(dfs, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer dirh.Close()

	var stop atomic.Bool
	var ios [3]atomic.Int64
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); errs <- checkedIO(data, 64, &stop, &ios[0]) }()
	go func() { defer wg.Done(); errs <- checkedIO(img, 64, &stop, &ios[1]) }()
	go func() { defer wg.Done(); errs <- statAndList(filepath.Join(dfs, "d"), &stop, &ios[2]) }()
	progress := func() {
		t.Helper()
		var want [3]int64
		for i := range ios {
			want[i] = ios[i].Load() + 10
		}
		for i := range ios {
			if !testwait.Poll(time.Minute, func() bool { return ios[i].Load() >= want[i] }) {
				t.Fatalf("no progress on client %d after a handover", i)
			}
		}
	}

	for i := range 5 {
		progress()
		switch i {
		case 1:
			// The kernel forgets b (FORGET with the lookup count the
			// first server saw) after this handover.
			if err := os.Remove(filepath.Join(dfs, "d", "b")); err != nil {
				t.Fatal(err)
			}
		case 3:
			if err := os.Rename(filepath.Join(dfs, "d", "c"), filepath.Join(dfs, "d", "e", "c2")); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		mfs = handOverMount(t, mfs, fsVol)
		mblk = handOverMount(t, mblk, blockVol)
		t.Logf("handover %d: %v for both mounts", i, time.Since(start))
	}
	progress()
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	checkTree(t, dfs, dirh)
	t.Logf("%d checked writes+reads on the fs file, %d on the image, %d stat+list rounds", ios[0].Load(), ios[1].Load(), ios[2].Load())
	data.Close()
	img.Close()
	dirh.Close()
	for _, m := range []*Mount{mfs, mblk} {
		if err := m.Unmount(); err != nil {
			t.Errorf("unmount %s after the handovers: %v", m.Dir, err)
		}
		m.Wait()
	}
}

// checkTree: the directory handle opened before the handovers lists
// what is there now (its listing restarts in the new server), and the
// file renamed between handovers reads back.
func checkTree(t *testing.T, dfs string, dirh *os.File) {
	t.Helper()
	names, err := dirh.Readdirnames(-1)
	if err != nil {
		t.Fatalf("readdir of the handed-over directory handle: %v", err)
	}
	if fmt.Sprint(names) != "[a e]" && fmt.Sprint(names) != "[e a]" {
		t.Errorf("the handed-over directory handle lists %v, want a and e", names)
	}
	if b, err := os.ReadFile(filepath.Join(dfs, "d", "e", "c2")); err != nil || string(b) != "c" {
		t.Errorf("the renamed file reads %q, %v", b, err)
	}
}

// handOverMount detaches m and adopts its session in a new Mount, as the
// new process of a handover does.
func handOverMount(t *testing.T, m *Mount, vol *gateway.Volume) *Mount {
	t.Helper()
	fd, st, err := m.Detach(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	nm, err := Adopt(context.Background(), vol, st, fd, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if nm.Dev != m.Dev {
		t.Errorf("the adopted mount has device %d, want %d", nm.Dev, m.Dev)
	}
	return nm
}

// checkedIO writes random 4 KiB blocks to f and reads each back until
// stop, checking every byte.
func checkedIO(f *os.File, blocks int, stop *atomic.Bool, n *atomic.Int64) error {
	buf, got := make([]byte, 4096), make([]byte, 4096)
	for !stop.Load() {
		for j := range buf {
			buf[j] = byte(rand.Uint32())
		}
		off := int64(rand.IntN(blocks)) * 4096
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write %s at %d: %w", f.Name(), off, err)
		}
		if _, err := f.ReadAt(got, off); err != nil {
			return fmt.Errorf("read %s at %d: %w", f.Name(), off, err)
		}
		if !bytes.Equal(buf, got) {
			return fmt.Errorf("read %s at %d: not what was written", f.Name(), off)
		}
		n.Add(1)
	}
	return nil
}

// statAndList stats a directory and lists it until stop.
func statAndList(dir string, stop *atomic.Bool, n *atomic.Int64) error {
	for !stop.Load() {
		if _, err := os.Stat(filepath.Join(dir, "a")); err != nil {
			return err
		}
		if _, err := os.ReadDir(dir); err != nil {
			return err
		}
		n.Add(1)
	}
	return nil
}

// TestDetachBounded: a write held by a QoS limit (4 KiB/s, 64 KiB writes)
// keeps a mount from stopping at a request boundary; Detach gives up when
// its context ends: the connection is aborted, the writer gets an error
// instead of hanging, and the directory is no longer a mount.
func TestDetachBounded(t *testing.T) {
	g, fsVol, _ := handoverVolumes(t)
	m, dir := mountAt(t, fsVol)
	ctx := context.Background()
	if _, err := g.SetQoSRule(ctx, gateway.QoSRule{Tenant: "t", Volume: "fs", Limits: qos.Limits{WriteBPS: 4096, Burst: 10 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "slow"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wrote := make(chan error, 1)
	go func() {
		// The first write may be admitted on credit; the next ones wait.
		for off := int64(0); ; off += 64 << 10 {
			if _, err := f.WriteAt(make([]byte, 64<<10), off); err != nil {
				wrote <- err
				return
			}
		}
	}()
	testwait.For(t, "the write waits for the QoS limit", func() bool {
		for _, r := range g.QoSRules() {
			if r.Stats.Depth > 0 {
				return true
			}
		}
		return false
	})
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, _, err := m.Detach(dctx); err == nil {
		t.Fatal("Detach with a request held by QoS succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Detach took %v to give up", d)
	}
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("the held write succeeded on an aborted mount")
		}
		t.Logf("the held write failed: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the held write still hangs a minute after the abort")
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), " "+dir+" ") {
		t.Fatalf("%s is still mounted after the aborted detach", dir)
	}
}
