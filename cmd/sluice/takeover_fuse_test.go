package main

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/internal/handover"
)

// TestSendRecvFUSE: a mount's state with tables far over one message's
// 64 KiB (20000 nodes with long names, hard links, 3000 handles) goes
// through a handover connection in several fuse_table parts and comes out
// the same, with its fd; a node's names beyond MaxFUSELinks are dropped,
// newest kept.
func TestSendRecvFUSE(t *testing.T) {
	dir := t.TempDir()
	hl, err := handover.Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	st := &fuse.HandoverState{Volume: "t/fs", Dir: "/mnt/fs", ReadOnly: true,
		Session: gofuse.Session{Kernel: gofuse.InitIn{Major: 7, Minor: 41, MaxReadAhead: 128 << 10, Flags: 0x73fffffb, Flags2: 3},
			Negotiated: 0x40077f},
		Table: &fs.SessionTable{NextNodeID: 2, AutomaticIno: 1 << 63}}
	for i := uint64(1); i <= 20000; i++ {
		sn := fs.SessionNode{NodeID: i, Attr: fs.StableAttr{Mode: unix.S_IFREG, Ino: i}, Lookups: i % 7}
		if i > 1 {
			sn.Links = []fs.SessionLink{{Parent: 1, Name: fmt.Sprintf("%s-%d", strings.Repeat("n", 200), i)}}
		}
		st.Table.Nodes = append(st.Table.Nodes, sn)
	}
	many := &st.Table.Nodes[5]
	for j := 0; j < 40; j++ {
		many.Links = append(many.Links, fs.SessionLink{Parent: 1, Name: fmt.Sprintf("link%d", j)})
	}
	for fh := uint32(1); fh <= 3000; fh++ {
		st.Table.Files = append(st.Table.Files, fs.SessionFile{Fh: fh, NodeID: uint64(fh%100 + 2), Flags: unix.O_RDWR, Dir: fh%10 == 0})
	}
	st.CrashEIO = []uint32{7, 11, 2999} // opened before a crash, EIO not reported yet
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])

	sent := make(chan error, 1)
	go func() {
		c, err := handover.Accept(hl)
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		sent <- sendFUSE(c, fuse.Detached{FD: p[0], State: st})
	}()
	c, err := handover.Dial(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := recvFUSE(c)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(got.fd)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	parts, err := tableParts(st.Table, st.CrashEIO)
	if err != nil || len(parts) < 50 {
		t.Fatalf("%d parts (%v), want the tables cut into many", len(parts), err)
	}
	many.Links = many.Links[:handover.MaxFUSELinks]
	if !reflect.DeepEqual(got.state, st) {
		t.Fatalf("the state changed on the way: %d nodes %d files, want %d %d", len(got.state.Table.Nodes),
			len(got.state.Table.Files), len(st.Table.Nodes), len(st.Table.Files))
	}
	var a, b unix.Stat_t
	if unix.Fstat(p[0], &a) != nil || unix.Fstat(got.fd, &b) != nil || a.Ino != b.Ino {
		t.Fatal("the fd received is not the one sent")
	}
	t.Logf("%d nodes and %d handles in %d parts", len(st.Table.Nodes), len(st.Table.Files), len(parts))
}
