package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/gateway/filter/filtertest"
)

func testEnv(t testing.TB) *filter.Env { return filtertest.Env(t) }

func chainOf(t testing.TB, env *filter.Env, specs ...string) *filter.Chain {
	return filtertest.Chain(t, env, specs...)
}

func openWithEnv(t *testing.T, dir string, env *filter.Env) (*Store, *device.File) {
	t.Helper()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 256*MiB)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), filepath.Join(dir, "meta"), dev, Options{SyncInterval: 20 * time.Millisecond, Filters: env})
	if err != nil {
		t.Fatal(err)
	}
	return s, dev
}

// text is compressible data: words from a small vocabulary.
func text(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, 7))
	words := []string{"sluice ", "storage ", "gateway ", "chunk ", "tenant ", "volume ", "filter\n"}
	b := make([]byte, 0, n+16)
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
	}
	return b[:n]
}

func mustRead(t *testing.T, v *Volume, ino uint64, off int64, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if err := v.ReadAt(context.Background(), ino, got, off); err != nil {
		t.Fatalf("read %d bytes at %d: %v", len(want), off, err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Fatalf("read at %d: first difference at byte %d", off, i)
	}
}

func mustWrite(t *testing.T, v *Volume, ino uint64, off int64, p []byte, f Filters) {
	t.Helper()
	if err := v.WriteAtWith(context.Background(), ino, p, off, false, f); err != nil {
		t.Fatalf("write %d bytes at %d: %v", len(p), off, err)
	}
}

// TestCompressedChunksPersist: compressed writes take less pool space,
// read back, survive a restart (free space derived from stored lengths),
// and fsck stays clean.
func TestCompressedChunksPersist(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	env := testEnv(t)
	s, dev := openWithEnv(t, dir, env)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 64 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	zstd := Filters{Chain: chainOf(t, env, "compression")}
	data := text(1, 8*MiB+1234)
	mustWrite(t, v, 0, 100, data, zstd)
	// A partial rewrite inside compressed chunks, and one at a hole.
	patch := text(2, 70000)
	mustWrite(t, v, 0, 3*MiB+5, patch, zstd)
	copy(data[3*MiB+5-100:], patch)
	hole := text(3, 5000)
	mustWrite(t, v, 0, 40*MiB+17, hole, zstd)
	mustRead(t, v, 0, 100, data)
	mustRead(t, v, 0, 40*MiB+17, hole)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	logical := int64(len(data)) + 64<<10
	if a := v.AllocatedBytes(); a > logical*4/10 || a <= 0 {
		t.Fatalf("compressed volume holds %d bytes for %d written", a, logical)
	}
	used := s.Stats().Used
	if used > logical*4/10 {
		t.Fatalf("pool holds %d bytes for %d written", used, logical)
	}
	alloc := v.AllocatedBytes()
	closeStore(t, s, dev)

	s, dev = openWithEnv(t, dir, env)
	defer closeStore(t, s, dev)
	v, err = s.Volume("acme", "db")
	if err != nil {
		t.Fatal(err)
	}
	mustRead(t, v, 0, 100, data)
	mustRead(t, v, 0, 40*MiB+17, hole)
	if got := s.Stats().Used; got != used {
		t.Fatalf("pool used %d after restart, %d before", got, used)
	}
	if got := v.AllocatedBytes(); got != alloc {
		t.Fatalf("allocated %d after restart, %d before", got, alloc)
	}
	if r, err := s.Fsck(ctx, "acme", "db"); err != nil || !r.Clean() {
		t.Fatalf("fsck: %v %q", err, r.Problems)
	}
	// New writes after the restart must not land on live extents.
	mustWrite(t, v, 0, 20*MiB, text(4, 2*MiB), zstd)
	mustRead(t, v, 0, 100, data)
	if r, err := s.Fsck(ctx, "acme", "db"); err != nil || !r.Clean() {
		t.Fatalf("fsck: %v %q", err, r.Problems)
	}
}

// TestPolicySwitchAndPipeline: chunks written under one chain read back
// after the chain changes; plain writes turn transformed chunks plain;
// compression then encryption is recorded and undone in that order.
func TestPolicySwitchAndPipeline(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	env := testEnv(t)
	s, dev := openWithEnv(t, dir, env)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 16 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 16*MiB)
	write := func(off int64, p []byte, f Filters) {
		t.Helper()
		mustWrite(t, v, 0, off, p, f)
		copy(img[off:], p)
	}
	write(0, text(1, 2*MiB), Filters{Chain: chainOf(t, env, "compression:algo=lz4")})
	write(2*MiB, text(2, 2*MiB), Filters{Chain: chainOf(t, env, "encryption")})
	write(1*MiB+300, text(3, 200000), Filters{Chain: chainOf(t, env, "encryption")}) // rewrites compressed chunks encrypted
	pipe := chainOf(t, env, "compression", "encryption", "checksum")
	write(5*MiB+1, text(4, 1*MiB), Filters{Chain: pipe})
	write(64<<10+10, []byte("plain again"), Filters{}) // a compressed chunk turned plain
	write(8*MiB, text(5, 1*MiB), Filters{})
	mustRead(t, v, 0, 0, img)

	o := v.obj0
	e, err := o.entry((5*MiB + 1) / (64 << 10))
	if err != nil {
		t.Fatal(err)
	}
	r, err := filter.ParseRecord(e.record)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Steps) != 3 || !strings.HasPrefix(r.Steps[0].String(), "compression(zstd") ||
		!strings.HasPrefix(r.Steps[1].String(), "encryption") || !strings.HasPrefix(r.Steps[2].String(), "checksum") {
		t.Fatalf("pipeline record: %s", r)
	}
	if crc, ok := r.Checksum(); !ok || crc != e.checksum {
		t.Fatalf("entry checksum %08x, record %v", e.checksum, r)
	}
	if got := o.table.Load().get(1); got&markTransformed != 0 {
		t.Fatal("chunk 1 still transformed after a plain write")
	}
	closeStore(t, s, dev)
	s, dev = openWithEnv(t, dir, env)
	defer closeStore(t, s, dev)
	v, _ = s.Volume("acme", "db")
	mustRead(t, v, 0, 0, img)

	// A tenant without a key cannot write through encryption, and the
	// failed write changes nothing.
	w, err := s.CreateVolume(ctx, CreateOptions{Tenant: "nokey", Name: "x", Size: MiB})
	if err != nil {
		t.Fatal(err)
	}
	err = w.WriteAtWith(ctx, 0, text(1, 4096), 0, false, Filters{Chain: chainOf(t, env, "encryption")})
	if !errors.Is(err, ErrIO) || !errors.Is(err, filter.ErrNoKey) {
		t.Fatalf("write without a key: %v", err)
	}
	if w.AllocatedBytes() != 0 {
		t.Fatal("failed write holds space")
	}
}

