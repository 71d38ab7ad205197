package store

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/filter"
)

// TestPendingCrash: copy-on-write rewrites of chunks whose bytes a flush
// promised, under every transforming chain (and a plain chain rewriting
// transformed chunks), with the power lost at each point between their
// steps. (A rewrite into a chunk written in place later, plain or noop,
// is written through instead: TestShortGrowthDurable.) Each case takes crash images of the pool file and the metadata
// directory (badger's log included, copied while the store runs):
//
//   - "entries, not data": the metadata after the rewrites with the pool
//     as the last flush left it, as when the kernel wrote badger's log
//     back but not the new extents: every chunk reads its flushed bytes
//     (pending records fall back), never EIO;
//   - "entries and data": both after the rewrites: the new bytes;
//   - "flushed": both after a Flush that followed: the new bytes.
//
// Each image opens, reads back, and passes fsck and scrub.
func TestPendingCrash(t *testing.T) {
	env := testEnv(t)
	for _, c := range rewriteChains {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			src := t.TempDir()
			s, dev := openQuiet(t, src, env)
			v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "v", Size: 4 * MiB})
			if err != nil {
				t.Fatal(err)
			}
			first := Filters{Chain: chainOf(t, env, splitSpecs(c.first)...)}
			var then Filters
			if c.then != "" {
				then.Chain = chainOf(t, env, splitSpecs(c.then)...)
			}
			old := text(1, 4*64<<10)
			mustWrite(t, v, 0, 0, old, first)
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			flushedPool := image(t, src, "pool")
			// Unflushed rewrites: part of chunks 0 and 2, chunk 1 twice
			// (its second rewrite replaces a pending one), and chunk 3
			// whole.
			want := bytes.Clone(old)
			for _, w := range []struct{ off, n int }{{5000, 4096}, {70000, 9000}, {66000, 100}, {140000, 4096}, {3 * 65536, 65536}} {
				p := text(uint64(w.off), w.n)
				copy(want[w.off:], p)
				mustWrite(t, v, 0, int64(w.off), p, then)
			}
			mustRead(t, v, 0, 0, want)
			wantPatches := 8
			if !c.patches {
				wantPatches = 1 // chunks 0, 1, 2 rewritten under then; 66000 patches chunk 1
			}
			if r, err := s.Fsck(ctx, "acme", "v"); err != nil || len(r.Problems) > 0 || r.Pending != 4 || r.Patches != wantPatches {
				t.Fatalf("fsck before the flush: %v %q, %d pending records (want 4), %d patches (want %d)", err, r.Problems, r.Pending, r.Patches, wantPatches)
			}
			entries := image(t, src, "meta")
			pool := image(t, src, "pool")
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			flushed := image(t, src, "meta", "pool")
			if r, err := s.Fsck(ctx, "acme", "v"); err != nil || len(r.Problems) > 0 || r.Pending != 0 {
				t.Fatalf("fsck after the flush: %v %q, %d pending records, want 0", err, r.Problems, r.Pending)
			}
			closeStore(t, s, dev)

			check := func(name string, metaDir, poolDir string, want []byte) {
				dir := t.TempDir()
				if out, err := exec.Command("cp", "-a", filepath.Join(metaDir, "meta"), filepath.Join(poolDir, "pool"), dir).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v %s", name, err, out)
				}
				s, dev := openQuiet(t, dir, env)
				defer closeStore(t, s, dev)
				v, err := s.Volume("acme", "v")
				if err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(want))
				if err := v.ReadAt(ctx, 0, got, 0); err != nil {
					t.Fatalf("%s: read: %v", name, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: the volume does not read the bytes expected", name)
				}
				if r, err := s.Fsck(ctx, "acme", "v"); err != nil || len(r.Problems) > 0 {
					t.Fatalf("%s: fsck: %v %q", name, err, r.Problems)
				}
				if r, err := v.Scrub(ctx); err != nil || len(r.Bad) > 0 {
					t.Fatalf("%s: scrub: %v %+v", name, err, r.Bad)
				}
			}
			check("entries, not data", entries, flushedPool, old)
			check("entries and data", entries, pool, want)
			check("flushed", flushed, flushed, want)
		})
	}
}

