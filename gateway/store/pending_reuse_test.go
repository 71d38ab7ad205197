package store

import (
	"bytes"
	"context"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/filter"
)

// openImage opens a crash image made of the metadata in metaDir and the
// pool in poolDir (both copied) and returns acme/v's first 64 KiB read
// back, or the read's error.
func openImage(t *testing.T, env *filter.Env, metaDir, poolDir string) error {
	t.Helper()
	_, err := readImage(t, env, metaDir, poolDir, 64<<10)
	return err
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

// TestPendingHole: a write under a transforming chain into a hole commits
// a pending record that falls back to the hole. Without it, a power loss
// that kept the commit (a background metadata sync, which flushes no
// device) but not the new extent's bytes left an entry naming an extent
// that never got them: EIO (or, with no crc in the chain, whatever bytes
// the extent held) where zeros were due. Found in review of the patches
// commit.
func TestPendingHole(t *testing.T) {
	env := testEnv(t)
	for _, spec := range [][]string{{"encryption"}, {"compression:algo=lz4"}, {"compression", "checksum"}} {
		t.Run(spec[0], func(t *testing.T) {
			src, s, dev, v, enc := flushedEncryptedChunk(t, env)
			chain := Filters{Chain: chainOf(t, env, spec...)}
			pool := image(t, src, "pool")
			mustWrite(t, v, 0, 64<<10, text(5, 64<<10), chain)     // a whole chunk into a hole
			mustWrite(t, v, 0, 2*64<<10+300, text(6, 5000), chain) // part of one
			mustWrite(t, v, 0, 0, text(7, 4096), enc)              // and a patch of the flushed one
			if err := s.syncMeta(); err != nil {                   // the background sync
				t.Fatal(err)
			}
			meta := image(t, src, "meta")
			written := image(t, src, "pool")
			closeStore(t, s, dev)
			// Power lost before the new bytes reached the pool: holes again.
			got, err := readImage(t, env, meta, pool, 3*64<<10)
			if err != nil {
				t.Fatalf("read after the power loss: %v", err)
			}
			if want := text(1, 64<<10); !bytes.Equal(got[:64<<10], want) {
				t.Error("the flushed chunk changed")
			}
			if !bytes.Equal(got[64<<10:], make([]byte, 2*64<<10)) {
				t.Error("the chunks written into holes do not read as zeros")
			}
			// Power lost after they did: every write stands.
			if got, err = readImage(t, env, meta, written, 3*64<<10); err != nil {
				t.Fatalf("read after the power loss: %v", err)
			}
			want := append(text(1, 64<<10), text(5, 64<<10)...)
			want = append(want, make([]byte, 64<<10)...)
			copy(want, text(7, 4096))
			copy(want[2*64<<10+300:], text(6, 5000))
			if !bytes.Equal(got, want) {
				t.Error("writes whose bytes reached the pool were lost")
			}
		})
	}
}

// readImage opens a crash image made of the metadata in metaDir and the
// pool in poolDir (both copied), checks it with fsck and returns the first
// n bytes of acme/v, or the read's error.
func readImage(t *testing.T, env *filter.Env, metaDir, poolDir string, n int) ([]byte, error) {
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
	b := make([]byte, n)
	return b, v.ReadAt(context.Background(), 0, b, 0)
}

// TestPendingDropStale: the sync loop deletes pending records once their
// device flush has completed, not only the next open.
func TestPendingDropStale(t *testing.T) {
	env := testEnv(t)
	_, s, dev, v, enc := flushedEncryptedChunk(t, env)
	defer closeStore(t, s, dev)
	mustWrite(t, v, 0, 0, text(2, 64<<10), enc)        // a rewrite
	mustWrite(t, v, 0, 64<<10, text(3, 3*64<<10), enc) // three holes
	s.dropStale()
	if n := countPending(t, s); n != 4 {
		t.Fatalf("%d pending records before the flush, want 4", n)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, v, 0, 4*64<<10, text(4, 64<<10), enc) // after the flush: live
	s.dropStale()
	if n, live := countPending(t, s), s.records.len(); n != 1 || live != 1 {
		t.Fatalf("%d pending records after the flush (%d in memory), want the one written since", n, live)
	}
	mustRead(t, v, 0, 0, append(text(2, 64<<10), append(text(3, 3*64<<10), text(4, 64<<10)...)...))
}

// countPending counts the pending records in s's metadata.
func countPending(t *testing.T, s *Store) int {
	t.Helper()
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixPending}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPendingDropStaleRace: writes that take over pending records run
// beside flushes and deletions of stale records; a commit that read a
// record a deletion removed commits again (badger's conflict), so no
// write fails and every byte reads back.
func TestPendingDropStaleRace(t *testing.T) {
	env := testEnv(t)
	_, s, dev, v, enc := flushedEncryptedChunk(t, env)
	defer closeStore(t, s, dev)
	const size = 8 * 64 << 10
	want := make([]byte, size)
	copy(want, text(1, 64<<10))
	stop := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(errs)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.Flush(context.Background()); err != nil {
				errs <- err
				return
			}
			s.dropStale()
		}
	}()
	r := mrand.New(mrand.NewPCG(9, 9))
	for i := 0; i < 400; i++ {
		off, n := r.Int64N(size-9000), 1+r.IntN(9000)
		b := text(uint64(i+10), n)
		mustWrite(t, v, 0, off, b, enc)
		copy(want[off:], b)
	}
	close(stop)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	mustRead(t, v, 0, 0, want)
	if r, err := s.Fsck(context.Background(), "acme", "v"); err != nil || !r.Clean() {
		t.Fatalf("fsck: %v %q", err, r.Problems)
	}
}
