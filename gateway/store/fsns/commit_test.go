package fsns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/store"
)

// TestFSReadsSeeAcknowledgedChanges: a namespace change returns before its
// group is committed, and the commit before badger has written it
// (FS.update, group.go); a read begun after it returns, through
// FS.view as every namespace read outside FS.update is, must still find
// what it wrote.
func TestFSReadsSeeAcknowledgedChanges(t *testing.T) {
	s := memStore(t)
	_, f := newFSVolume(t, s, "fs", 64*MiB)
	for i := range 2000 {
		name := fmt.Sprintf("f%d", i)
		a := mustCreate(t, f, RootIno, name, syscall.S_IFREG|0o644)
		err := f.view(func(txn kv) error {
			ino, _, err := f.lookupTxn(txn, RootIno, name)
			if err == nil && ino != a.Ino {
				err = fmt.Errorf("entry names inode %d, create returned %d", ino, a.Ino)
			}
			return err
		})
		if err != nil {
			t.Fatalf("create %d: a later read transaction: %v", i, err)
		}
		if i%2 == 0 {
			if err := f.Unlink(context.Background(), RootIno, name); err != nil {
				t.Fatal(err)
			}
			err := f.view(func(txn kv) error { _, err := f.rawAttr(txn, a.Ino); return err })
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("unlink %d: a later read transaction finds the inode: %v", i, err)
			}
		}
	}
	mustFsck(t, s, "fs")
}

