package store

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"strings"
	"testing"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// patchCount is the number of patches chunk idx of v's block object has.
func patchCount(t *testing.T, v *Volume, idx int64) int {
	t.Helper()
	o := v.obj0
	if o.table.Load().get(idx)&markTransformed == 0 {
		return 0
	}
	e, err := o.entry(idx)
	if err != nil {
		t.Fatal(err)
	}
	return len(e.patches)
}

// TestPatchesSmallWrites: small writes into transformed chunks, under
// every chain that patches, land as patches (4 KiB of pool per new
// sector, not a rewrite of the chunk), read back at every alignment
// beside the base's sectors, fold into a new base past maxPatches, and
// survive a restart with fsck and scrub clean. Writes under a chain that
// differs from the base's (encryption over lz4) are sealed by the
// writer's chain.
func TestPatchesSmallWrites(t *testing.T) {
	env := testEnv(t)
	for _, c := range rewriteChains {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			s, dev := openQuiet(t, dir, env)
			v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "v", Size: 4 * MiB})
			if err != nil {
				t.Fatal(err)
			}
			base := Filters{Chain: chainOf(t, env, splitSpecs(c.first)...)}
			then := Filters{Chain: chainOf(t, env, splitSpecs(c.then)...)}
			const chunks = 8
			want := text(1, chunks*64<<10)
			mustWrite(t, v, 0, 0, want, base)
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			used := s.Stats().Used

			// One aligned 4 KiB write: one patch, one unit of pool (or a
			// rewrite of the chunk, when the chains disagree on
			// encryption).
			p := text(2, 4096)
			mustWrite(t, v, 0, 3*4096, p, then)
			copy(want[3*4096:], p)
			wantN, wantUsed := 1, int64(unitSize)
			if !c.patches {
				wantN, wantUsed = 0, -1
			}
			if n := patchCount(t, v, 0); n != wantN {
				t.Fatalf("a 4 KiB write left chunk 0 with %d patches, want %d", n, wantN)
			}
			if got := s.Stats().Used - used; wantUsed > 0 && got != wantUsed {
				t.Fatalf("a 4 KiB write into a transformed chunk took %d bytes of pool, want %d", got, wantUsed)
			}
			mustRead(t, v, 0, 0, want)

			// Random small writes: unaligned, across sectors and chunks,
			// some sectors again.
			r := mrand.New(mrand.NewPCG(3, 4))
			for i := range 200 {
				off := r.IntN(len(want) - 9000)
				n := 1 + r.IntN(9000)
				if i%3 == 0 {
					off, n = off&^4095, 4096
				}
				p := text(uint64(10+i), n)
				mustWrite(t, v, 0, int64(off), p, then)
				copy(want[off:], p)
				if i%20 == 0 {
					readRandom(t, v, want, r)
				}
			}
			mustRead(t, v, 0, 0, want)
			readRandom(t, v, want, r)
			total := 0
			for idx := range int64(chunks) {
				n := patchCount(t, v, idx)
				if n > maxPatches(64<<10) {
					t.Fatalf("chunk %d has %d patches, at most %d", idx, n, maxPatches(64<<10))
				}
				total += n
			}
			if total == 0 {
				t.Fatal("no chunk has patches after 200 small writes")
			}
			rep, err := s.Fsck(ctx, "acme", "v")
			if err != nil || !rep.Clean() || rep.Patches != total {
				t.Fatalf("fsck: %v %q, %d patches (want %d)", err, rep.Problems, rep.Patches, total)
			}
			if sr, err := v.Scrub(ctx); err != nil || len(sr.Bad) > 0 {
				t.Fatalf("scrub: %v %+v", err, sr.Bad)
			}
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			used, alloc := s.Stats().Used, v.AllocatedBytes()
			if used != alloc {
				t.Fatalf("pool uses %d bytes, the volume holds %d", used, alloc)
			}
			closeStore(t, s, dev)

			s, dev = openQuiet(t, dir, env)
			defer closeStore(t, s, dev)
			if v, err = s.Volume("acme", "v"); err != nil {
				t.Fatal(err)
			}
			mustRead(t, v, 0, 0, want)
			if got := s.Stats().Used; got != used {
				t.Fatalf("pool uses %d bytes after the restart, %d before", got, used)
			}
			if got := v.AllocatedBytes(); got != alloc {
				t.Fatalf("volume holds %d bytes after the restart, %d before", got, alloc)
			}
			if rep, err := s.Fsck(ctx, "acme", "v"); err != nil || !rep.Clean() || rep.Patches != total {
				t.Fatalf("fsck after the restart: %v %q, %d patches (want %d)", err, rep.Problems, rep.Patches, total)
			}
			// A whole-chunk write folds; a discard of a patched chunk
			// frees its patches with it.
			full := text(99, 64<<10)
			mustWrite(t, v, 0, 64<<10, full, then)
			copy(want[64<<10:], full)
			if n := patchCount(t, v, 1); n != 0 {
				t.Fatalf("a whole-chunk write left %d patches", n)
			}
			for idx := int64(0); idx < chunks; idx++ {
				if patchCount(t, v, idx) > 0 {
					if err := v.Discard(ctx, 0, idx*64<<10, 64<<10); err != nil {
						t.Fatal(err)
					}
					clear(want[idx*64<<10 : (idx+1)*64<<10])
				}
			}
			mustRead(t, v, 0, 0, want)
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if used, alloc := s.Stats().Used, v.AllocatedBytes(); used != alloc {
				t.Fatalf("after discards the pool uses %d bytes, the volume holds %d", used, alloc)
			}
			if rep, err := s.Fsck(ctx, "acme", "v"); err != nil || !rep.Clean() || rep.Patches != 0 {
				t.Fatalf("fsck after discards: %v %q, %d patches", err, rep.Problems, rep.Patches)
			}
		})
	}
}

