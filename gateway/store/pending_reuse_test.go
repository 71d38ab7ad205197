package store

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/filter"
)

// openImage opens a crash image made of the metadata in metaDir and the
// pool in poolDir (both copied) and returns acme/v's first 64 KiB read
// back, or the read's error.
func openImage(t *testing.T, env *filter.Env, metaDir, poolDir string) error {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-a", filepath.Join(metaDir, "meta"), filepath.Join(poolDir, "pool"), dir).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	s, dev := openQuiet(t, dir, env)
	defer closeStore(t, s, dev)
	v, err := s.Volume("acme", "v")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Fsck(context.Background(), "acme", "v"); err != nil || !r.Clean() {
		t.Errorf("fsck of the crash image: %v %q", err, r.Problems)
	}
	return v.ReadAt(context.Background(), 0, make([]byte, 64<<10), 0)
}

// TestPendingUnmapRecreate: a patch write leaves a pending record whose
// extent is the chunk's base, shared with its fallback; the chunk is then
// unmapped, a sync runs, and the chunk is written again into the hole.
// Had the unmap freed the base without waiting for a device flush, the
// new chunk could take the same extent and the next patch write take over
// the stale record's fallback: after a power loss that loses the patch,
// open went back to an entry whose extent held other bytes (EIO). Found
// in review of the patches commit.
func TestPendingUnmapRecreate(t *testing.T) {
	env := testEnv(t)
	ctx := context.Background()
	src, s, dev, v, enc := flushedEncryptedChunk(t, env)
	mustWrite(t, v, 0, 4096, text(2, 4096), enc) // a patch: a record falling back to the flushed entry
	if err := v.Discard(ctx, 0, 0, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := s.syncMeta(); err != nil { // the background sync
		t.Fatal(err)
	}
	mustWrite(t, v, 0, 0, text(3, 64<<10), enc) // into the hole
	pool := image(t, src, "pool")
	mustWrite(t, v, 0, 8192, text(4, 4096), enc) // a patch
	meta := image(t, src, "meta")
	closeStore(t, s, dev)
	// Power lost: the last patch's unit never reached the pool.
	if err := openImage(t, env, meta, pool); err != nil {
		t.Fatalf("read after the power loss: %v", err)
	}
}

// TestPendingFlushRace: a rewrite of a chunk commits while the device
// flush its pending record waits for is running (a background sync took
// the freed fallback and flushes). Taking over the record's fallback then
// was wrong: the sync releases it once its flush completes, another chunk
// takes it, and after a power loss that loses the second rewrite open
// went back to it (EIO). The commit now flushes the device itself first
// (errFlushRace). Found in review of the patches commit.
func TestPendingFlushRace(t *testing.T) {
	env := testEnv(t)
	src, s, dev, v, enc := flushedEncryptedChunk(t, env)
	mustWrite(t, v, 0, 0, text(2, 64<<10), enc) // rewrite 1: its record falls back to the flushed entry
	// A background sync starts: it takes the frees and starts its flush.
	freed := s.alloc.takeDeferred()
	tok := s.flushStarted.Add(1)
	s.flushes.Add(1)
	flushes := s.flushes.Load()
	mustWrite(t, v, 0, 0, text(3, 64<<10), enc) // rewrite 2, while the flush runs
	if s.flushes.Load() == flushes {
		t.Fatal("a rewrite that met a running flush of its record did not flush the device first")
	}
	// That flush came after rewrite 2's data: what a power loss can
	// leave from here on holds it.
	poolAtFlush := image(t, src, "pool")
	// The sync's flush completes; it records the token and releases.
	if err := s.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	for done := s.flushDone.Load(); done < tok && !s.flushDone.CompareAndSwap(done, tok); done = s.flushDone.Load() {
	}
	seq, err := s.commitSyncSeq()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.writeSyncMark(seq); err != nil {
		t.Fatal(err)
	}
	s.releaseFreed(freed)
	mustWrite(t, v, 0, 64<<10, text(4, 64<<10), enc) // chunk 1 may take the released extent
	y, err := v.obj0.entry(1)
	if err != nil {
		t.Fatal(err)
	}
	meta := image(t, src, "meta")
	pool := image(t, src, "pool")
	closeStore(t, s, dev)
	// Power lost: the pool as the last flush left it, plus chunk 1's
	// bytes, which may sit where rewrite 1's fallback was. Before the fix
	// rewrite 2's record fell back to that released extent, and its bytes
	// were not flushed.
	cur, err := os.ReadFile(filepath.Join(pool, "pool"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(poolAtFlush, "pool"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(cur[y.devOff:y.devOff+y.extentLen()], y.devOff); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := openImage(t, env, meta, poolAtFlush); err != nil {
		t.Fatalf("read after the power loss: %v", err)
	}
}

// TestPatchesFollowEncryption: a small write under a chain that encrypts
// into a chunk that is not encrypted (or the other way round) rewrites
// the chunk under the writing chain instead of patching it, so a later
// fold under the base's chain (a partial discard) never stores sealed
// bytes in the clear, and a new encryption policy reaches the whole
// chunk at its first write. Found in review of the patches commit.
func TestPatchesFollowEncryption(t *testing.T) {
	env := testEnv(t)
	ctx := context.Background()
	s, v := smallVolume(t, env)
	_ = s
	lz4 := Filters{Chain: chainOf(t, env, "compression:algo=lz4")}
	enc := Filters{Chain: chainOf(t, env, "encryption")}
	mustWrite(t, v, 0, 0, text(1, 64<<10), lz4)
	mustWrite(t, v, 0, 8192, text(2, 4096), enc)
	e, err := v.obj0.entry(0)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := filter.ParseRecord(e.record); !r.Has("encryption") || len(e.patches) != 0 {
		t.Fatalf("after an encrypted write into an lz4 chunk: record %s, %d patches; want the chunk encrypted whole", r, len(e.patches))
	}
	if err := v.Discard(ctx, 0, 40960, 4096); err != nil {
		t.Fatal(err)
	}
	e, _ = v.obj0.entry(0)
	if r, _ := filter.ParseRecord(e.record); !r.Has("encryption") {
		t.Fatalf("after a partial discard: record %s, want it encrypted", r)
	}
	// The other way round: an lz4 write into the encrypted chunk.
	mustWrite(t, v, 0, 4096, text(3, 4096), lz4)
	e, _ = v.obj0.entry(0)
	if r, _ := filter.ParseRecord(e.record); r.Has("encryption") || len(e.patches) != 0 {
		t.Fatalf("after an lz4 write into an encrypted chunk: record %s, %d patches", r, len(e.patches))
	}
}

// flushedEncryptedChunk opens a quiet store in a new directory src with a
// 4 MiB volume acme/v whose chunk 0 is written under enc (encryption) and
// flushed. The caller closes the store.
func flushedEncryptedChunk(t *testing.T, env *filter.Env) (src string, s *Store, dev *device.File, v *Volume, enc Filters) {
	t.Helper()
	src = t.TempDir()
	s, dev = openQuiet(t, src, env)
	v, err := s.CreateVolume(context.Background(), CreateOptions{Tenant: "acme", Name: "v", Size: 4 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	enc = Filters{Chain: chainOf(t, env, "encryption")}
	mustWrite(t, v, 0, 0, text(1, 64<<10), enc)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return src, s, dev, v, enc
}