// TestFSCommitFailureFailsNamespace: when a commit fails after its
// operation returned, the volume refuses further changes and fsync with
// ErrIO, and the attribute cache (which applied the lost changes) is off.
func TestFSCommitFailureFailsNamespace(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	_, f := newFSVolume(t, s, "fs", 64*MiB)
	a := mustCreate(t, f, RootIno, "a", syscall.S_IFREG|0o644)
	if _, err := f.GetAttr(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.attrs.get(a.Ino); !ok {
		t.Fatal("a new file is not cached")
	}
	// What update does with a commit, but the write fails.
	f.groupMu.Lock()
	prev, done := f.lastCommit, make(chan struct{})
	f.lastCommit = done
	f.groupMu.Unlock()
	f.written(prev, done, errors.New("injected log write failure"))

	if _, err := f.Create(ctx, RootIno, "b", NewInode{Mode: syscall.S_IFREG | 0o644}); !errors.Is(err, store.ErrIO) {
		t.Fatalf("create after a failed commit: %v, want ErrIO", err)
	}
	if err := f.Unlink(ctx, RootIno, "a"); !errors.Is(err, store.ErrIO) {
		t.Fatalf("unlink after a failed commit: %v, want ErrIO", err)
	}
	if err := f.Fsync(ctx, a.Ino, false); !errors.Is(err, store.ErrIO) {
		t.Fatalf("fsync after a failed commit: %v, want ErrIO", err)
	}
	if _, ok := f.attrs.get(a.Ino); ok {
		t.Fatal("the attribute cache still answers after a failed commit")
	}
	if got, err := f.GetAttr(ctx, a.Ino); err != nil || got.Ino != a.Ino {
		t.Fatalf("getattr from badger after a failed commit: %+v %v", got, err)
	}
	if _, ok := f.attrs.get(a.Ino); ok {
		t.Fatal("a read filled the disabled cache")
	}
}

// TestFSInodeNumbersAcrossRestarts: inode numbers are reserved in batches
// (allocIno); after a restart, and across batch boundaries, no number is
// handed out twice, and the stored counter stays above every inode.
func TestFSInodeNumbersAcrossRestarts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	seen := map[uint64]string{}
	var maxIno uint64
	for round := range 3 {
		dev, err := device.OpenFile(filepath.Join(dir, "pool"), 256*MiB)
		if err != nil {
			t.Fatal(err)
		}
		s, err := store.Open(ctx, filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
		if err != nil {
			t.Fatal(err)
		}
		var f *FS
		if round == 0 {
			_, f = newFSVolume(t, s, "fs", 64*MiB)
		} else {
			v, err := s.Volume("t", "fs")
			if err != nil {
				t.Fatal(err)
			}
			f = Of(v)
		}
		n := inoBatch + 7 // cross a batch boundary in every round
		if round == 1 {
			n = 3 // and restart in the middle of a batch
		}
		for i := range n {
			name := fmt.Sprintf("r%d.%d", round, i)
			a := mustCreate(t, f, RootIno, name, syscall.S_IFREG|0o644)
			if prev, dup := seen[a.Ino]; dup {
				t.Fatalf("inode %d given to %q and to %q", a.Ino, prev, name)
			}
			seen[a.Ino] = name
			if a.Ino <= maxIno {
				t.Fatalf("round %d: inode %d after %d", round, a.Ino, maxIno)
			}
			maxIno = a.Ino
		}
		var counter uint64
		if err := f.settle(); err != nil {
			t.Fatal(err)
		}
		err = s.DB().View(func(txn *badger.Txn) error {
			item, err := txn.Get(inoCounterKey(f.v.ID()))
			if err != nil {
				return err
			}
			return item.Value(func(b []byte) error { counter = binary.BigEndian.Uint64(b); return nil })
		})
		if err != nil || counter <= maxIno {
			t.Fatalf("round %d: stored counter %d (%v), highest inode %d", round, counter, err, maxIno)
		}
		mustFsck(t, s, "fs")
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFSPersistRacingPurge: a file's last Release persists its length
// while another open and last Release of the same unlinked file purges
// it. The purge's delete and the persist must not collide in badger (a
// conflict would fail a commit after its operation returned, and with
// it the volume's namespace).
func TestFSPersistRacingPurge(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	v, f := newFSVolume(t, s, "fs", 64*MiB)
	for i := range 300 {
		a, err := f.CreateOpen(ctx, RootIno, fmt.Sprintf("f%d", i), NewInode{Mode: syscall.S_IFREG | 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WriteAt(ctx, a.Ino, pattern(uint64(i), 5000), 0, false); err != nil {
			t.Fatal(err)
		}
		if err := f.Unlink(ctx, RootIno, fmt.Sprintf("f%d", i)); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 3 { // reopen, dirty, close: each close may be a last one
				if _, err := f.Open(ctx, a.Ino); err != nil {
					return // purged already
				}
				v.WriteAt(ctx, a.Ino, pattern(uint64(i+1), 100), 5000, false)
				f.Release(ctx, a.Ino)
			}
		}()
		if err := f.Release(ctx, a.Ino); err != nil {
			t.Fatal(err)
		}
		<-done
	}
	if err := f.settle(); err != nil {
		t.Fatalf("a commit failed: %v", err)
	}
	mustFsck(t, s, "fs")
}

// TestFSReleaseRacingReopen is the durable-rename pattern's core (issue
// 16): a file is written and closed, and at once reopened, fsynced and
// closed again. FUSE sends the first RELEASE asynchronously, so the
// reopen's Open, Fsync and Release run while the first Release is still
// persisting. The length must survive, and the Fsync must not return
// before the length it covers is in badger.
func TestFSReleaseRacingReopen(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	v, f := newFSVolume(t, s, "fs", 128*MiB)
	storedLength := func(ino uint64) int64 {
		var n int64
		if err := f.view(func(txn kv) (err error) { n, err = readLength(txn, v.ID(), ino); return err }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for i := range 1500 {
		a, err := f.CreateOpen(ctx, RootIno, fmt.Sprintf("f%d", i), NewInode{Mode: syscall.S_IFREG | 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WriteAt(ctx, a.Ino, []byte("12345678"), 0, false); err != nil {
			t.Fatal(err)
		}
		fsynced := make(chan int64, 1)
		go func() {
			if _, err := f.Open(ctx, a.Ino); err != nil {
				t.Error(err)
				fsynced <- -1
				return
			}
			if err := f.Fsync(ctx, a.Ino, false); err != nil {
				t.Error(err)
			}
			fsynced <- storedLength(a.Ino)
			if err := f.Release(ctx, a.Ino); err != nil {
				t.Error(err)
			}
		}()
		if err := f.Release(ctx, a.Ino); err != nil {
			t.Fatal(err)
		}
		if n := <-fsynced; n != 8 {
			t.Fatalf("file %d: badger holds length %d after its fsync returned, want 8", i, n)
		}
		got, err := f.GetAttr(ctx, a.Ino)
		if err != nil || got.Size != 8 {
			t.Fatalf("file %d: size %d (%v) after the race, want 8", i, got.Size, err)
		}
	}
	if err := f.settle(); err != nil {
		t.Fatal(err)
	}
	for i := range 1500 {
		a, err := f.Lookup(ctx, RootIno, fmt.Sprintf("f%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if n := storedLength(a.Ino); n != 8 {
			t.Fatalf("file %d: badger holds length %d, want 8", i, n)
		}
	}
}
