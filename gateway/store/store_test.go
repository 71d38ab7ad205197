package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
)

const MiB = 1 << 20

func openFile(t *testing.T, dir string) (*Store, *device.File) {
	t.Helper()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 256*MiB)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), filepath.Join(dir, "meta"), dev, Options{SyncInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return s, dev
}

func closeStore(t *testing.T, s *Store, dev device.Device) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
}

func memStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), "", device.NewMemory(256*MiB), Options{InMemoryMeta: true, SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestWriteReadPersist(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, dev := openFile(t, dir)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 64 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	// Unaligned writes across chunk boundaries, a write spanning many chunks.
	writes := []struct {
		off int64
		n   int
	}{{0, 4096}, {65536 - 100, 300}, {3*MiB + 7, 2*MiB + 11}, {64*MiB - 4096, 4096}}
	for i, w := range writes {
		if err := v.WriteAt(ctx, 0, pattern(uint64(i), w.n), w.off, i == 1); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	check := func(v *Volume) {
		t.Helper()
		for i, w := range writes {
			got := make([]byte, w.n)
			if err := v.ReadAt(ctx, 0, got, w.off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, pattern(uint64(i), w.n)) {
				t.Fatalf("write %d at %d: data differs", i, w.off)
			}
		}
		hole := make([]byte, 8192)
		if err := v.ReadAt(ctx, 0, hole, 20*MiB); err != nil || !bytes.Equal(hole, make([]byte, 8192)) {
			t.Fatalf("unwritten range not zero (err %v)", err)
		}
	}
	check(v)
	closeStore(t, s, dev)

	s, dev = openFile(t, dir)
	defer closeStore(t, s, dev)
	v, err = s.Volume("acme", "db")
	if err != nil {
		t.Fatal(err)
	}
	check(v)
}

func TestThinProvisioningAndDiscardReturnsSpace(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, dev := openFile(t, dir)
	defer closeStore(t, s, dev)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: 10 << 30})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(1, 8*MiB)
	if err := v.WriteAt(ctx, 0, data, 100*MiB, false); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Used; got != 8*MiB {
		t.Fatalf("pool used %d, want %d (thin provisioning)", got, 8*MiB)
	}
	if a, _ := dev.Allocated(); a < 8*MiB || a > 10*MiB {
		t.Fatalf("pool file holds %d bytes, want about 8 MiB", a)
	}
	ext, err := v.Extents(ctx, 0, 96*MiB, 16*MiB)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{96 * MiB, 4 * MiB, true}, {100 * MiB, 8 * MiB, false}, {108 * MiB, 4 * MiB, true}}
	if len(ext) != len(want) {
		t.Fatalf("extents %+v, want %+v", ext, want)
	}
	for i := range want {
		if ext[i] != want[i] {
			t.Fatalf("extents %+v, want %+v", ext, want)
		}
	}
	// Discard 6 MiB plus a partial chunk at each end.
	if err := v.Discard(ctx, 0, 100*MiB+1000, 6*MiB); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8*MiB)
	if err := v.ReadAt(ctx, 0, got, 100*MiB); err != nil {
		t.Fatal(err)
	}
	exp := append([]byte(nil), data...)
	clear(exp[1000 : 1000+6*MiB])
	if !bytes.Equal(got, exp) {
		t.Fatal("discarded range does not read as zeros, or neighbours changed")
	}
	// Whole chunks inside the range are unmapped; after a flush their space
	// is back in the pool (TestFreedSpaceNotReusedBeforeSync covers the wait).
	freedChunks := int64((6*MiB - (65536 - 1000)) / 65536)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := s.Stats().Used, 8*MiB-freedChunks*65536; got != want {
		t.Fatalf("pool used after flush %d, want %d", got, want)
	}
	if a, _ := dev.Allocated(); a > 3*MiB {
		t.Fatalf("pool file still holds %d bytes after discard", a)
	}
}