// TestChecksumMismatchIsEIO: a flipped byte in a checksummed chunk makes
// its reads fail with ErrIO, scrub names it, other chunks read fine.
func TestChecksumMismatchIsEIO(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	env := testEnv(t)
	s, dev := openWithEnv(t, dir, env)
	defer closeStore(t, s, dev)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 4 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(9, 1*MiB)
	mustWrite(t, v, 0, 0, data, Filters{Chain: chainOf(t, env, "checksum")})
	e, err := v.obj0.entry(3)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	dev.ReadAt(b, e.devOff+100)
	b[0] ^= 0x40
	dev.WriteAt(b, e.devOff+100)

	err = v.ReadAt(ctx, 0, make([]byte, 4096), 3*64<<10+8192)
	if !errors.Is(err, ErrIO) || !errors.Is(err, filter.ErrChecksum) {
		t.Fatalf("read of a corrupt chunk: %v", err)
	}
	mustRead(t, v, 0, 0, data[:3*64<<10])
	mustRead(t, v, 0, 4*64<<10, data[4*64<<10:])
	rep, err := v.Scrub(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Transformed != 16 || rep.Checksummed != 16 || len(rep.Bad) != 1 || rep.Bad[0].Chunk != 3 || rep.Bad[0].Offset != 3*64<<10 {
		t.Fatalf("scrub: %+v", rep)
	}
	// A partial write must not paper over the damage: it reads the chunk.
	err = v.WriteAtWith(ctx, 0, []byte("x"), 3*64<<10, false, Filters{Chain: chainOf(t, env, "checksum")})
	if !errors.Is(err, ErrIO) {
		t.Fatalf("partial write to a corrupt chunk: %v", err)
	}
	// A whole-chunk write replaces it.
	mustWrite(t, v, 0, 3*64<<10, data[3*64<<10:4*64<<10], Filters{Chain: chainOf(t, env, "checksum")})
	mustRead(t, v, 0, 0, data)
	if rep, _ := v.Scrub(ctx); !rep.Clean() {
		t.Fatalf("scrub after rewrite: %+v", rep)
	}
}

// TestCOWFreesAfterSyncAndZeroes: the extent a copy-on-write replaced keeps
// its bytes until a metadata sync, then is reusable (dirty: zeroed when
// a plain chunk takes it);
// discards of transformed chunks unmap whole ones and zero parts.
func TestCOWFreesAfterSyncAndZeroes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	env := testEnv(t)
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 64*MiB)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, filepath.Join(dir, "meta"), dev, Options{SyncInterval: time.Hour, Filters: env})
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s, dev)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 4 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	old := pattern(1, 64<<10)
	mustWrite(t, v, 0, 0, old, Filters{})
	oldDev := v.obj0.table.Load().get(0)
	zstd := Filters{Chain: chainOf(t, env, "compression")}
	data := text(2, 256<<10)
	mustWrite(t, v, 0, 0, data, zstd)
	got := make([]byte, 64<<10)
	dev.ReadAt(got, oldDev)
	if !bytes.Equal(got, old) {
		t.Fatal("replaced extent changed before the commit was durable")
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if s.alloc.inUse(oldDev, 64<<10) {
		t.Fatal("replaced extent not freed after the sync")
	}
	// Freed dirty (not zeroed): a plain chunk that takes it gets zeros.
	if off, dirty, err := s.alloc.alloc(64 << 10); err != nil || off != oldDev || !dirty {
		t.Fatalf("allocating again: offset %d (freed %d), dirty %v, %v", off, oldDev, dirty, err)
	}
	s.alloc.releaseDirty([]extent{{off: oldDev, length: 64 << 10}})
	if off, _, err := s.allocZeroed(64 << 10); err != nil || off != oldDev {
		t.Fatalf("allocating zeroed: offset %d (freed %d), %v", off, oldDev, err)
	}
	dev.ReadAt(got, oldDev)
	if !bytes.Equal(got, make([]byte, 64<<10)) {
		t.Fatal("a dirty extent allocated for a plain chunk was not zeroed")
	}
	s.alloc.free(oldDev, 64<<10)
	// Partial discard keeps the chunk compressed; whole discard unmaps.
	if err := v.Discard(ctx, 0, 1000, 2000); err != nil {
		t.Fatal(err)
	}
	clear(data[1000:3000])
	if err := v.Discard(ctx, 0, 64<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	clear(data[64<<10 : 128<<10])
	mustRead(t, v, 0, 0, data)
	tb := v.obj0.table.Load()
	if tb.get(0)&markTransformed == 0 || tb.get(1) != 0 {
		t.Fatalf("after discards: chunk 0 %#x chunk 1 %#x", tb.get(0), tb.get(1))
	}
	if err := v.WriteZeroes(ctx, 0, 128<<10, 128<<10, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if a, used := v.AllocatedBytes(), s.Stats().Used; a <= 0 || a > 16<<10 || used != a {
		t.Fatalf("one compressed chunk left: volume holds %d, pool uses %d", a, used)
	}
}

// TestReadCache: reads through the cache hit after the first, and writes
// and discards invalidate.
func TestReadCache(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 4 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	c := filter.NewCache(8 * MiB)
	v.SetCache(c)
	cached := Filters{Cache: true}
	data := pattern(1, 256<<10)
	mustWrite(t, v, 0, 0, data, Filters{})
	got := make([]byte, 10000)
	for i := 0; i < 3; i++ {
		if err := v.ReadAtWith(ctx, 0, got, 5000, cached); err != nil || !bytes.Equal(got, data[5000:15000]) {
			t.Fatalf("cached read: %v", err)
		}
	}
	if st := c.Stats(); st.Hits != 2 || st.Misses != 1 {
		t.Fatalf("cache stats %+v", st)
	}
	mustWrite(t, v, 0, 6000, []byte("new"), Filters{})
	copy(data[6000:], "new")
	if err := v.ReadAtWith(ctx, 0, got, 5000, cached); err != nil || !bytes.Equal(got, data[5000:15000]) {
		t.Fatalf("read after write: %v", err)
	}
	if err := v.Discard(ctx, 0, 0, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAtWith(ctx, 0, got, 5000, cached); err != nil || !bytes.Equal(got, make([]byte, 10000)) {
		t.Fatalf("read after discard: %v", err)
	}
}

// TestPlainPathAllocationFree: in-place writes and reads of plain chunks
// allocate nothing.
func TestPlainPathAllocationFree(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 4 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	buf := pattern(1, 256<<10)
	mustWrite(t, v, 0, 0, buf, Filters{})
	small := buf[:4096]
	n := testing.AllocsPerRun(100, func() {
		if err := v.WriteAt(ctx, 0, buf, 4096, false); err != nil {
			t.Fatal(err)
		}
		if err := v.ReadAt(ctx, 0, small, 70000); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("plain write+read allocates %v times", n)
	}
}

func TestAllocatorExactUnits(t *testing.T) {
	a := newAllocator(dataStart, 64*unitSize*8)
	var got []extent
	for _, n := range []int64{3 * unitSize, 17 * unitSize, 16 * unitSize, 65 * unitSize, 100, 70 * unitSize} {
		off, _, err := a.alloc(n)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, extent{off: off, length: n})
	}
	if a.used != 3+17+16+65+1+70 {
		t.Fatalf("used %d units", a.used)
	}
	// No overlaps: marking them again on a fresh allocator succeeds.
	b := newAllocator(dataStart, 64*unitSize*8)
	for _, e := range got {
		if !b.mark(e.off, e.length) {
			t.Fatalf("extents overlap: %+v", got)
		}
		if e.length >= 16*unitSize && e.length&(e.length-1) == 0 && (e.off-dataStart)%e.length != 0 {
			t.Fatalf("power-of-two extent %+v not aligned", e)
		}
	}
	for _, e := range got {
		a.free(e.off, e.length)
	}
	if a.used != 0 {
		t.Fatalf("used %d after freeing all", a.used)
	}
	for _, w := range a.words {
		if w != 0 {
			t.Fatal("bits left set")
		}
	}
}

// FuzzChunkEntry: chunk entries (24 bytes and a filter record) decode
// without panics, refuse unknown flags, and re-encode to the same bytes.
func FuzzChunkEntry(f *testing.F) {
	env := filter.NewEnv(nil)
	defer env.Close()
	c := chainOf(f, env, "compression", "checksum")
	_, rec, err := c.Forward(filter.ChunkContext{}, nil, text(1, 4096))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(chunkEntry{storedLen: 65536, devOff: dataStart}.encode())
	f.Add(chunkEntry{flags: flagRecord, storedLen: 300, devOff: dataStart + 4096, record: rec}.encode())
	f.Add([]byte{1, 2, 0, 0})
	patched, _ := mergePatches(chunkEntry{flags: flagRecord, storedLen: 300, devOff: dataStart + 4096, record: rec},
		[]patch{{sector: 3, devOff: dataStart + 8192, crc: 9}, {sector: 5, sealed: true, devOff: dataStart + 12288, crc: 1,
			seal: filter.PatchSeal{KeyID: [4]byte{1, 2, 3, 4}, Nonce: [12]byte{5}, Tag: [16]byte{6}}}})
	f.Add(patched.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeChunkEntry(b)
		if err != nil {
			return
		}
		if e.flags&^knownFlags != 0 {
			t.Fatalf("unknown flags %#x accepted", e.flags)
		}
		out := e.encode()
		// Reserved bytes are not kept; everything else is.
		want := append([]byte(nil), b...)
		if e.flags&flagPatches == 0 {
			clear(want[2:4])
		}
		clear(want[20:24])
		if !bytes.Equal(out, want) {
			t.Fatalf("entry %x re-encodes as %x", b, out)
		}
		if e.transformed() {
			if r, err := filter.ParseRecord(e.record); err == nil {
				_ = r.String()
				_, _ = env.ChainFor(e.record)
			}
		}
	})
}

// TestConcurrentMixedChains: writers sharing chunks (disjoint bytes), some
// under a transforming chain and some plain, never lose each other's bytes.
func TestConcurrentMixedChains(t *testing.T) {
	ctx := context.Background()
	env := testEnv(t)
	s, err := Open(ctx, "", device.NewMemory(256*MiB), Options{InMemoryMeta: true, SyncInterval: 5 * time.Millisecond, Filters: env})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 4 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	chains := []Filters{{}, {Chain: chainOf(t, env, "compression")}, {Chain: chainOf(t, env, "encryption", "checksum")}, {}}
	const slot = 3000
	errs := make(chan error, len(chains))
	for g := range chains {
		go func(g int) {
			r := mrand.New(mrand.NewPCG(uint64(g), 1))
			for i := 0; i < 150; i++ {
				chunk := int64(r.IntN(8))
				off := chunk*(64<<10) + int64(g)*slot
				p := text(uint64(g*1000+i), slot)
				if err := v.WriteAtWith(ctx, 0, p, off, false, chains[(g+i)%len(chains)]); err != nil {
					errs <- err
					return
				}
				got := make([]byte, slot)
				if err := v.ReadAt(ctx, 0, got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, p) {
					errs <- fmt.Errorf("writer %d round %d: bytes lost", g, i)
					return
				}
			}
			errs <- nil
		}(g)
	}
	for range chains {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if r, err := s.Fsck(ctx, "acme", "db"); err != nil || !r.Clean() {
		t.Fatalf("fsck: %v %q", err, r.Problems)
	}
}

// TestCOWOnNearlyFullPool: concurrent copy-on-write overwrites of a volume
// that fills most of the pool never see ENOSPC: each rewrite frees an
// extent, and the allocator gets it back through a sync (nudged when
// deferred frees pile up, or forced by an allocation that finds the pool
// full, even while another writer's sync holds the frees).
func TestCOWOnNearlyFullPool(t *testing.T) {
	ctx := context.Background()
	env := testEnv(t)
	dev := device.NewMemory(24 * MiB) // superblock and alignment take some
	s, err := Open(ctx, "", dev, Options{InMemoryMeta: true, SyncInterval: time.Hour, Filters: env})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 16 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	noop := Filters{Chain: chainOf(t, env, "noop")}
	mustWrite(t, v, 0, 0, text(1, 16*MiB), noop)
	const writers, rounds = 8, 400 // 8 x 400 x 64 KiB: 200 MiB of new extents
	errs := make(chan error, writers)
	for g := range writers {
		go func() {
			r := mrand.New(mrand.NewPCG(uint64(g), 7))
			for i := range rounds {
				off := int64(r.IntN(16*MiB/4096)) * 4096
				if err := v.WriteAtWith(ctx, 0, text(uint64(g*rounds+i), 4096), off, false, noop); err != nil {
					errs <- fmt.Errorf("writer %d round %d: %w", g, i, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if r, err := s.Fsck(ctx, "acme", "db"); err != nil || !r.Clean() {
		t.Fatalf("fsck: %v %q", err, r.Problems)
	}
}

// TestEntryCacheFollowsRewrites: chunks rewritten under changing chains
// (compression, encryption, plain, discard), with syncs in between so that
// freed extents come back at the same device offsets on a small pool,
// always read back what was last written, whole and in part: the entry
// cache never serves an entry the chunk map no longer holds, and partial
// reads of sectored chunks open the right sectors.
func TestEntryCacheFollowsRewrites(t *testing.T) {
	ctx := context.Background()
	env := testEnv(t)
	s, err := Open(ctx, "", device.NewMemory(8*MiB), Options{InMemoryMeta: true, SyncInterval: time.Hour, Filters: env})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 1 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	chains := []Filters{{}, {Chain: chainOf(t, env, "compression")}, {Chain: chainOf(t, env, "encryption")},
		{Chain: chainOf(t, env, "compression", "encryption")}, {Chain: chainOf(t, env, "noop")}}
	want := make([]byte, 1*MiB)
	r := mrand.New(mrand.NewPCG(3, 4))
	for i := range 600 {
		off := int64(r.IntN(16)) * 64 << 10
		switch r.IntN(8) {
		case 0:
			if err := v.Discard(ctx, 0, off, 64<<10); err != nil {
				t.Fatal(err)
			}
			clear(want[off : off+64<<10])
		case 1:
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		default:
			p := text(uint64(i), 64<<10)
			if r.IntN(2) == 0 { // a partial write: read-modify-write of the chunk
				p = p[:4096]
			}
			mustWrite(t, v, 0, off, p, chains[r.IntN(len(chains))])
			copy(want[off:], p)
		}
		got := make([]byte, 64<<10)
		if err := v.ReadAt(ctx, 0, got, off); err != nil {
			t.Fatalf("step %d: read: %v", i, err)
		}
		if !bytes.Equal(got, want[off:off+64<<10]) {
			t.Fatalf("step %d: chunk at %d reads stale data", i, off)
		}
		// A part of the chunk (sectored chains read only its sectors).
		a := off + int64(r.IntN(64<<10))
		b := min(off+64<<10, a+1+int64(r.IntN(3*4096)))
		part := make([]byte, b-a)
		if err := v.ReadAt(ctx, 0, part, a); err != nil || !bytes.Equal(part, want[a:b]) {
			t.Fatalf("step %d: bytes %d..%d: %v", i, a, b, err)
		}
		// Whole sectors (opened straight into the caller's buffer), into a
		// buffer with spare capacity that must stay untouched.
		a = off + int64(r.IntN(16))*4096
		b = min(off+64<<10, a+int64(1+r.IntN(4))*4096)
		spare := bytes.Repeat([]byte{0xee}, int(b-a)+4096)
		part = spare[:b-a]
		if err := v.ReadAt(ctx, 0, part, a); err != nil || !bytes.Equal(part, want[a:b]) {
			t.Fatalf("step %d: sectors %d..%d: %v", i, a, b, err)
		}
		if !bytes.Equal(spare[b-a:], bytes.Repeat([]byte{0xee}, 4096)) {
			t.Fatalf("step %d: a read of sectors %d..%d wrote past its buffer", i, a, b)
		}
	}
	mustRead(t, v, 0, 0, want)
}
