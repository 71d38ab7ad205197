package fsns

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	mrand "math/rand/v2"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/store"
)

const MiB = 1 << 20

func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := mrand.New(mrand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newFSVolume(t *testing.T, s *store.Store, name string, size int64) (*store.Volume, *FS) {
	t.Helper()
	v, err := s.CreateVolume(context.Background(), store.CreateOptions{Tenant: "t", Name: name, Kind: store.KindFS, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	return v, Of(v)
}

func memStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), "", device.NewMemory(256*MiB), store.Options{InMemoryMeta: true, SyncInterval: time.Hour, Namespaces: Maker{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustCreate(t *testing.T, f *FS, parent uint64, name string, mode uint32) Attr {
	t.Helper()
	a, err := f.Create(context.Background(), parent, name, NewInode{Mode: mode})
	if err != nil {
		t.Fatalf("create %q: %v", name, err)
	}
	return a
}

// mustFsckEmpty fails unless fsck is clean and finds the root alone.
func mustFsckEmpty(t *testing.T, s *store.Store, name string) {
	t.Helper()
	if r := mustFsck(t, s, name); r.Inodes != 1 {
		t.Fatalf("fsck counts %d inodes, want the root alone", r.Inodes)
	}
}

func mustFsck(t *testing.T, s *store.Store, name string) store.FsckReport {
	t.Helper()
	r, err := s.Fsck(context.Background(), "t", name)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Clean() {
		t.Fatalf("fsck: %q", r.Problems)
	}
	return r
}

func TestFSNamespace(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	_, f := newFSVolume(t, s, "fs", 64*MiB)

	d := mustCreate(t, f, RootIno, "dir", syscall.S_IFDIR|0o755)
	file := mustCreate(t, f, d.Ino, "a", syscall.S_IFREG|0o644)
	if _, err := f.Create(ctx, d.Ino, "a", NewInode{Mode: syscall.S_IFREG | 0o644}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate create: %v", err)
	}
	if _, err := f.Create(ctx, file.Ino, "x", NewInode{Mode: syscall.S_IFREG}); !errors.Is(err, store.ErrNotDir) {
		t.Fatalf("create in a file: %v", err)
	}
	for _, bad := range []string{"", ".", "..", "a/b", string(make([]byte, 256))} {
		if _, err := f.Create(ctx, RootIno, bad, NewInode{Mode: syscall.S_IFREG}); err == nil {
			t.Fatalf("created %q", bad)
		}
	}
	sl, err := f.Create(ctx, RootIno, "link", NewInode{Mode: syscall.S_IFLNK | 0o777, Target: "dir/a"})
	if err != nil {
		t.Fatal(err)
	}
	if target, err := f.Readlink(ctx, sl.Ino); err != nil || target != "dir/a" || sl.Size != 5 {
		t.Fatalf("readlink %q %v size %d", target, err, sl.Size)
	}
	root, _ := f.GetAttr(ctx, RootIno)
	if root.Nlink != 3 {
		t.Fatalf("root nlink %d with one subdirectory, want 3", root.Nlink)
	}

	// Hard links.
	if _, err := f.Link(ctx, file.Ino, RootIno, "hard"); err != nil {
		t.Fatal(err)
	}
	if a, _ := f.GetAttr(ctx, file.Ino); a.Nlink != 2 {
		t.Fatalf("nlink after link: %d", a.Nlink)
	}
	if _, err := f.Link(ctx, d.Ino, RootIno, "dirlink"); !errors.Is(err, store.ErrPerm) {
		t.Fatalf("hard link to a directory: %v", err)
	}
	entries, err := f.ReadDir(ctx, RootIno)
	if err != nil || len(entries) != 3 || entries[0].Name != "dir" || entries[1].Name != "hard" || entries[2].Name != "link" {
		t.Fatalf("readdir root: %+v %v", entries, err)
	}
	mustFsck(t, s, "fs")

	// Rmdir of a non-empty directory, unlink of a directory.
	if err := f.Rmdir(ctx, RootIno, "dir"); !errors.Is(err, store.ErrNotEmpty) {
		t.Fatalf("rmdir non-empty: %v", err)
	}
	if err := f.Unlink(ctx, RootIno, "dir"); !errors.Is(err, store.ErrIsDir) {
		t.Fatalf("unlink dir: %v", err)
	}
	if err := f.Rmdir(ctx, RootIno, "hard"); !errors.Is(err, store.ErrNotDir) {
		t.Fatalf("rmdir file: %v", err)
	}
	if err := f.Unlink(ctx, d.Ino, "a"); err != nil {
		t.Fatal(err)
	}
	if a, _ := f.GetAttr(ctx, file.Ino); a.Nlink != 1 {
		t.Fatalf("nlink after unlink of one of two names: %d", a.Nlink)
	}
	if err := f.Rmdir(ctx, RootIno, "dir"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.GetAttr(ctx, d.Ino); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("removed directory still there: %v", err)
	}
	if root, _ := f.GetAttr(ctx, RootIno); root.Nlink != 2 {
		t.Fatalf("root nlink %d after rmdir, want 2", root.Nlink)
	}
	mustFsck(t, s, "fs")
}

func TestFSRename(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	_, f := newFSVolume(t, s, "fs", 64*MiB)
	a := mustCreate(t, f, RootIno, "a", syscall.S_IFDIR|0o755)
	b := mustCreate(t, f, RootIno, "b", syscall.S_IFDIR|0o755)
	x := mustCreate(t, f, a.Ino, "x", syscall.S_IFREG|0o644)
	y := mustCreate(t, f, b.Ino, "y", syscall.S_IFREG|0o644)
	sub := mustCreate(t, f, a.Ino, "sub", syscall.S_IFDIR|0o755)

	// Over an existing file: the target's inode goes away.
	if err := f.Rename(ctx, a.Ino, "x", b.Ino, "y", 0); err != nil {
		t.Fatal(err)
	}
	if got, err := f.Lookup(ctx, b.Ino, "y"); err != nil || got.Ino != x.Ino {
		t.Fatalf("b/y is %d (%v), want %d", got.Ino, err, x.Ino)
	}
	if _, err := f.GetAttr(ctx, y.Ino); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("replaced inode survives: %v", err)
	}
	// NOREPLACE, EXCHANGE.
	z := mustCreate(t, f, a.Ino, "z", syscall.S_IFREG|0o644)
	if err := f.Rename(ctx, a.Ino, "z", b.Ino, "y", RenameNoReplace); !errors.Is(err, store.ErrExists) {
		t.Fatalf("noreplace: %v", err)
	}
	if err := f.Rename(ctx, a.Ino, "z", b.Ino, "nothere", RenameExchange); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("exchange with nothing: %v", err)
	}
	if err := f.Rename(ctx, a.Ino, "z", b.Ino, "y", RenameExchange); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.Lookup(ctx, a.Ino, "z"); got.Ino != x.Ino {
		t.Fatal("exchange did not swap a/z")
	}
	if got, _ := f.Lookup(ctx, b.Ino, "y"); got.Ino != z.Ino {
		t.Fatal("exchange did not swap b/y")
	}
	// Exchange a directory with a file across parents: link counts follow.
	if err := f.Rename(ctx, a.Ino, "sub", b.Ino, "y", RenameExchange); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.GetAttr(ctx, sub.Ino); got.Parent != b.Ino {
		t.Fatalf("exchanged directory's parent %d, want %d", got.Parent, b.Ino)
	}
	mustFsck(t, s, "fs")
	// Directory moves: not below itself; over an empty directory only.
	if err := f.Rename(ctx, RootIno, "b", sub.Ino, "b", 0); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("move below itself: %v", err)
	}
	empty := mustCreate(t, f, RootIno, "empty", syscall.S_IFDIR|0o755)
	if err := f.Rename(ctx, RootIno, "a", RootIno, "b", 0); !errors.Is(err, store.ErrNotEmpty) {
		t.Fatalf("over a non-empty directory: %v", err)
	}
	if err := f.Rename(ctx, a.Ino, "sub", RootIno, "b", 0); !errors.Is(err, store.ErrIsDir) {
		t.Fatalf("file over a directory: %v", err)
	}
	if err := f.Rename(ctx, RootIno, "empty", a.Ino, "z", 0); !errors.Is(err, store.ErrNotDir) {
		t.Fatalf("directory over a file: %v", err)
	}
	if err := f.Rename(ctx, b.Ino, "y", RootIno, "empty", 0); err != nil {
		t.Fatalf("directory over an empty directory: %v", err)
	}
	if _, err := f.GetAttr(ctx, empty.Ino); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("replaced empty directory survives")
	}
	// Same inode under two names: nothing happens.
	if _, err := f.Link(ctx, z.Ino, RootIno, "z2"); err != nil {
		t.Fatal(err)
	}
	if err := f.Rename(ctx, RootIno, "z2", b.Ino, "sub", 0); err != nil {
		t.Fatal(err)
	}
	mustFsck(t, s, "fs")
}

