package fsns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/store"
)

const unit = 4096

// mustAllocated fails unless the volume's chunks hold want bytes of pool
// space.
func mustAllocated(t *testing.T, v *store.Volume, want int64, what string) {
	t.Helper()
	if got := v.AllocatedBytes(); got != want {
		t.Fatalf("%s: volume holds %d bytes, want %d", what, got, want)
	}
}

// mustContent fails unless the file reads as want up to its length and
// as zeros in the rest of its last chunk.
func mustContent(t *testing.T, v *store.Volume, ino uint64, want []byte) {
	t.Helper()
	cs := v.ChunkSize()
	end := (int64(len(want)) + cs - 1) / cs * cs
	got := make([]byte, end)
	if err := v.ReadAt(context.Background(), ino, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(want)], want) {
		i := 0
		for i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("file differs at byte %d of %d", i, len(want))
	}
	if !bytes.Equal(got[len(want):], make([]byte, end-int64(len(want)))) {
		t.Fatal("bytes past the end of the file are not zeros")
	}
	// A read of a short chunk's tail alone, and one across its stored end.
	if len(want) > 100 {
		p := make([]byte, 200)
		if err := v.ReadAt(context.Background(), ino, p, int64(len(want))-100); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p[:100], want[len(want)-100:]) || !bytes.Equal(p[100:], make([]byte, 100)) {
			t.Fatal("read across the end of the data differs")
		}
	}
}

