package fsns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/store"
)

// crashDevice is a pool file that takes a crash image (the metadata
// directory and the pool file, copied while the store runs, as corrupt_test
// does) at each of its first discards while armed: every point where a
// range operation is about to zero a run of extents, between the commits
// of its batches.
type crashDevice struct {
	*device.File
	t      *testing.T
	src    string // directory holding meta and pool
	mu     sync.Mutex
	armed  bool
	images []string
}

func (d *crashDevice) Discard(off, length int64) error {
	d.mu.Lock()
	if d.armed && len(d.images) < 6 {
		img := d.t.TempDir()
		if out, err := exec.Command("cp", "-a", "--sparse=always", filepath.Join(d.src, "meta"), filepath.Join(d.src, "pool"), img).CombinedOutput(); err != nil {
			d.t.Errorf("crash image: %v %s", err, out)
		}
		d.images = append(d.images, img)
	}
	d.mu.Unlock()
	return d.File.Discard(off, length)
}

func (d *crashDevice) arm() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	imgs := d.images
	d.armed, d.images = !d.armed, nil
	return imgs
}

// bigRangeStore is a 512 MiB pool file with an fs volume of 4 KiB chunks,
// so that a 300 MiB file is 76,800 chunks: more than one batch of a range
// operation (store.unmapFlush) and more than one badger transaction.
func bigRangeStore(t *testing.T) (*store.Store, *crashDevice, *FS) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	f, err := device.OpenFile(filepath.Join(dir, "pool"), 512*MiB)
	if err != nil {
		t.Fatal(err)
	}
	dev := &crashDevice{File: f, t: t, src: dir}
	s, err := store.Open(ctx, filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	v, err := s.CreateVolume(ctx, store.CreateOptions{Tenant: "t", Name: "fs", Kind: store.KindFS, Size: 400 * MiB, ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return s, dev, Of(v)
}

const bigFile = 300 * MiB

// fillBig creates an open file of bigFile bytes by fallocate and writes a
// 4 KiB pattern into every 64th chunk; it returns the inode.
func fillBig(t *testing.T, f *FS, name string) uint64 {
	t.Helper()
	ctx := context.Background()
	a, err := f.CreateOpen(ctx, RootIno, name, NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Fallocate(ctx, a.Ino, 0, bigFile, 0); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < bigFile; off += 64 * 4096 {
		if err := f.v.WriteAt(ctx, a.Ino, pattern(uint64(off), 4096), off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Fsync(ctx, a.Ino, false); err != nil {
		t.Fatal(err)
	}
	return a.Ino
}

// checkBig reads every written chunk of ino back: each is its pattern or,
// at or past cut, zeros where cut allows them (a crash midway through a cut
// leaves a prefix of it done).
func checkBig(t *testing.T, v *store.Volume, ino uint64, length, cut int64) (kept, zeroed int) {
	t.Helper()
	got := make([]byte, 4096)
	for off := int64(0); off < length; off += 64 * 4096 {
		if err := v.ReadAt(context.Background(), ino, got, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		switch {
		case bytes.Equal(got, pattern(uint64(off), 4096)):
			kept++
		case off >= cut && bytes.Equal(got, make([]byte, 4096)):
			zeroed++
		default:
			t.Fatalf("chunk at %d holds neither its data nor zeros (cut at %d)", off, cut)
		}
	}
	return kept, zeroed
}

// TestBigRanges: fallocate, truncate and unlink of a file of 76,800
// chunks go through the bulk paths (store/ranges.go); the file reads right
// after each, fsck is clean, and the space freed is reusable at once: the
// pool holds the file once, not twice.
func TestBigRanges(t *testing.T) {
	ctx := context.Background()
	s, _, f := bigRangeStore(t)
	base := s.Stats().Used
	ino := fillBig(t, f, "big")
	if used := s.Stats().Used - base; used < bigFile {
		t.Fatalf("fallocate of %d bytes holds %d bytes of pool", bigFile, used)
	}
	if kept, _ := checkBig(t, f.v, ino, bigFile, bigFile); kept != bigFile/(64*4096) {
		t.Fatalf("%d chunks kept their data", kept)
	}
	mustFsck(t, s, "fs")
	// Truncate to 1 MiB + 100 bytes: the first 256 chunks stay (the
	// last only up to the new end), the rest goes.
	size := int64(MiB + 100)
	if _, err := f.SetAttr(ctx, ino, SetAttr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	if kept, _ := checkBig(t, f.v, ino, MiB, bigFile); kept != 4 {
		t.Fatalf("%d chunks kept their data below the new end, want 4", kept)
	}
	mustFsck(t, s, "fs")
	// The pool (512 MiB) cannot hold a second such file until the
	// truncate's frees are reused: fallocate syncs for space itself.
	if err := f.Fallocate(ctx, ino, 0, bigFile, 0); err != nil {
		t.Fatalf("fallocate after truncate: %v", err)
	}
	got := make([]byte, 4096)
	if err := f.v.ReadAt(ctx, ino, got, 100*MiB); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("reallocated space does not read as zeros (%v)", err)
	}
	f.Release(ctx, ino)
	if err := f.Unlink(ctx, RootIno, "big"); err != nil {
		t.Fatal(err)
	}
	if err := s.SyncMeta(); err != nil {
		t.Fatal(err)
	}
	if used := s.Stats().Used; used != base {
		t.Fatalf("pool use %d after unlink, %d before the file", used, base)
	}
	mustFsckEmpty(t, s, "fs")
}

// TestBigRangesCrash takes a crash image at every point where a truncate
// to 0 and an unlink of a 76,800-chunk file zero a run of extents (between
// their batches' commits), then opens each image: fsck is clean, the
// truncated file holds its data or zeros chunk by chunk (never other
// bytes), and the unlinked file's space is all back.
func TestBigRangesCrash(t *testing.T) {
	ctx := context.Background()
	for _, op := range []string{"truncate", "unlink"} {
		t.Run(op, func(t *testing.T) {
			s, dev, f := bigRangeStore(t)
			base := s.Stats().Used
			ino := fillBig(t, f, "big")
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			dev.arm()
			switch op {
			case "truncate":
				zero := int64(0)
				if _, err := f.SetAttr(ctx, ino, SetAttr{Size: &zero}); err != nil {
					t.Fatal(err)
				}
				f.Release(ctx, ino)
			case "unlink":
				f.Release(ctx, ino)
				if err := f.Unlink(ctx, RootIno, "big"); err != nil {
					t.Fatal(err)
				}
			}
			images := dev.arm()
			if len(images) < 2 {
				t.Fatalf("%d crash points, want the op to zero in more than one batch", len(images))
			}
			var partial bool
			for i, img := range images {
				t.Run(fmt.Sprint("image", i), func(t *testing.T) {
					d, err := device.OpenFile(filepath.Join(img, "pool"), 0)
					if err != nil {
						t.Fatal(err)
					}
					s2, err := store.Open(ctx, filepath.Join(img, "meta"), d, store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
					if err != nil {
						t.Fatal(err)
					}
					defer s2.Close()
					mustFsck(t, s2, "fs")
					v2, err := s2.Volume("t", "fs")
					if err != nil {
						t.Fatal(err)
					}
					f2 := Of(v2)
					if op == "unlink" {
						if _, err := f2.Lookup(ctx, RootIno, "big"); !errors.Is(err, store.ErrNotFound) {
							t.Fatalf("unlinked file after the crash: %v", err)
						}
						if used := s2.Stats().Used; used != base {
							t.Fatalf("pool use %d after the crash, %d before the file", used, base)
						}
						return
					}
					a, err := f2.Open(ctx, ino)
					if err != nil {
						t.Fatal(err)
					}
					defer f2.Release(ctx, ino)
					kept, zeroed := checkBig(t, v2, ino, a.Size, 0)
					if kept > 0 && zeroed > 0 {
						partial = true
					}
				})
			}
			if op == "truncate" && !partial {
				t.Fatal("no crash image caught the truncate halfway (some chunks cut, some not)")
			}
			mustFsck(t, s, "fs")
		})
	}
}