func TestFreedSpaceNotReusedBeforeSync(t *testing.T) {
	ctx := context.Background()
	dev := device.NewMemory(dataStart + 4*64<<10 + maxChunkSize)
	s, err := Open(ctx, "", dev, Options{InMemoryMeta: true, SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Exactly 4 chunks of pool beyond the reserved area... plus slack; fill it.
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	chunks := int(s.alloc.units * unitSize / DefaultChunkSize)
	for i := 0; i < chunks; i++ {
		if err := v.WriteAt(ctx, 0, []byte{1}, int64(i)*DefaultChunkSize, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.WriteAt(ctx, 0, []byte{1}, int64(chunks)*DefaultChunkSize, false); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write into a full pool: %v, want ErrNoSpace", err)
	}
	// A free into a full pool nudges the background sync at once (the
	// allocator's pressure rule); hold syncs off while checking that
	// nothing but a sync makes the extent reusable.
	s.syncMu.Lock()
	if err := v.Discard(ctx, 0, 0, DefaultChunkSize); err != nil {
		s.syncMu.Unlock()
		t.Fatal(err)
	}
	_, _, err = s.alloc.alloc(DefaultChunkSize)
	pending := s.alloc.pendingFrees()
	s.syncMu.Unlock()
	if !errors.Is(err, ErrNoSpace) || pending != 1 {
		t.Fatalf("freed extent reusable before the freeing commit was durable: %v (pending frees %d)", err, pending)
	}
	// A write into the full pool makes the free durable (a metadata sync,
	// the only thing that releases frees), then reuses the extent.
	if err := v.WriteAt(ctx, 0, []byte{1}, int64(chunks)*DefaultChunkSize, false); err != nil {
		t.Fatalf("freed extent not reusable after a sync: %v", err)
	}
	if s.alloc.pendingFrees() != 0 {
		t.Fatal("extent reused without the sync that releases it")
	}
	if err := v.Discard(ctx, 0, DefaultChunkSize, DefaultChunkSize); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, 0, []byte{1}, int64(chunks+1)*DefaultChunkSize, false); err != nil {
		t.Fatalf("freed extent not reusable after flush: %v", err)
	}
}

func TestDeleteReturnsSpaceAndNameIsReusable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, dev := openFile(t, dir)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: 64 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, 0, pattern(2, 16*MiB), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVolume(ctx, "t", "v"); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(ctx, 0, make([]byte, 10), 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("IO on deleted volume: %v, want ErrNotFound", err)
	}
	if used := s.Stats().Used; used != 0 {
		t.Fatalf("pool used %d after delete, want 0", used)
	}
	v2, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: 64 * MiB})
	if err != nil {
		t.Fatalf("name not reusable: %v", err)
	}
	got := make([]byte, MiB)
	if err := v2.ReadAt(ctx, 0, got, 0); err != nil || !bytes.Equal(got, make([]byte, MiB)) {
		t.Fatal("a new volume sees an old volume's data")
	}
	closeStore(t, s, dev)
	s, dev = openFile(t, dir)
	defer closeStore(t, s, dev)
	if n := len(s.Volumes()); n != 1 {
		t.Fatalf("%d volumes after restart, want 1", n)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, "", device.NewMemory(64*MiB), Options{InMemoryMeta: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: MiB}); err != nil {
		t.Fatal(err)
	}
	for _, o := range []CreateOptions{
		{Tenant: "t", Name: "v", Size: MiB},   // duplicate
		{Tenant: "t", Name: "w", Size: 0},     // zero
		{Tenant: "t", Name: "w", Size: 1000},  // unaligned
		{Tenant: "t/x", Name: "w", Size: MiB}, // bad tenant
		{Tenant: "t", Name: "", Size: MiB},    // bad name
		{Tenant: "t", Name: "w", Size: MiB, ChunkSize: 3000},
		{Tenant: "t", Name: "w", Size: MiB, Kind: "tape"},
	} {
		if _, err := s.CreateVolume(ctx, o); err == nil {
			t.Errorf("create %+v succeeded", o)
		}
	}
	if n := len(s.Volumes()); n != 1 {
		t.Fatalf("%d volumes, want 1", n)
	}
	if err := s.ResizeVolume(ctx, "t", "v", 512<<10); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrink: %v", err)
	}
	if err := s.ResizeVolume(ctx, "t", "nope", 2*MiB); !errors.Is(err, ErrNotFound) {
		t.Fatalf("resize unknown: %v", err)
	}
	v, _ := s.Volume("t", "v")
	if err := v.ReadAt(ctx, 0, make([]byte, 10), MiB-5); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past end: %v", err)
	}
	if err := v.WriteAt(ctx, 0, make([]byte, 10), MiB-5, false); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write past end: %v", err)
	}
	if err := v.Discard(ctx, 0, -1, 10); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("discard at -1: %v", err)
	}
	if err := s.ResizeVolume(ctx, "t", "v", 4*MiB); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, 0, []byte("grown"), 3*MiB, false); err != nil {
		t.Fatalf("write into grown range: %v", err)
	}
}