func TestFSFileData(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	v, f := newFSVolume(t, s, "fs", 64*MiB)
	a := mustCreate(t, f, RootIno, "f", syscall.S_IFREG|0o644)
	if err := v.WriteAt(ctx, a.Ino, []byte("x"), 0, false); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("write to a file that is not open: %v", err)
	}
	if _, err := f.Open(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	data := pattern(1, 300000)
	if err := v.WriteAt(ctx, a.Ino, data, 1000, false); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Length(ctx, a.Ino); n != 301000 {
		t.Fatalf("length %d after write, want 301000", n)
	}
	got := make([]byte, len(data)+1000)
	if err := v.ReadAt(ctx, a.Ino, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[1000:], data) || !bytes.Equal(got[:1000], make([]byte, 1000)) {
		t.Fatal("read back differs")
	}
	// Truncate down then up: the cut bytes read as zeros.
	sz := int64(70000)
	if _, err := f.SetAttr(ctx, a.Ino, SetAttr{Size: &sz}); err != nil {
		t.Fatal(err)
	}
	sz = 200000
	if _, err := f.SetAttr(ctx, a.Ino, SetAttr{Size: &sz}); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 200000)
	if err := v.ReadAt(ctx, a.Ino, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[1000:70000], data[:69000]) || !bytes.Equal(got[70000:], make([]byte, 130000)) {
		t.Fatal("truncate down and up: wrong bytes")
	}
	// Holes and data.
	if off, err := f.Lseek(ctx, a.Ino, 0, SeekData); err != nil || off != 0 {
		t.Fatalf("SEEK_DATA 0: %d %v", off, err)
	}
	if off, err := f.Lseek(ctx, a.Ino, 0, SeekHole); err != nil || off != 2*store.DefaultChunkSize {
		t.Fatalf("SEEK_HOLE 0: %d %v, want %d", off, err, 2*store.DefaultChunkSize)
	}
	if _, err := f.Lseek(ctx, a.Ino, 200000, SeekData); !errors.Is(err, store.ErrNXIO) {
		t.Fatalf("SEEK_DATA at EOF: %v", err)
	}
	// Fallocate: keep-size allocates without growing; punch makes zeros.
	if err := f.Fallocate(ctx, a.Ino, 300000, 100000, FallocKeepSize); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Length(ctx, a.Ino); n != 200000 {
		t.Fatalf("keep-size fallocate changed length to %d", n)
	}
	if err := f.Fallocate(ctx, a.Ino, 1000, 4096, FallocPunchHole|FallocKeepSize); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 4096)
	v.ReadAt(ctx, a.Ino, got, 1000)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("punched range not zero")
	}
	if err := f.Fallocate(ctx, a.Ino, 0, 500000, 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Length(ctx, a.Ino); n != 500000 {
		t.Fatalf("fallocate length %d, want 500000", n)
	}
	if err := f.Release(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	if at, _ := f.GetAttr(ctx, a.Ino); at.Size != 500000 || at.Blocks == 0 {
		t.Fatalf("persisted attr: size %d blocks %d", at.Size, at.Blocks)
	}
	mustFsck(t, s, "fs")
}

// Space accounting: an fs volume holds at most its size in chunks, and
// deleting returns it.
func TestFSNoSpaceAndStatFS(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	v, f := newFSVolume(t, s, "small", MiB)
	a := mustCreate(t, f, RootIno, "f", syscall.S_IFREG|0o644)
	f.Open(ctx, a.Ino)
	if err := v.WriteAt(ctx, a.Ino, make([]byte, MiB), 0, false); err != nil {
		t.Fatal(err)
	}
	if st := f.StatFS(ctx); st.BlocksFree != 0 || st.Blocks != MiB/4096 {
		t.Fatalf("statfs of a full volume: %+v", st)
	}
	if err := v.WriteAt(ctx, a.Ino, []byte{1}, MiB, false); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("write past the volume's size: %v", err)
	}
	f.Release(ctx, a.Ino)
	if err := f.Unlink(ctx, RootIno, "f"); err != nil {
		t.Fatal(err)
	}
	if st := f.StatFS(ctx); st.BlocksFree != MiB/4096 {
		t.Fatalf("space not returned after unlink: %+v", st)
	}
	mustFsck(t, s, "small")
}

