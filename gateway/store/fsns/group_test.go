package fsns

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/store"
)

// inBadger reports whether badger itself (no barrier, no cache) holds
// name in parent.
func inBadger(t *testing.T, f *FS, parent uint64, name string) bool {
	t.Helper()
	err := f.v.Store().DB().View(func(txn *badger.Txn) error {
		_, _, err := f.lookupTxn(viewTxn{txn}, parent, name)
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// holdGroups takes the timer's job away: from now on a group is committed
// only by a read, a barrier or a limit. The timer armed for the open
// group, if any, is stopped too.
func holdGroups(f *FS) {
	f.groupMu.Lock()
	defer f.groupMu.Unlock()
	if f.groupTimer != nil {
		f.groupTimer.Stop()
	}
	f.groupTimer = time.AfterFunc(time.Hour, func() {})
}

// TestFSGroupCommit: changes wait in the open group until a reader, a
// full group or the timer commits them; readers that go through the
// barrier always see them.
func TestFSGroupCommit(t *testing.T) {
	s := memStore(t)
	_, f := newFSVolume(t, s, "g", 64*MiB)

	// The timer commits an idle group: nothing else here would.
	mustCreate(t, f, RootIno, "b", syscall.S_IFREG|0o644)
	deadline := time.Now().Add(10 * time.Second)
	for !inBadger(t, f, RootIno, "b") {
		if time.Now().After(deadline) {
			t.Fatal("an idle group was not committed within 10s")
		}
		time.Sleep(groupDelay / 4)
	}

	// From here on the timer does nothing: on a busy machine its
	// groupDelay could pass between any two lines below.
	holdGroups(f)
	mustCreate(t, f, RootIno, "a", syscall.S_IFREG|0o644)
	if !f.pending.Load() || inBadger(t, f, RootIno, "a") {
		t.Fatal("a create went to badger at once: no group")
	}
	if _, err := f.ReadDir(context.Background(), RootIno); err != nil { // through the barrier
		t.Fatal(err)
	}
	if f.pending.Load() {
		t.Fatal("a read through FS.view left the group open")
	}
	// The group's ordering and visibility is the readers': a plain
	// transaction begun after the commit waits for it.
	if !inBadger(t, f, RootIno, "a") {
		t.Fatal("the barrier's commit is not visible to a later transaction")
	}

	// A full group commits itself.
	for i := range groupMaxChanges {
		mustCreate(t, f, RootIno, fmt.Sprintf("c%d", i), syscall.S_IFREG|0o644)
	}
	if !inBadger(t, f, RootIno, fmt.Sprintf("c%d", groupMaxChanges-1)) || f.pending.Load() {
		t.Fatalf("a group of %d changes was not committed", groupMaxChanges)
	}
	mustFsck(t, s, "g")
}

// TestFSGroupReadsOverlay: with the attribute cache off, every read of a
// change goes to its ntxn, which must see the changes before it in the
// open group: by overlaying them (Get) or by committing them first (an
// iterator over a prefix they wrote under).
func TestFSGroupReadsOverlay(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	_, f := newFSVolume(t, s, "o", 64*MiB)
	f.attrs.disable()
	holdGroups(f) // only reads commit the group
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if what != "commit" && !f.pending.Load() {
			t.Fatalf("%s committed the group: the test no longer covers the overlay", what)
		}
	}
	d := mustCreate(t, f, RootIno, "d", syscall.S_IFDIR|0o755)
	x := mustCreate(t, f, d.Ino, "x", syscall.S_IFREG|0o644)
	// Get overlays: the entry, the inode and its parent exist only in the
	// group.
	_, err := f.Link(ctx, x.Ino, d.Ino, "y")
	step("link", err)
	step("rename", f.Rename(ctx, d.Ino, "y", RootIno, "z", 0))
	step("unlink", f.Unlink(ctx, d.Ino, "x"))
	if _, err := f.Create(ctx, d.Ino, "z", NewInode{Mode: syscall.S_IFREG}); err != nil {
		t.Fatal(err)
	}
	step("unlink", f.Unlink(ctx, d.Ino, "z"))
	// An xattr written in the group, then the inode's last unlink: the
	// unlink's look for xattrs is an iterator over what the group wrote.
	step("setxattr", f.SetXattr(ctx, x.Ino, "user.k", []byte("v"), 0))
	step("commit", f.Unlink(ctx, RootIno, "z"))
	// A directory emptied in the group, then removed: the emptiness
	// check is an iterator over the entries the group deleted.
	e := mustCreate(t, f, RootIno, "e", syscall.S_IFDIR|0o755)
	mustCreate(t, f, e.Ino, "f", syscall.S_IFREG|0o644)
	step("commit", f.settle()) // e/f in badger
	step("unlink", f.Unlink(ctx, e.Ino, "f"))
	step("commit", f.Rmdir(ctx, RootIno, "e"))
	step("commit", f.Rmdir(ctx, RootIno, "d"))
	mustFsckEmpty(t, s, "o")
}

// TestFSGroupConcurrentBarriers: barriers in other goroutines commit the
// open group while a change runs (they do not take the namespace mutex);
// the change's later reads must still see that group. With the attribute
// cache off every read goes to badger, so a stale read shows up as a
// wrong link count or a leaked inode in fsck.
func TestFSGroupConcurrentBarriers(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	_, f := newFSVolume(t, s, "c", 64*MiB)
	f.attrs.disable()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				f.barrier()
			}
		}
	}()
	for i := range 500 {
		a := mustCreate(t, f, RootIno, fmt.Sprintf("a%d", i), syscall.S_IFREG|0o644)
		for j := range 3 {
			if _, err := f.Link(ctx, a.Ino, RootIno, fmt.Sprintf("a%d.%d", i, j)); err != nil {
				t.Fatal(err)
			}
		}
		for j := range 3 {
			if err := f.Unlink(ctx, RootIno, fmt.Sprintf("a%d.%d", i, j)); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Unlink(ctx, RootIno, fmt.Sprintf("a%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-done
	mustFsckEmpty(t, s, "c")
}

// TestFSGroupRecordLimits: a group never holds more records than badger
// takes in one transaction (many small changes could pass the byte limit
// and still be too many records), and a change too big for a transaction
// of its own fails without harming the volume.
func TestFSGroupRecordLimits(t *testing.T) {
	ctx := context.Background()
	s := memStore(t)
	_, f := newFSVolume(t, s, "l", 64*MiB)
	maxEntries, _ := f.groupLimits()
	perFile := maxEntries * 2 / 5 // three unlinks fill more than a transaction's worth
	var files []Attr
	for i := range 6 {
		a := mustCreate(t, f, RootIno, fmt.Sprintf("f%d", i), syscall.S_IFREG|0o644)
		for j := range perFile {
			if err := f.SetXattr(ctx, a.Ino, fmt.Sprintf("user.%d", j), nil, 0); err != nil {
				t.Fatal(err)
			}
		}
		files = append(files, a)
	}
	big := mustCreate(t, f, RootIno, "big", syscall.S_IFREG|0o644)
	for j := range maxEntries + 10 {
		if err := f.SetXattr(ctx, big.Ino, fmt.Sprintf("user.%d", j), nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.settle(); err != nil {
		t.Fatal(err)
	}
	holdGroups(f) // only limits commit the group
	for i := range files {
		if err := f.Unlink(ctx, RootIno, fmt.Sprintf("f%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Unlink(ctx, RootIno, "big"); !errors.Is(err, badger.ErrTxnTooBig) {
		t.Fatalf("unlink of an inode with %d xattrs: %v, want a too-big transaction", maxEntries+10, err)
	}
	if err := f.settle(); err != nil {
		t.Fatalf("the volume's namespace failed: %v", err)
	}
	if _, err := f.Lookup(ctx, RootIno, "big"); err != nil {
		t.Fatalf("the refused unlink removed the name: %v", err)
	}
	r := mustFsck(t, s, "l")
	if r.Inodes != 2 {
		t.Fatalf("fsck counts %d inodes, want the root and big", r.Inodes)
	}
}