// splitSpecs splits "a,b" into filter specs.
func splitSpecs(s string) []string { return strings.Split(s, ",") }

// readRandom reads random ranges of v and compares them with want.
func readRandom(t *testing.T, v *Volume, want []byte, r *mrand.Rand) {
	t.Helper()
	for range 50 {
		off := r.IntN(len(want) - 1)
		n := 1 + r.IntN(min(len(want)-off, 3*4096))
		if r.IntN(2) == 0 {
			off &^= 4095
			n = 4096
		}
		mustRead(t, v, 0, int64(off), want[off:off+n])
	}
}

// TestPatchFolds: writes that would take a chunk past maxPatches rewrite
// it whole, freeing the patches' units with the old base.
func TestPatchFolds(t *testing.T) {
	ctx := context.Background()
	env := testEnv(t)
	s, v := smallVolume(t, env)
	crc := Filters{Chain: chainOf(t, env, "checksum")}
	want := text(1, 64<<10)
	mustWrite(t, v, 0, 0, want, crc)
	for i := range maxPatches(64 << 10) {
		p := text(uint64(i+2), 4096)
		mustWrite(t, v, 0, int64(i)*2*4096, p, crc)
		copy(want[i*2*4096:], p)
	}
	if n := patchCount(t, v, 0); n != maxPatches(64<<10) {
		t.Fatalf("%d patches, want %d", n, maxPatches(64<<10))
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	full := s.Stats().Used
	if full != 64<<10+int64(maxPatches(64<<10))*unitSize {
		t.Fatalf("pool uses %d bytes for a chunk and %d patches", full, maxPatches(64<<10))
	}
	p := text(50, 4096)
	mustWrite(t, v, 0, 4096, p, crc) // a sector not patched yet: folds
	copy(want[4096:], p)
	if n := patchCount(t, v, 0); n != 0 {
		t.Fatalf("%d patches after the fold", n)
	}
	mustRead(t, v, 0, 0, want)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if used := s.Stats().Used; used != 64<<10 {
		t.Fatalf("pool uses %d bytes after the fold, want one chunk (%d)", used, 64<<10)
	}
}

// TestPatchCorruption: a patch whose unit no longer matches its crc32c,
// or a sealed one tampered with, reads as EIO at its sector only, and
// scrub reports the chunk.
func TestPatchCorruption(t *testing.T) {
	for _, chain := range []string{"checksum", "encryption"} {
		t.Run(chain, func(t *testing.T) {
			ctx := context.Background()
			env := testEnv(t)
			s, v := smallVolume(t, env)
			dev := s.dev
			f := Filters{Chain: chainOf(t, env, chain)}
			want := text(1, 64<<10)
			mustWrite(t, v, 0, 0, want, f)
			p := text(2, 4096)
			mustWrite(t, v, 0, 5*4096, p, f)
			copy(want[5*4096:], p)
			e, err := v.obj0.entry(0)
			if err != nil || len(e.patches) != 1 {
				t.Fatalf("entry: %v, %d patches", err, len(e.patches))
			}
			if _, err := dev.WriteAt([]byte{0xff}, e.patches[0].devOff+100); err != nil {
				t.Fatal(err)
			}
			v.SetCache(nil)
			got := make([]byte, 4096)
			if err := v.ReadAt(ctx, 0, got, 5*4096); !errors.Is(err, ErrIO) {
				t.Fatalf("read of the corrupt patch: %v, want EIO", err)
			}
			if err := v.ReadAt(ctx, 0, make([]byte, 64<<10), 0); !errors.Is(err, ErrIO) {
				t.Fatalf("read of the whole chunk: %v, want EIO", err)
			}
			mustRead(t, v, 0, 6*4096, want[6*4096:7*4096])
			sr, err := v.Scrub(ctx)
			if err != nil || len(sr.Bad) != 1 || !strings.Contains(sr.Bad[0].Error, "patch") {
				t.Fatalf("scrub: %v %+v", err, sr.Bad)
			}
		})
	}
}

// TestChainPatches: transforming chains of built-ins patch; noop alone
// (overwritten in place) and plain chains do not.
func TestChainPatches(t *testing.T) {
	env := testEnv(t)
	for _, c := range []struct {
		specs []string
		want  bool
	}{
		{[]string{"checksum"}, true},
		{[]string{"compression", "encryption"}, true},
		{[]string{"noop"}, false},
	} {
		if got := chainOf(t, env, c.specs...).Patches(); got != c.want {
			t.Errorf("%v: Patches() = %v, want %v", c.specs, got, c.want)
		}
	}
	var plain *filter.Chain
	if plain.Patches() {
		t.Error("a plain chain patches")
	}
}

// smallVolume opens a quiet store (closed at the test's end) with a 1 MiB
// block volume acme/v.
func smallVolume(t *testing.T, env *filter.Env) (*Store, *Volume) {
	t.Helper()
	s, dev := openQuiet(t, t.TempDir(), env)
	t.Cleanup(func() { closeStore(t, s, dev) })
	v, err := s.CreateVolume(context.Background(), CreateOptions{Tenant: "acme", Name: "v", Size: 1 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}