// diskStore opens (size > 0: creates) a store with its pool file and
// metadata in dir, syncing only when asked.
func diskStore(t *testing.T, dir string, size int64) (*store.Store, *device.File) {
	t.Helper()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), size)
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(context.Background(), filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
	if err != nil {
		t.Fatal(err)
	}
	return s, dev
}

// An unlinked file stays readable while open; a crash with it open leaves
// an orphan that the next open of the store purges. Unflushed length past
// the last fsync is cut back at reopen.
func TestFSOrphansAndRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, dev := diskStore(t, dir, 256*MiB)
	v, f := newFSVolume(t, s, "fs", 64*MiB)
	a := mustCreate(t, f, RootIno, "open", syscall.S_IFREG|0o644)
	b := mustCreate(t, f, RootIno, "kept", syscall.S_IFREG|0o644)
	f.Open(ctx, a.Ino)
	f.Open(ctx, b.Ino)
	v.WriteAt(ctx, a.Ino, pattern(2, 200000), 0, false)
	v.WriteAt(ctx, b.Ino, pattern(3, 100000), 0, false)
	if err := f.Fsync(ctx, b.Ino, false); err != nil {
		t.Fatal(err)
	}
	v.WriteAt(ctx, b.Ino, pattern(4, 50000), 100000, false) // never fsynced
	if err := f.Unlink(ctx, RootIno, "open"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 200000)
	if err := v.ReadAt(ctx, a.Ino, got, 0); err != nil || !bytes.Equal(got, pattern(2, 200000)) {
		t.Fatalf("unlinked open file unreadable: %v", err)
	}
	if at, err := f.GetAttr(ctx, a.Ino); err != nil || at.Nlink != 0 {
		t.Fatalf("fstat of unlinked file: %+v %v", at, err)
	}
	r := mustFsck(t, s, "fs")
	if r.Orphans != 1 {
		t.Fatalf("fsck sees %d orphans, want 1", r.Orphans)
	}
	used := s.Stats().Used
	// "Crash": flush what the store has, close the metadata without the
	// releases the handles would do.
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	s.DB().Close()
	dev.Close()

	s, _ = diskStore(t, dir, 0)
	defer s.Close()
	v, _ = s.Volume("t", "fs")
	f = Of(v)
	if _, err := f.GetAttr(ctx, a.Ino); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("orphan survived the restart: %v", err)
	}
	if s.Stats().Used >= used {
		t.Fatalf("orphan's space not returned: used %d before, %d after", used, s.Stats().Used)
	}
	at, err := f.Open(ctx, b.Ino)
	if err != nil {
		t.Fatal(err)
	}
	if at.Size != 100000 {
		t.Fatalf("length after restart %d, want the fsynced 100000", at.Size)
	}
	// Extending again must not resurrect the unflushed bytes.
	sz := int64(150000)
	f.SetAttr(ctx, b.Ino, SetAttr{Size: &sz})
	got = make([]byte, 150000)
	v.ReadAt(ctx, b.Ino, got, 0)
	if !bytes.Equal(got[:100000], pattern(3, 100000)) || !bytes.Equal(got[100000:], make([]byte, 50000)) {
		t.Fatal("bytes past the fsynced length came back")
	}
	f.Release(ctx, b.Ino)
	mustFsck(t, s, "fs")
}

