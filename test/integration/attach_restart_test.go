package integration

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// TestLoopAttachRestarts (issue 21): an ext4 mounted on a block volume
// attached by loop keeps working through 10 planned handovers and 10
// SIGKILLs of the gateway, each followed by a start on the same data
// directory with --fuse-resume. A worker replaces files the way
// databases make them durable (write a temporary file, fsync, rename
// over the name, fsync the directory) and remembers each name's hash
// once that returned. Nothing may fail (every error of the worker fails
// the test); each new gateway must take the device back (it lists it,
// and detaches it at the end); once the caches are dropped every file
// reads back as last renamed, and fsck.ext4 finds the filesystem clean.
// The worker's longest write+fsync+rename per restart is logged.
func TestLoopAttachRestarts(t *testing.T) {
	testtool.Need(t, "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount")
	dir := t.TempDir()
	g := startGateway(t, dir, "--attach-method", "loop", "--fuse-resume")
	g.mustSluice("volume", "create", "t/disk", "--size", "256M")
	dev := strings.TrimSpace(g.mustSluice("attach", "t/disk"))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("attach printed %q, want a loop device", dev)
	}
	run(t, 2*time.Minute, "mkfs.ext4", "-q", dev)
	mnt := filepath.Join(t.TempDir(), "ext4")
	must(t, os.Mkdir(mnt, 0o755))
	run(t, time.Minute, "mount", dev, mnt)
	mounted, detached := true, false
	t.Cleanup(func() {
		if mounted {
			runCmd(time.Minute, "umount", "-l", mnt)
		}
		if !detached {
			if _, code := g.sluice("detach", dev); code != 0 {
				runCmd(time.Minute, "losetup", "--detach", dev)
			}
		}
	})
	w := &renameWorker{dir: mnt, sums: map[string][32]byte{}, stop: make(chan struct{})}
	w.wg.Add(1)
	go w.run()
	defer w.halt()
	progress := func(what string) {
		t.Helper()
		want := w.ops.Load() + 20
		if !testwait.Poll(2*time.Minute, func() bool { return w.failed() != nil || w.ops.Load() >= want }) {
			t.Fatalf("%s: the worker makes no progress\n%s", what, g.logTail())
		}
		if err := w.failed(); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, g.logTail())
		}
	}
	var handovers, crashes []string
	progress("before the first restart")
	for r := 1; r <= 10; r++ {
		w.takeLongest()
		g.takeover()
		progress(fmt.Sprintf("handover %d", r))
		handovers = append(handovers, w.takeLongest().Round(time.Millisecond).String())
		g.checkAttached(t, dev)
	}
	for r := 1; r <= 10; r++ {
		w.takeLongest()
		g.kill()
		g.restart()
		progress(fmt.Sprintf("crash %d", r))
		crashes = append(crashes, w.takeLongest().Round(time.Millisecond).String())
		g.checkAttached(t, dev)
	}
	w.halt()
	if err := w.failed(); err != nil {
		t.Fatal(err)
	}
	t.Logf("longest write+fsync+rename per handover: %s", strings.Join(handovers, " "))
	t.Logf("longest write+fsync+rename per crash (kill, start, resume): %s", strings.Join(crashes, " "))
	t.Logf("%d files replaced", w.ops.Load())
	b, _ := os.ReadFile(filepath.Join(dir, "gateway.log"))
	if n := strings.Count(string(b), `msg="attached device taken over with its image mount"`); n != 20 {
		t.Errorf("%d starts took the loop device over, want 20", n)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") && !strings.Contains(l, "crash") {
			t.Errorf("the gateways logged: %s", l)
		}
	}

	// Through the last gateway, with nothing in the page cache.
	unix.Sync()
	must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0))
	w.verify(t)
	run(t, time.Minute, "umount", mnt)
	mounted = false
	run(t, 2*time.Minute, "fsck.ext4", "-n", "-f", dev)
	g.mustSluice("detach", dev)
	detached = true
	if out := strings.TrimSpace(g.mustSluice("attach", "list", "--json")); out != "[]" {
		t.Fatalf("attach list --json after the detach: %s, want []", out)
	}
}

// checkAttached fails unless the gateway lists dev as t/disk's loop device.
func (g *gw) checkAttached(t *testing.T, dev string) {
	t.Helper()
	out := g.mustSluice("attach", "list", "--json")
	if !strings.Contains(out, `"device": "`+dev+`"`) || !strings.Contains(out, `"method": "loop"`) {
		t.Fatalf("the gateway does not list %s as attached: %s\n%s", dev, out, g.logTail())
	}
}

// renameWorker replaces files f00..f63 in dir, one after another, with
// random contents of 4 KiB to 192 KiB: write f.tmp, fsync it, rename it
// over the name, fsync the directory; the name's hash is remembered
// once all of that returned.
type renameWorker struct {
	dir      string
	stop     chan struct{}
	wg       sync.WaitGroup
	ops      atomic.Int64
	ioRecord // longest: a write+fsync+rename+fsync

	mu     sync.Mutex
	sums   map[string][32]byte
	halted bool
}

func (w *renameWorker) run() {
	defer w.wg.Done()
	for i := 0; ; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		data := make([]byte, 4096*(1+rand.IntN(48)))
		for j := range data {
			data[j] = byte(rand.Uint32())
		}
		name := fmt.Sprintf("f%02d", i%64)
		start := time.Now()
		if err := w.replace(name, data); err != nil {
			w.fail(err)
			return
		}
		w.mu.Lock()
		w.sums[name] = sha256.Sum256(data)
		w.mu.Unlock()
		w.observe(time.Since(start))
		w.ops.Add(1)
	}
}

// replace is the durable-rename pattern.
func (w *renameWorker) replace(name string, data []byte) error {
	tmp := filepath.Join(w.dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(w.dir, name)); err != nil {
		return err
	}
	d, err := os.Open(w.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", w.dir, err)
	}
	return nil
}

// halt stops the worker and waits for it (once or more).
func (w *renameWorker) halt() {
	w.mu.Lock()
	if !w.halted {
		close(w.stop)
		w.halted = true
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// verify reads every name back and compares it with its last hash.
func (w *renameWorker) verify(t *testing.T) {
	t.Helper()
	if len(w.sums) == 0 {
		t.Fatal("the worker replaced no file")
	}
	for name, sum := range w.sums {
		got, err := os.ReadFile(filepath.Join(w.dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if s := sha256.Sum256(got); !bytes.Equal(s[:], sum[:]) {
			t.Fatalf("%s (%d bytes) is not what was last renamed over it", name, len(got))
		}
	}
}