// Concurrent writers and discarders on overlapping chunks: each goroutine
// owns its own 4 KiB blocks, so every block's final content is known.
func TestConcurrentIO(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, "", device.NewMemory(128*MiB), Options{InMemoryMeta: true, SyncInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: 16 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	const workers, blocks = 8, 4096 // 16 MiB of 4 KiB blocks, block b owned by b%workers
	final := make([][]byte, blocks)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for i := 0; i < 3000; i++ {
				b := int(r.IntN(blocks/workers))*workers + w
				if r.IntN(5) == 0 {
					if err := v.Discard(ctx, 0, int64(b)*4096, 4096); err != nil {
						t.Error(err)
						return
					}
					final[b] = nil
					continue
				}
				data := pattern(uint64(w*100000+i), 4096)
				if err := v.WriteAt(ctx, 0, data, int64(b)*4096, false); err != nil {
					t.Error(err)
					return
				}
				final[b] = data
			}
		}(w)
	}
	wg.Wait()
	got := make([]byte, 4096)
	for b := range final {
		if err := v.ReadAt(ctx, 0, got, int64(b)*4096); err != nil {
			t.Fatal(err)
		}
		want := final[b]
		if want == nil {
			want = make([]byte, 4096)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("block %d differs", b)
		}
	}
}

func TestWrongDeviceRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, dev := openFile(t, dir)
	closeStore(t, s, dev)
	other, err := device.OpenFile(filepath.Join(dir, "other"), 256*MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := Open(ctx, filepath.Join(dir, "meta"), other, Options{}); err == nil {
		t.Fatal("opened metadata against a device that is not its own")
	}
	dev2, _ := device.OpenFile(filepath.Join(dir, "pool"), 0)
	defer dev2.Close()
	if _, err := Open(ctx, filepath.Join(dir, "meta2"), dev2, Options{}); err == nil {
		t.Fatal("reinitialised a device that holds a pool, with empty metadata")
	}
}

// Resizing while IO runs keeps every write (the table is swapped under all
// stripe locks) and is race-free; a huge thin volume costs little memory.
func TestResizeDuringIOAndHugeThinVolume(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, "", device.NewMemory(256*MiB), Options{InMemoryMeta: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: 8 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := int64(0); i < 128; i++ {
			if err := v.WriteAt(ctx, 0, pattern(uint64(i), 4096), i*65536, false); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for size := int64(9 * MiB); size <= 40*MiB; size += MiB {
		if err := s.ResizeVolume(ctx, "t", "v", size); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	for i := int64(0); i < 128; i++ {
		got := make([]byte, 4096)
		if err := v.ReadAt(ctx, 0, got, i*65536); err != nil || !bytes.Equal(got, pattern(uint64(i), 4096)) {
			t.Fatalf("chunk %d lost across resizes (err %v)", i, err)
		}
	}

	huge, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "huge", Size: MaxVolumeSize})
	if err != nil {
		t.Fatal(err)
	}
	if top := len(huge.obj0.table.Load().top); top*8 > 4*MiB {
		t.Fatalf("a 64 TiB thin volume costs %d bytes of table", top*8)
	}
	if err := huge.WriteAt(ctx, 0, []byte("end"), MaxVolumeSize-3, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "too-big", Size: MaxVolumeSize + 4096}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("volume over the maximum: %v", err)
	}
}