func TestFSXattrs(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	_, f := newFSVolume(t, s, "fs", 64*MiB)
	a := mustCreate(t, f, RootIno, "f", syscall.S_IFREG|0o644)
	if _, err := f.GetXattr(ctx, a.Ino, "user.x"); !errors.Is(err, store.ErrNoData) {
		t.Fatalf("absent xattr: %v", err)
	}
	if err := f.SetXattr(ctx, a.Ino, "user.x", []byte("1"), XattrReplace); !errors.Is(err, store.ErrNoData) {
		t.Fatalf("replace absent: %v", err)
	}
	if err := f.SetXattr(ctx, a.Ino, "user.x", []byte("1"), XattrCreate); err != nil {
		t.Fatal(err)
	}
	if err := f.SetXattr(ctx, a.Ino, "user.x", []byte("2"), XattrCreate); !errors.Is(err, store.ErrExists) {
		t.Fatalf("create existing: %v", err)
	}
	f.SetXattr(ctx, a.Ino, "user.y", bytes.Repeat([]byte{7}, MaxXattrValueLen), 0)
	if err := f.SetXattr(ctx, a.Ino, "user.z", make([]byte, MaxXattrValueLen+1), 0); !errors.Is(err, store.ErrTooBig) {
		t.Fatalf("oversized value: %v", err)
	}
	names, _ := f.ListXattr(ctx, a.Ino)
	if len(names) != 2 || names[0] != "user.x" || names[1] != "user.y" {
		t.Fatalf("list: %q", names)
	}
	if val, _ := f.GetXattr(ctx, a.Ino, "user.x"); string(val) != "1" {
		t.Fatalf("value %q", val)
	}
	if err := f.RemoveXattr(ctx, a.Ino, "user.x"); err != nil {
		t.Fatal(err)
	}
	if err := f.RemoveXattr(ctx, a.Ino, "user.x"); !errors.Is(err, store.ErrNoData) {
		t.Fatalf("remove absent: %v", err)
	}
	// Xattrs go with the inode.
	f.Unlink(ctx, RootIno, "f")
	mustFsckEmpty(t, s, "fs")
}