// TestPendingFallbackKept: a metadata sync (the background one) that
// releases the extent a pending record falls back to flushes the device
// first, so that the replacement is durable before the fallback can be
// reused (reused earlier, a crash could fall back to other bytes).
func TestPendingFallbackKept(t *testing.T) {
	ctx := context.Background()
	env := testEnv(t)
	s, dev := openQuiet(t, t.TempDir(), env)
	defer closeStore(t, s, dev)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "v", Size: 1 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	crc := Filters{Chain: chainOf(t, env, "checksum")}
	mustWrite(t, v, 0, 0, text(1, 64<<10), crc)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, v, 0, 0, text(2, 64<<10), crc) // a whole chunk: copy-on-write (a small write would be a patch)
	flushes := s.flushes.Load()
	if err := s.syncMeta(); err != nil {
		t.Fatal(err)
	}
	if s.flushes.Load() == flushes {
		t.Fatal("a metadata sync released a pending record's fallback without a device flush first")
	}
	if n := s.alloc.pendingFrees(); n != 0 {
		t.Fatalf("%d frees still queued after the sync", n)
	}
}

// rewriteChains are the chains the rewrite tests run: a chunk written
// under first, then rewritten in part under then, which patches it
// (patch.go) unless one of the two encrypts and the other does not: then
// the first small write rewrites the chunk under then, and the next ones
// patch it.
var rewriteChains = []struct {
	name, first, then string
	patches           bool
}{
	{"checksum", "checksum", "checksum", true},
	{"encryption", "encryption", "encryption", true},
	{"lz4", "compression:algo=lz4", "compression:algo=lz4", true},
	{"zstd", "compression", "compression", true},
	{"lz4 then encryption", "compression:algo=lz4", "encryption", false},
	{"encryption then checksum", "encryption", "checksum", false},
	{"encryption and checksum", "encryption,checksum", "encryption,checksum", true},
	{"lz4 then lz4 and checksum", "compression:algo=lz4", "compression:algo=lz4,checksum", true},
}

// openQuiet opens a store on a pool file in dir with no background sync
// (a crash image must not race one).
func openQuiet(t *testing.T, dir string, env *filter.Env) (*Store, *device.File) {
	t.Helper()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 64*MiB)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), filepath.Join(dir, "meta"), dev, Options{SyncInterval: time.Hour, Filters: env})
	if err != nil {
		t.Fatal(err)
	}
	return s, dev
}

// image copies the named entries of dir (meta, pool) as they are now into
// a new directory, and returns it.
func image(t *testing.T, dir string, names ...string) string {
	t.Helper()
	img := t.TempDir()
	for _, n := range names {
		if out, err := exec.Command("cp", "-a", "--sparse=always", filepath.Join(dir, n), img).CombinedOutput(); err != nil {
			t.Fatalf("crash image: %v %s", err, out)
		}
	}
	return img
}

// FuzzPendingRecord: decodePending never panics, and what it accepts
// encodes back to the same bytes (reserved bytes of the fallback entry
// aside).
func FuzzPendingRecord(f *testing.F) {
	f.Add(pendingRec{token: 3, devOff: dataStart, stored: 65536, crc: 7,
		prev: chunkEntry{storedLen: 65536, devOff: dataStart + 65536}}.encode())
	f.Add(pendingRec{token: 1, devOff: dataStart, stored: 300, crc: 1,
		prev: chunkEntry{flags: flagShort, storedLen: 8192, devOff: dataStart + 4096}}.encode())
	f.Add(pendingRec{token: 2, devOff: dataStart, stored: 900, crc: 5, hole: true}.encode())
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodePending(b)
		if err != nil {
			return
		}
		want := bytes.Clone(b)
		if !p.hole {
			if p.prev.flags&flagPatches == 0 {
				clear(want[pendingHeaderLen+2 : pendingHeaderLen+4])
			}
			clear(want[pendingHeaderLen+20 : pendingHeaderLen+24])
		}
		if out := p.encode(); !bytes.Equal(out, want) {
			t.Fatalf("record %x re-encodes as %x", b, out)
		}
	})
}
