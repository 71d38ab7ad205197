package fsns

import (
	"bytes"
	"context"
	mrand "math/rand/v2"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/gateway/filter/filtertest"
	"github.com/sluice-storage/sluice/gateway/store"
)

// The helpers of the store's copy-on-write tests, for files.

func testEnv(t testing.TB) *filter.Env { return filtertest.Env(t) }

func chainOf(t testing.TB, env *filter.Env, specs ...string) *filter.Chain {
	return filtertest.Chain(t, env, specs...)
}

func openWithEnv(t *testing.T, dir string, env *filter.Env) (*store.Store, *device.File) {
	t.Helper()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 256*MiB)
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(context.Background(), filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: 20 * time.Millisecond, Filters: env, Namespaces: Maker{}})
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

func mustRead(t *testing.T, v *store.Volume, ino uint64, off int64, want []byte) {
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

func mustWrite(t *testing.T, v *store.Volume, ino uint64, off int64, p []byte, f store.Filters) {
	t.Helper()
	if err := v.WriteAtWith(context.Background(), ino, p, off, false, f); err != nil {
		t.Fatalf("write %d bytes at %d: %v", len(p), off, err)
	}
}

func closeStore(t *testing.T, s *store.Store, dev device.Device) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestFileChunksTransformed: fs files go through the same paths: a chain
// write, truncate into a compressed chunk, restart.
func TestFileChunksTransformed(t *testing.T) {
	ctx := context.Background()
	dir, env, s, dev, v, f, a := openedFile(t, "doc.txt")
	data := text(5, 1*MiB+777)
	mustWrite(t, v, a.Ino, 0, data, store.Filters{Chain: chainOf(t, env, "compression", "encryption")})
	mustRead(t, v, a.Ino, 0, data)
	size := int64(700000)
	if _, err := f.SetAttr(ctx, a.Ino, SetAttr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	mustRead(t, v, a.Ino, 0, data[:size])
	mustRead(t, v, a.Ino, size, make([]byte, 64<<10))
	if err := f.Release(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s, dev)
	s, dev = openWithEnv(t, dir, env)
	defer closeStore(t, s, dev)
	v, _ = s.Volume("t", "home")
	f = Of(v)
	if _, err := f.Open(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	defer f.Release(ctx, a.Ino)
	mustRead(t, v, a.Ino, 0, data[:size])
	if rep, err := v.Scrub(ctx); err != nil || !rep.Clean() || rep.Transformed != 11 {
		t.Fatalf("scrub: %+v %v", rep, err)
	}
	mustFsck(t, s, "home")
}

// TestFilePatches: small writes into a file's encrypted and compressed
// chunks become patches (store/patch.go); a truncate inside a patched
// chunk, a restart and the unlink of the file leave fsck clean and give
// every unit back.
func TestFilePatches(t *testing.T) {
	ctx := context.Background()
	dir, env, s, dev, v, f, a := openedFile(t, "db")
	chain := store.Filters{Chain: chainOf(t, env, "compression", "encryption")}
	data := text(5, 512<<10)
	mustWrite(t, v, a.Ino, 0, data, chain)
	for i := range 40 {
		off := (i * 12289) % (len(data) - 8192)
		p := text(uint64(100+i), 1+i*97%8192)
		mustWrite(t, v, a.Ino, int64(off), p, chain)
		copy(data[off:], p)
	}
	mustRead(t, v, a.Ino, 0, data)
	if r := mustFsck(t, s, "home"); r.Patches == 0 {
		t.Fatal("no patches after 40 small writes into transformed chunks")
	}
	size := int64(300000) // inside chunk 4
	if _, err := f.SetAttr(ctx, a.Ino, SetAttr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	data = data[:size]
	mustRead(t, v, a.Ino, 0, data)
	if err := f.Fsync(ctx, a.Ino, false); err != nil {
		t.Fatal(err)
	}
	if err := f.Release(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	mustFsck(t, s, "home")
	closeStore(t, s, dev)

	s, dev = openWithEnv(t, dir, env)
	defer closeStore(t, s, dev)
	v, _ = s.Volume("t", "home")
	f = Of(v)
	if _, err := f.Open(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	mustRead(t, v, a.Ino, 0, data)
	if rep, err := v.Scrub(ctx); err != nil || !rep.Clean() {
		t.Fatalf("scrub: %+v %v", rep, err)
	}
	if err := f.Release(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	if err := f.Unlink(ctx, RootIno, "db"); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if r := mustFsck(t, s, "home"); r.Chunks != 0 || r.Patches != 0 {
		t.Fatalf("after the unlink: %d chunks, %d patches", r.Chunks, r.Patches)
	}
	if used := s.Stats().Used; used != 0 {
		t.Fatalf("pool still uses %d bytes after the unlink", used)
	}
}

// openedFile opens a store with filters in a new directory, a 64 MiB fs
// volume "home" on it, and creates and opens file name in its root.
func openedFile(t *testing.T, name string) (string, *filter.Env, *store.Store, *device.File, *store.Volume, *FS, Attr) {
	t.Helper()
	dir := t.TempDir()
	env := testEnv(t)
	s, dev := openWithEnv(t, dir, env)
	v, f := newFSVolume(t, s, "home", 64*MiB)
	a := mustCreate(t, f, RootIno, name, syscall.S_IFREG|0o644)
	if _, err := f.Open(context.Background(), a.Ino); err != nil {
		t.Fatal(err)
	}
	return dir, env, s, dev, v, f, a
}
