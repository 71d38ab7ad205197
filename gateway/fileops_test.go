package gateway

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// changeLog is a Watcher that keeps what it hears.
type changeLog struct {
	mu   sync.Mutex
	data []Change
}

func (c *changeLog) Changed(ch Change) {
	if ch.Data {
		c.mu.Lock()
		c.data = append(c.data, ch)
		c.mu.Unlock()
	}
}

func (c *changeLog) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.data)
}

// Every data change to an fs file (allocate, punch, zero range, set length,
// sync) enters Volume.Do: it passes the volume's QoS queue, is counted per
// door and op, and is reported to other doors' caches.
func TestFileDataChangesGoThroughDo(t *testing.T) {
	ctx := context.Background()
	g := openPolicyGateway(t, t.TempDir(), nil)
	defer g.Close()
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "home", Kind: KindFS, Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.SetQoSRule(ctx, QoSRule{Tenant: "acme", Volume: "home", Limits: qos.Limits{IOPS: 1e6}}); err != nil {
		t.Fatal(err)
	}
	ns := v.Namespace()
	a, err := ns.CreateOpen(ctx, RootIno, "f", NewInode{Mode: 0o100644})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Release(ctx, a.Ino)
	watch := &changeLog{}
	defer ns.Watch(watch)()

	length := func() int64 {
		t.Helper()
		n, err := ns.Length(ctx, a.Ino)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	steps := []struct {
		req  Request
		want int64 // length afterwards
	}{
		{Request{Op: OpAllocate, Length: 1 << 20}, 1 << 20},
		{Request{Op: OpAllocate, Offset: 1 << 20, Length: 1 << 20, KeepSize: true}, 1 << 20},
		{Request{Op: OpWrite, Buf: words(8192)}, 1 << 20},
		{Request{Op: OpDiscard, Length: 4096}, 1 << 20},
		{Request{Op: OpWriteZeroes, Offset: 4096, Length: 4096, KeepSize: true}, 1 << 20},
		{Request{Op: OpWriteZeroes, Offset: 3 << 20, Length: 4096}, 3<<20 + 4096},
		{Request{Op: OpSetLength, Length: 8192}, 8192},
		{Request{Op: OpSync, FUA: true}, 8192},
	}
	for _, s := range steps {
		r := s.req
		r.Inode, r.Door, r.Path = a.Ino, DoorFUSE, "f"
		if err := v.Do(ctx, &r); err != nil {
			t.Fatalf("%v: %v", r.Op, err)
		}
		if got := length(); got != s.want {
			t.Fatalf("after %v: length %d, want %d", r.Op, got, s.want)
		}
	}
	got := make([]byte, 8192)
	if err := v.Do(ctx, &Request{Op: OpRead, Inode: a.Ino, Buf: got, Door: DoorFUSE}); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if b != 0 {
			t.Fatalf("byte %d = %#x after discard and zero range, want 0", i, b)
		}
	}

	ops := map[string]uint64{}
	for _, s := range v.Stats() {
		if s.Door == "fuse" && s.Errors == 0 {
			ops[s.Op] += s.Ops
		}
	}
	for op, want := range map[string]uint64{"allocate": 2, "discard": 1, "write_zeroes": 2, "set_length": 1, "sync": 1} {
		if ops[op] != want {
			t.Errorf("counters: %d %s ops through the fuse door, want %d (all: %v)", ops[op], op, want, ops)
		}
	}
	rules := g.QoSRules()
	if len(rules) != 1 || rules[0].Stats.AdmittedOps != uint64(len(steps)+1) {
		t.Errorf("QoS queue admitted %+v, want %d requests", rules, len(steps)+1)
	}
	// Change reports: other doors' caches hear of every step but the
	// sync, which changes nothing.
	if n := watch.count(); n != len(steps)-1 {
		t.Errorf("watcher heard %d data changes, want %d: %+v", n, len(steps)-1, watch.data)
	}
}

// The namespace a door gets changes no data: a length goes through Do.
func TestNamespaceRefusesLengthChange(t *testing.T) {
	ctx := context.Background()
	g := openPolicyGateway(t, t.TempDir(), nil)
	defer g.Close()
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "home", Kind: KindFS, Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ns := v.Namespace()
	a, err := ns.Create(ctx, RootIno, "f", NewInode{Mode: 0o100644})
	if err != nil {
		t.Fatal(err)
	}
	size := int64(100)
	if _, err := ns.SetAttr(ctx, a.Ino, SetAttr{Size: &size}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("SetAttr with a size: %v, want ErrInvalid", err)
	}
	mode := uint32(0o600)
	if a, err = ns.SetAttr(ctx, a.Ino, SetAttr{Mode: &mode}); err != nil || a.Mode&0o7777 != 0o600 || a.Size != 0 {
		t.Fatalf("SetAttr mode: %+v, %v", a, err)
	}

	b, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "disk", Kind: KindBlock, Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if b.Namespace() != nil {
		t.Fatal("a block volume has a namespace")
	}
	for _, op := range []Op{OpAllocate, OpSetLength} {
		if err := b.Do(ctx, &Request{Op: op, Length: 4096}); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%v on a block volume: %v, want ErrUnsupported", op, err)
		}
	}
	if err := b.Do(ctx, &Request{Op: OpSync}); err != nil {
		t.Errorf("sync of a block volume: %v", err)
	}
}