// Fsck finds what it promises to find.
func TestFsckFindsDamage(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	_, f := newFSVolume(t, s, "fs", 64*MiB)
	a := mustCreate(t, f, RootIno, "f", syscall.S_IFREG|0o644)
	if err := f.settle(); err != nil { // the damage goes in after the create
		t.Fatal(err)
	}
	// A dentry to nowhere, a wrong link count, a leaked chunk.
	txn := s.DB().NewTransaction(true)
	txn.Set(dentryKey(f.v.ID(), RootIno, "ghost"), encodeDentry(999, syscall.S_IFREG))
	at, _ := f.GetAttr(ctx, a.Ino)
	at.Nlink = 5
	txn.Set(inodeKey(f.v.ID(), a.Ino), encodeAttr(at))
	// A plain chunk entry (docs/FORMAT.md): version 1, flags 0, stored
	// length, device offset (1 MiB: the first extent).
	entry := make([]byte, 24)
	entry[0] = 1
	binary.BigEndian.PutUint32(entry[4:], uint32(store.DefaultChunkSize))
	binary.BigEndian.PutUint64(entry[8:], 1<<20)
	txn.Set(binary.BigEndian.AppendUint64(store.ChunkPrefix(f.v.ID(), 777), 0), entry)
	if err := txn.Commit(); err != nil {
		t.Fatal(err)
	}
	r, err := s.Fsck(ctx, "t", "fs")
	if err != nil {
		t.Fatal(err)
	}
	// The leaked chunk is also an entry the store did not count and
	// points at space the allocator has free: two more problems.
	if len(r.Problems) != 5 {
		t.Fatalf("fsck found %d problems, want 5: %q", len(r.Problems), r.Problems)
	}
}