// A multi-chunk write into holes lands in one contiguous extent (so a large
// read is one device IO); in a fragmented pool it still succeeds, in pieces.
func TestContiguousAllocationAndFragmentedPool(t *testing.T) {
	ctx := context.Background()
	const chunks = 64
	dev := device.NewMemory(dataStart + chunks*DefaultChunkSize)
	s, err := Open(ctx, "", dev, Options{InMemoryMeta: true, SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: 64 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(3, MiB)
	if err := v.WriteAt(ctx, 0, data, 0, false); err != nil {
		t.Fatal(err)
	}
	tab := v.obj0.table.Load()
	for i := int64(1); i < 16; i++ {
		if tab.get(i) != tab.get(0)+i*DefaultChunkSize {
			t.Fatalf("chunk %d at %d, not contiguous after chunk 0 at %d", i, tab.get(i), tab.get(0))
		}
	}
	// Fill the rest of the pool with single chunks, then free every other
	// one: no two free chunks are adjacent.
	for i := int64(16); i < chunks; i++ {
		if err := v.WriteAt(ctx, 0, []byte{1}, (i+100)*DefaultChunkSize, false); err != nil {
			t.Fatal(err)
		}
	}
	for i := int64(16); i < chunks; i += 2 {
		if err := v.Discard(ctx, 0, (i+100)*DefaultChunkSize, DefaultChunkSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	big := pattern(4, 8*DefaultChunkSize+100)
	if err := v.WriteAt(ctx, 0, big, 40*MiB+7, false); err != nil {
		t.Fatalf("multi-chunk write into a fragmented pool: %v", err)
	}
	got := make([]byte, len(big))
	if err := v.ReadAt(ctx, 0, got, 40*MiB+7); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read back after fragmented allocation differs (err %v)", err)
	}
	first := make([]byte, MiB)
	if err := v.ReadAt(ctx, 0, first, 0); err != nil || !bytes.Equal(first, data) {
		t.Fatal("first write damaged")
	}
}

// TestLabelsValidated: label keys and values are bounded and printable
// (issue 17: NUL, ESC, empty and 5,000-character keys were accepted).
func TestLabelsValidated(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	many := map[string]string{}
	for i := range maxLabels + 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	for name, labels := range map[string]map[string]string{
		"empty key":      {"": "v"},
		"NUL in key":     {"a\x00b": "v"},
		"ESC in value":   {"k": "\x1b[31mred"},
		"long key":       {strings.Repeat("k", 5000): "v"},
		"long value":     {"k": strings.Repeat("v", 256)},
		"invalid UTF-8":  {"k": "\xff"},
		"too many":       many,
		"key starts '-'": {"-k": "v"},
	} {
		_, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: MiB, Labels: labels})
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	ok := map[string]string{"app": "db", "example.com/tier": "gold", "note": "", "team_1": "ünïcode ok"}
	if _, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: MiB, Labels: ok}); err != nil {
		t.Fatalf("valid labels: %v", err)
	}
}

// TestFSVolumeNeedsNamespace: a store opened without a NamespaceMaker holds
// block volumes only (the namespace is package fsns, which the store cannot
// import): it refuses to create an fs volume.
func TestFSVolumeNeedsNamespace(t *testing.T) {
	s := memStore(t)
	_, err := s.CreateVolume(context.Background(), CreateOptions{Tenant: "t", Name: "fs", Kind: KindFS, Size: 16 * MiB})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("create an fs volume without a namespace: %v, want ErrUnsupported", err)
	}
	if _, err := s.Volume("t", "fs"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the refused volume exists: %v", err)
	}
}
