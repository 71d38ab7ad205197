package fsns

import (
	"context"
	"slices"
	"sync"
	"syscall"
	"testing"
)

// recorder is a Watcher that keeps what it was told.
type recorder struct {
	mu sync.Mutex
	cs []Change
}

func (r *recorder) Changed(c Change) {
	r.mu.Lock()
	r.cs = append(r.cs, c)
	r.mu.Unlock()
}

// take returns and forgets what r was told.
func (r *recorder) take() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs := r.cs
	r.cs = nil
	return cs
}

func TestFSWatchReportsOthersChanges(t *testing.T) {
	s := memStore(t)
	v, f := newFSVolume(t, s, "w", 64*MiB)
	bg := context.Background()
	a, b := &recorder{}, &recorder{}
	stopA := f.Watch(a)
	stopB := f.Watch(b)
	byA := WithOrigin(bg, a)
	has := func(who string, cs []Change, want Change) {
		t.Helper()
		if !slices.Contains(cs, want) {
			t.Fatalf("%s was not told %+v; it was told %+v", who, want, cs)
		}
	}

	// A change made on a's behalf is reported to b only.
	file, err := f.CreateOpen(byA, RootIno, "f", NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if cs := a.take(); len(cs) != 0 {
		t.Fatalf("the origin was told of its own create: %+v", cs)
	}
	cs := b.take()
	has("b", cs, Change{Parent: RootIno, Name: "f"})
	has("b", cs, Change{Ino: RootIno}) // the directory's times

	// Data written through the volume on a's behalf, then by nobody's.
	if err := v.WriteAt(byA, file.Ino, []byte("hello"), 10, false); err != nil {
		t.Fatal(err)
	}
	if cs := a.take(); len(cs) != 0 {
		t.Fatalf("the origin was told of its own write: %+v", cs)
	}
	has("b", b.take(), Change{Ino: file.Ino, Data: true, Off: 10, Len: 5})
	if err := v.Discard(bg, file.Ino, 0, 8); err != nil {
		t.Fatal(err)
	}
	has("a", a.take(), Change{Ino: file.Ino, Data: true, Off: 0, Len: 8})
	has("b", b.take(), Change{Ino: file.Ino, Data: true, Off: 0, Len: 8})
	if err := f.Fallocate(bg, file.Ino, 0, 4096, FallocKeepSize|FallocPunchHole); err != nil {
		t.Fatal(err)
	}
	has("a", a.take(), Change{Ino: file.Ino, Data: true, Off: 0, Len: 4096})
	b.take()
	size := int64(3)
	if _, err := f.SetAttr(bg, file.Ino, SetAttr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	cs = a.take()
	has("a", cs, Change{Ino: file.Ino, Data: true, Off: 3})
	has("a", cs, Change{Ino: file.Ino})
	b.take()
	if err := f.Release(byA, file.Ino); err != nil {
		t.Fatal(err)
	}
	a.take()
	b.take()

	// Xattrs, links, renames and removals, made by nobody's behalf.
	if err := f.SetXattr(bg, file.Ino, "user.k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	has("a", a.take(), Change{Ino: file.Ino})
	if _, err := f.Link(bg, file.Ino, RootIno, "g"); err != nil {
		t.Fatal(err)
	}
	cs = a.take()
	has("a", cs, Change{Parent: RootIno, Name: "g"})
	has("a", cs, Change{Ino: file.Ino})
	d := mustCreate(t, f, RootIno, "d", syscall.S_IFDIR|0o755)
	a.take()
	if err := f.Rename(bg, RootIno, "g", d.Ino, "h", 0); err != nil {
		t.Fatal(err)
	}
	cs = a.take()
	has("a", cs, Change{Parent: RootIno, Name: "g"})
	has("a", cs, Change{Parent: d.Ino, Name: "h"})
	if err := f.Unlink(bg, d.Ino, "h"); err != nil {
		t.Fatal(err)
	}
	cs = a.take()
	has("a", cs, Change{Parent: d.Ino, Name: "h"})
	has("a", cs, Change{Ino: file.Ino}) // one link fewer
	b.take()

	// A failed change reports nothing; a stopped watcher hears nothing.
	if err := f.Unlink(bg, RootIno, "missing"); err == nil {
		t.Fatal("unlink of a missing name succeeded")
	}
	if cs := a.take(); len(cs) != 0 {
		t.Fatalf("a failed unlink was reported: %+v", cs)
	}
	stopA()
	if err := f.Unlink(bg, RootIno, "f"); err != nil {
		t.Fatal(err)
	}
	if cs := a.take(); len(cs) != 0 {
		t.Fatalf("a stopped watcher was told %+v", cs)
	}
	has("b", b.take(), Change{Parent: RootIno, Name: "f"})
	stopB()
}