// TestStoreWithoutMakerRefusesFSVolume: a store that holds an fs volume
// does not open without Maker (its namespace would be missing: no orphan
// purge, no FS).
func TestStoreWithoutMakerRefusesFSVolume(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 256*MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	s, err := store.Open(ctx, filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
	if err != nil {
		t.Fatal(err)
	}
	newFSVolume(t, s, "fs", 64*MiB)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = store.Open(ctx, filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour})
	if err == nil {
		s.Close()
		t.Fatal("a store with an fs volume opened without a namespace maker")
	}
	if !errors.Is(err, store.ErrUnsupported) {
		t.Fatalf("open without Maker: %v, want ErrUnsupported", err)
	}
	s, err = store.Open(ctx, filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
	if err != nil {
		t.Fatalf("reopen with Maker after the refusal: %v", err)
	}
	defer s.Close()
	if v, err := s.Volume("t", "fs"); err != nil || Of(v) == nil {
		t.Fatalf("the fs volume after reopening with Maker: %v", err)
	}
}

// fdatasync (Fsync with dataOnly) commits a file's length when it
// changed and nothing when only its data and mtime did: the store's
// sync then finds no commit since the last and flushes the device alone.
// A full fsync commits the mtime. What fdatasync made durable survives a
// reopen.
func TestFdatasync(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, dev := diskStore(t, dir, 256*MiB)
	v, f := newFSVolume(t, s, "fs", 64*MiB)
	a := mustCreate(t, f, RootIno, "wal", syscall.S_IFREG|0o644)
	f.Open(ctx, a.Ino)
	committed := func() uint64 {
		txn := s.DB().NewTransaction(false)
		defer txn.Discard()
		return txn.ReadTs()
	}
	sync := func(dataOnly bool) uint64 {
		t.Helper()
		before := committed()
		if err := f.Fsync(ctx, a.Ino, dataOnly); err != nil {
			t.Fatal(err)
		}
		return committed() - before
	}
	if err := v.WriteAt(ctx, a.Ino, pattern(1, 100000), 0, false); err != nil {
		t.Fatal(err)
	}
	if n := sync(true); n == 0 {
		t.Fatal("fdatasync after the file grew committed nothing (its length)")
	}
	if err := v.WriteAt(ctx, a.Ino, pattern(2, 4096), 8192, false); err != nil {
		t.Fatal(err)
	}
	if n := sync(true); n != 0 {
		t.Fatalf("fdatasync of an overwrite committed %d times, want none", n)
	}
	if n := sync(false); n == 0 {
		t.Fatal("fsync after an overwrite committed nothing (its mtime)")
	}
	if err := v.WriteAt(ctx, a.Ino, pattern(3, 50000), 100000, false); err != nil {
		t.Fatal(err)
	}
	if n := sync(true); n == 0 {
		t.Fatal("fdatasync after the file grew again committed nothing")
	}
	// Reopen without releasing the file: the length and data are there.
	s.DB().Close()
	dev.Close()
	s, _ = diskStore(t, dir, 0)
	defer s.Close()
	v, _ = s.Volume("t", "fs")
	f = Of(v)
	at, err := f.Open(ctx, a.Ino)
	if err != nil || at.Size != 150000 {
		t.Fatalf("after reopen: %+v %v, want length 150000", at, err)
	}
	want := pattern(1, 100000)
	copy(want[8192:], pattern(2, 4096))
	want = append(want, pattern(3, 50000)...)
	got := make([]byte, 150000)
	if err := v.ReadAt(ctx, a.Ino, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("data after reopen differs (%v)", err)
	}
	f.Release(ctx, a.Ino)
	mustFsck(t, s, "fs")
}

// An orphan named in Options.KeepOrphans (a file a handed-over FUSE mount
// still holds open) survives the store's open, stays readable once opened
// again, and is purged at its last Release.
func TestFSKeepOrphans(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, dev := diskStore(t, dir, 256*MiB)
	v, f := newFSVolume(t, s, "fs", 64*MiB)
	a := mustCreate(t, f, RootIno, "tmp", syscall.S_IFREG|0o644)
	f.Open(ctx, a.Ino)
	v.WriteAt(ctx, a.Ino, pattern(5, 100000), 0, false)
	if err := f.Fsync(ctx, a.Ino, false); err != nil {
		t.Fatal(err)
	}
	if err := f.Unlink(ctx, RootIno, "tmp"); err != nil {
		t.Fatal(err)
	}
	// The old process closes its store with the file still open.
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	s.DB().Close()
	dev.Close()

	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 0)
	if err != nil {
		t.Fatal(err)
	}
	s, err = store.Open(ctx, filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour, Namespaces: Maker{},
		KeepOrphans: map[string]map[uint64]bool{"t/fs": {a.Ino: true}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, _ = s.Volume("t", "fs")
	f = Of(v)
	at, err := f.Open(ctx, a.Ino)
	if err != nil || at.Size != 100000 || at.Nlink != 0 {
		t.Fatalf("the kept orphan: %+v, %v", at, err)
	}
	got := make([]byte, 100000)
	if err := v.ReadAt(ctx, a.Ino, got, 0); err != nil || !bytes.Equal(got, pattern(5, 100000)) {
		t.Fatalf("the kept orphan reads wrong: %v", err)
	}
	if r := mustFsck(t, s, "fs"); r.Orphans != 1 {
		t.Fatalf("fsck sees %d orphans while it is open, want 1", r.Orphans)
	}
	if err := f.Release(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	if _, err := f.GetAttr(ctx, a.Ino); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the orphan outlived its last release: %v", err)
	}
	if r := mustFsck(t, s, "fs"); r.Orphans != 0 {
		t.Fatalf("fsck sees %d orphans after the release, want 0", r.Orphans)
	}
}