// TestShortChunks: a file's last chunk takes the units its data needs; it
// is written in place inside them, re-placed (copy-on-write) when a write
// goes past them, made full by fallocate, cut by truncate and unmapped by
// unlink; reads, fsck, scrub and a reopen of the store agree throughout.
func TestShortChunks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, dev := diskStore(t, dir, 256*MiB)
	base := s.Stats().Used
	v, f := newFSVolume(t, s, "fs", 64*MiB)
	cs := v.ChunkSize()
	a := mustCreate(t, f, RootIno, "a", syscall.S_IFREG|0o644)
	if _, err := f.Open(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	data := pattern(5, 200000)
	write := func(off, n int64) {
		t.Helper()
		if err := v.WriteAt(ctx, a.Ino, data[off:off+n], off, false); err != nil {
			t.Fatal(err)
		}
	}
	// A small file: two units.
	write(0, 5000)
	mustAllocated(t, v, 2*unit, "a 5000-byte file")
	mustContent(t, v, a.Ino, data[:5000])
	// Inside the stored units: in place, nothing allocated.
	write(5000, 3000)
	mustAllocated(t, v, 2*unit, "written inside its units")
	mustContent(t, v, a.Ino, data[:8000])
	// Past them: re-placed at twice the size (a small append).
	write(8000, 1200)
	mustAllocated(t, v, 4*unit, "grown past its units")
	mustContent(t, v, a.Ino, data[:9200])
	// A big write: chunk 0 full, chunk 1 short (80000 - 65536 bytes).
	write(9200, 70800)
	mustAllocated(t, v, cs+4*unit, "grown into a second chunk")
	mustContent(t, v, a.Ino, data[:80000])
	// Through the transforming path and back: a checksummed write makes
	// chunk 1 transformed (a whole chunk's plain bytes), a plain write
	// past its end makes it plain again, full (it held a whole chunk).
	mustWrite(t, v, a.Ino, 80000, data[80000:81000], store.Filters{Chain: chainOf(t, testEnv(t), "checksum")})
	write(81000, 1000)
	mustAllocated(t, v, 2*cs, "rewritten plain after a transform")
	mustContent(t, v, a.Ino, data[:82000])
	// Truncate into chunk 1 then below it: chunk 1 unmapped, chunk 0's
	// rest zeroed.
	for _, size := range []int64{70000, 3000} {
		sz := size
		if _, err := f.SetAttr(ctx, a.Ino, SetAttr{Size: &sz}); err != nil {
			t.Fatal(err)
		}
	}
	mustAllocated(t, v, cs, "truncated to 3000 bytes")
	mustContent(t, v, a.Ino, data[:3000])

	// A sparse file whose only data is a few bytes in its fourth chunk:
	// one unit; fallocate over it makes it full.
	b := mustCreate(t, f, RootIno, "b", syscall.S_IFREG|0o644)
	if _, err := f.Open(ctx, b.Ino); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, b.Ino, []byte("tail"), 3*cs+10, false); err != nil {
		t.Fatal(err)
	}
	mustAllocated(t, v, cs+unit, "a sparse file with 4 bytes")
	want := make([]byte, 3*cs+14)
	copy(want[3*cs+10:], "tail")
	mustContent(t, v, b.Ino, want)
	if err := f.Fallocate(ctx, b.Ino, 3*cs, cs, FallocKeepSize); err != nil {
		t.Fatal(err)
	}
	mustAllocated(t, v, 2*cs, "fallocated over the short chunk")
	mustContent(t, v, b.Ino, want)
	// A small file at a chunk boundary: its last chunk is short, the
	// first full.
	c := mustCreate(t, f, RootIno, "c", syscall.S_IFREG|0o644)
	if _, err := f.Open(ctx, c.Ino); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, c.Ino, data[:cs+1], 0, false); err != nil {
		t.Fatal(err)
	}
	mustAllocated(t, v, 3*cs+unit, "a chunk and a byte")
	mustContent(t, v, c.Ino, data[:cs+1])
	// st_blocks counts what each file holds, open (its object) and
	// closed (its chunk map).
	blocks := map[uint64]int64{a.Ino: cs / 512, b.Ino: cs / 512, c.Ino: (cs + unit) / 512}
	mustBlocks := func(when string) {
		t.Helper()
		for ino, want := range blocks {
			if at, err := f.GetAttr(ctx, ino); err != nil || at.Blocks != want {
				t.Fatalf("%s: inode %d has %d blocks (%v), want %d", when, ino, at.Blocks, err, want)
			}
		}
	}
	mustBlocks("open")
	for _, ino := range []uint64{a.Ino, b.Ino, c.Ino} {
		if err := f.Release(ctx, ino); err != nil {
			t.Fatal(err)
		}
	}
	mustBlocks("closed")
	r := mustFsck(t, s, "fs")
	if r.Short != 1 {
		t.Fatalf("fsck counts %d short chunks, want 1 (c's)", r.Short)
	}
	sr, err := v.Scrub(ctx)
	if err != nil || !sr.Clean() || sr.Short != 1 {
		t.Fatalf("scrub: %+v %v", sr, err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	held := v.AllocatedBytes()
	if used := s.Stats().Used - base; used != held {
		t.Fatalf("pool use %d after a flush, the volume holds %d", used, held)
	}

	// Reopened: the same bytes from the chunk maps.
	closeStore(t, s, dev)
	s, dev = diskStore(t, dir, 0)
	defer closeStore(t, s, dev)
	v, err = s.Volume("t", "fs")
	if err != nil {
		t.Fatal(err)
	}
	f = Of(v)
	mustAllocated(t, v, held, "after a reopen")
	for _, x := range []struct {
		ino  uint64
		want []byte
	}{{a.Ino, data[:3000]}, {b.Ino, want}, {c.Ino, data[:cs+1]}} {
		if _, err := f.Open(ctx, x.ino); err != nil {
			t.Fatal(err)
		}
		mustContent(t, v, x.ino, x.want)
	}
	// Grown after the reopen: c's short chunk is re-placed full.
	if err := v.WriteAt(ctx, c.Ino, data[cs+1:2*cs], cs+1, false); err != nil {
		t.Fatal(err)
	}
	mustContent(t, v, c.Ino, data[:2*cs])
	for _, ino := range []uint64{a.Ino, b.Ino, c.Ino} {
		f.Release(ctx, ino)
	}
	for _, name := range []string{"a", "b", "c"} {
		if err := f.Unlink(ctx, RootIno, name); err != nil {
			t.Fatal(err)
		}
	}
	mustAllocated(t, v, 0, "all unlinked")
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if used := s.Stats().Used; used != base {
		t.Fatalf("pool use %d after unlinking everything, %d before", used, base)
	}
	mustFsckEmpty(t, s, "fs")
}

// TestShortChunksVolumeSize: an fs volume's size bounds the space its
// chunks hold, short ones counted by their units: many small files fit
// where whole chunks would not, statfs says what they hold, and a short
// chunk that grows past what is left fails with ENOSPC.
func TestShortChunksVolumeSize(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	v, f := newFSVolume(t, s, "small", MiB) // 16 chunks of 64 KiB
	var small []uint64
	for i := range 40 {
		a := mustCreate(t, f, RootIno, fmt.Sprint("s", i), syscall.S_IFREG|0o644)
		f.Open(ctx, a.Ino)
		if err := v.WriteAt(ctx, a.Ino, pattern(uint64(i), 1000), 0, false); err != nil {
			t.Fatalf("small file %d: %v", i, err)
		}
		small = append(small, a.Ino)
	}
	if st := f.StatFS(ctx); st.BlocksFree != (MiB-40*unit)/unit {
		t.Fatalf("statfs with 40 one-unit files: %d blocks free, want %d", st.BlocksFree, (MiB-40*unit)/unit)
	}
	big := mustCreate(t, f, RootIno, "big", syscall.S_IFREG|0o644)
	f.Open(ctx, big.Ino)
	if err := v.WriteAt(ctx, big.Ino, pattern(99, 768<<10), 0, false); err != nil {
		t.Fatal(err)
	}
	// 160 KiB + 768 KiB held; growing a one-unit file to a full chunk
	// takes 60 KiB more: once, not twice.
	cs := v.ChunkSize()
	if err := v.WriteAt(ctx, small[0], pattern(1, int(cs)), 0, false); err != nil {
		t.Fatalf("first growth: %v", err)
	}
	if err := v.WriteAt(ctx, small[1], pattern(1, int(cs)), 0, false); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("growth past the volume's size: %v, want ENOSPC", err)
	}
	mustContent(t, v, small[1], pattern(1, 1000))
	for _, ino := range append(small, big.Ino) {
		f.Release(ctx, ino)
	}
	mustFsck(t, s, "small")
}

