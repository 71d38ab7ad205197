package store

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/device"
)

// corruptStore builds a store with one block volume of 4 KiB chunks,
// every chunk written with a known pattern, and closes it: the chunk
// maps end up in badger's SST files.
func corruptStore(t *testing.T, dir string) (size int64) {
	t.Helper()
	ctx := context.Background()
	s, dev := openFile(t, dir)
	const volSize = 24 * MiB
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: volSize, ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < volSize; off += MiB {
		if err := v.WriteAt(ctx, 0, pattern(uint64(off), MiB), off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s, dev)
	return volSize
}

// damage writes 16 random bytes into the middle half of file.
func damage(t *testing.T, file string, seed uint64) {
	t.Helper()
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, seed))
	var off int64
	if fi.Size() >= 64 {
		off = fi.Size()/4 + r.Int64N(fi.Size()/2)
	} else if fi.Size() > 16 {
		off = r.Int64N(fi.Size() - 16)
	}
	damageAt(t, file, seed, off)
}

// damageAt writes 16 random bytes at off in file.
func damageAt(t *testing.T, file string, seed uint64, off int64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed+1))
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 16)
	for i := range junk {
		junk[i] = byte(r.Uint32())
	}
	if _, err := f.WriteAt(junk, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// crashCopy is corruptStore's state as a crash leaves it: the metadata
// directory copied while the store is open, after a Flush, so the last
// changes live in badger's write-ahead log (.mem) and not in tables.
func crashCopy(t *testing.T, dir string) (size int64) {
	t.Helper()
	ctx := context.Background()
	src := t.TempDir()
	s, dev := openFile(t, src)
	const volSize = 8 * MiB
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: volSize, ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < volSize; off += MiB {
		if err := v.WriteAt(ctx, 0, pattern(uint64(off), MiB), off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(src, "meta"), filepath.Join(src, "pool"), dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	closeStore(t, s, dev)
	return volSize
}

// TestCorruptMetadataRefused seeds 16 random bytes into each kind of
// badger file (or cuts a table to half) and opens the store again. It
// must refuse to open, or open with every chunk reading back exactly:
// never serve a volume whose chunk maps silently shrank (issue 17: one
// damaged SST block turned 350 MiB of a volume into zeros). A damaged
// table is always refused.
func TestCorruptMetadataRefused(t *testing.T) {
	cases := []struct {
		name, suffix string
		crash        bool // the WAL of a crashed store, not a closed one
		truncate     bool
		mustRefuse   bool
	}{
		{"table block", ".sst", false, false, true},
		{"table cut short", ".sst", false, true, true},
		{"value log", ".vlog", false, false, false},
		{"manifest", "MANIFEST", false, false, false},
		{"key registry", "KEYREGISTRY", false, false, false},
		{"discard stats", "DISCARD", false, false, false},
		{"write-ahead log", ".mem", true, false, false},
	}
	for _, c := range cases {
		for seed := uint64(1); seed <= 3; seed++ {
			t.Run(fmt.Sprintf("%s/%d", c.name, seed), func(t *testing.T) {
				dir := t.TempDir()
				var size int64
				if c.crash {
					size = crashCopy(t, dir)
				} else {
					size = corruptStore(t, dir)
				}
				files, _ := filepath.Glob(filepath.Join(dir, "meta", "*"+c.suffix))
				if len(files) == 0 {
					t.Fatalf("no %s file in %s", c.suffix, dir)
				}
				victim := files[int(seed)%len(files)]
				if c.truncate {
					fi, err := os.Stat(victim)
					if err != nil {
						t.Fatal(err)
					}
					if err := os.Truncate(victim, fi.Size()/2); err != nil {
						t.Fatal(err)
					}
				} else if c.crash {
					damageAt(t, victim, seed, 1000+int64(seed)*20000) // among the log's entries
				} else {
					damage(t, victim, seed)
				}
				checkOpenAfterDamage(t, dir, size, c.mustRefuse)
			})
		}
	}
}

// checkOpenAfterDamage opens the store in dir: a refusal is fine (and
// required if mustRefuse); an open store must read every byte written.
func checkOpenAfterDamage(t *testing.T, dir string, size int64, mustRefuse bool) {
	t.Helper()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	s, err := Open(context.Background(), filepath.Join(dir, "meta"), dev, Options{SyncInterval: time.Hour})
	if err != nil {
		t.Logf("refused: %v", err)
		return
	}
	defer s.Close()
	if mustRefuse {
		t.Fatal("the store opened on a damaged table")
	}
	v, err := s.Volume("t", "v")
	if err != nil {
		t.Fatalf("the volume is gone and the store opened: %v", err)
	}
	got := make([]byte, MiB)
	for off := int64(0); off < size; off += MiB {
		if err := v.ReadAt(context.Background(), 0, got, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		if !bytes.Equal(got, pattern(uint64(off), MiB)) {
			t.Fatalf("wrong bytes served at %d", off)
		}
	}
	if r, err := s.Fsck(context.Background(), "t", "v"); err != nil || !r.Clean() {
		t.Fatalf("fsck: %v %v", r.Problems, err)
	}
}

// TestFsckFindsLostChunkMaps: chunk map entries deleted behind the
// store's back (as a damaged table would lose them) are found by fsck,
// which compares the maps with the count and the allocator the store
// keeps since it opened (issue 17: fsck exited 0 after 350 MiB of maps
// were gone).
func TestFsckFindsLostChunkMaps(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	v, err := s.CreateVolume(ctx, CreateOptions{Tenant: "t", Name: "v", Size: 16 * MiB})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, 0, pattern(1, 8*MiB), 0, false); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Fsck(ctx, "t", "v"); err != nil || !r.Clean() {
		t.Fatalf("fsck before the damage: %v %v", r.Problems, err)
	}
	err = s.db.Update(func(txn *badger.Txn) error {
		for idx := uint64(10); idx < 20; idx++ {
			if err := txn.Delete(chunkKey(v.id, 0, idx)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Fsck(ctx, "t", "v")
	if err != nil {
		t.Fatal(err)
	}
	if r.Clean() || !strings.Contains(strings.Join(r.Problems, "\n"), "chunk maps hold 118 chunks but the store counted 128") {
		t.Fatalf("fsck after 10 map entries vanished: %q", r.Problems)
	}
}

// TestUnlistedTableIgnored: a crash during a flush or compaction leaves
// a new SST (possibly empty) that the MANIFEST does not list; it is not
// damage, and the store opens (badger deletes it).
func TestUnlistedTableIgnored(t *testing.T) {
	dir := t.TempDir()
	size := corruptStore(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "meta", "000999.sst"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	s, err := Open(context.Background(), filepath.Join(dir, "meta"), dev, Options{SyncInterval: time.Hour})
	if err != nil {
		t.Fatalf("an empty unlisted table stopped the store: %v", err)
	}
	defer s.Close()
	v, err := s.Volume("t", "v")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, MiB)
	if err := v.ReadAt(context.Background(), 0, got, size-MiB); err != nil || !bytes.Equal(got, pattern(uint64(size-MiB), MiB)) {
		t.Fatalf("data after the open: %v", err)
	}
}