// flushCounter is a pool file that counts device flushes and durable
// writes.
type flushCounter struct {
	*device.File
	n atomic.Int64
}

func (d *flushCounter) Flush() error {
	d.n.Add(1)
	return d.File.Flush()
}

func (d *flushCounter) WriteAtSync(p []byte, off int64) (int, error) {
	d.n.Add(1)
	return d.File.WriteAtSync(p, off)
}

// TestShortGrowthDurable: re-placing a short chunk whose bytes a flush
// may have promised writes the new extent through to the device before
// its entry is committed (a power loss must not leave the entry pointing
// at bytes that never reached the disk while the old ones are gone; a
// short chunk is written in place later, so a pending record's crc,
// pending.go, could not tell); a file being written out with no flush
// since it was created pays nothing.
func TestShortGrowthDurable(t *testing.T) {
	ctx := context.Background()
	s, dev, v, f := flushCountedFS(t)
	a, err := f.CreateOpen(ctx, RootIno, "a", NewInode{Mode: syscall.S_IFREG | 0o644}) // as O_CREAT does
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(3, 60000)
	before := dev.n.Load()
	for _, end := range []int{3000, 9000, 20000} { // 1 unit, grown to 3, to 6
		if err := v.WriteAt(ctx, a.Ino, data[:end], 0, false); err != nil {
			t.Fatal(err)
		}
	}
	if n := dev.n.Load() - before; n != 0 {
		t.Fatalf("%d device flushes or durable writes growing a file written out with no flush", n)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before = dev.n.Load()
	if err := v.WriteAt(ctx, a.Ino, data[:50000], 0, false); err != nil { // grown to 13 units
		t.Fatal(err)
	}
	if n := dev.n.Load() - before; n != 1 {
		t.Fatalf("%d device flushes or durable writes growing a short chunk after a flush, want 1 (the new extent's)", n)
	}
	mustContent(t, v, a.Ino, data[:50000])
	f.Release(ctx, a.Ino)
}

// TestFilteredRewriteDurable: a rewrite of a transformed chunk that holds
// data (copy-on-write) costs no device flush or write-through, before or
// after a flush: once a flush was issued since the file was created
// (growDurably) it leaves a pending record, as a short chunk's growth
// does, so that a power loss that kept the entry but not its extent's
// bytes falls back to the flushed ones (store TestPendingCrash).
func TestFilteredRewriteDurable(t *testing.T) {
	ctx := context.Background()
	s, dev, v, f := flushCountedFS(t)
	a, err := f.CreateOpen(ctx, RootIno, "a", NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	crc := store.Filters{Chain: chainOf(t, testEnv(t), "checksum")}
	data := pattern(5, 3*64*1024)
	before := dev.n.Load()
	mustWrite(t, v, a.Ino, 0, data, crc)               // three holes
	mustWrite(t, v, a.Ino, 1000, data[1000:5000], crc) // a rewrite, no flush yet
	if n := dev.n.Load() - before; n != 0 {
		t.Fatalf("%d device flushes or durable writes before any flush", n)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before = dev.n.Load()
	copy(data[70000:], pattern(6, 4096))
	mustWrite(t, v, a.Ino, 70000, data[70000:70000+4096], crc) // chunk 1 rewritten
	if n := dev.n.Load() - before; n != 0 {
		t.Fatalf("%d device flushes or durable writes rewriting a filtered chunk after a flush, want 0 (a pending record instead)", n)
	}
	mustContent(t, v, a.Ino, data)
	f.Release(ctx, a.Ino)
}

// flushCountedFS is an fs volume on a pool file whose device flushes and
// durable writes are counted, with no background sync (closed with t).
func flushCountedFS(t *testing.T) (*store.Store, *flushCounter, *store.Volume, *FS) {
	t.Helper()
	dir := t.TempDir()
	f0, err := device.OpenFile(filepath.Join(dir, "pool"), 256*MiB)
	if err != nil {
		t.Fatal(err)
	}
	dev := &flushCounter{File: f0}
	s, err := store.Open(context.Background(), filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeStore(t, s, dev) })
	v, f := newFSVolume(t, s, "fs", 64*MiB)
	return s, dev, v, f
}
