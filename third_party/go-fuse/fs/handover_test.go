// Copyright 2026 the Go-FUSE Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

// Sluice patch (see PATCHES.md): a live loopback session handed from
// server to server while files stay open on it.

package fs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// handoverServer is one server of the session and its bridge.
type handoverServer struct {
	srv *fuse.Server
	raw fuse.RawFileSystem
}

func handoverOpts() (*Options, *fuse.MountOptions) {
	sec := time.Second
	// No passthrough: IO must go through the server to test anything
	// (and backing files are not handed over).
	mo := fuse.MountOptions{DirectMount: true, FsName: "handover-test", MaxWrite: 1 << 20,
		DisabledCapabilities: fuse.CAP_PASSTHROUGH}
	return &Options{EntryTimeout: &sec, AttrTimeout: &sec}, &mo
}

func TestSessionHandover(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a direct mount")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	orig, mnt := t.TempDir(), t.TempDir()
	// Whatever happens, the mount goes (a failed handover leaves it
	// served by no one).
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	root, err := NewLoopbackRoot(orig)
	if err != nil {
		t.Fatal(err)
	}
	opts, mo := handoverOpts()
	raw := NewNodeFS(root, opts)
	srv, err := fuse.NewServer(raw, mnt, mo)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		t.Fatal(err)
	}
	cur := &handoverServer{srv, raw}
	defer func() { cur.srv.Unmount() }()

	if err := os.MkdirAll(filepath.Join(mnt, "d", "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "d", "e", "data"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir, err := os.Open(filepath.Join(mnt, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for _, n := range []string{"gone1", "gone2"} {
		if err := os.WriteFile(filepath.Join(mnt, "d", n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var stop atomic.Bool
	var ios atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); errs <- verifiedIO(f, &stop, &ios) }()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if _, err := os.Stat(filepath.Join(mnt, "d", "e", "data")); err != nil {
				errs <- err
				return
			}
			if _, err := os.ReadDir(filepath.Join(mnt, "d")); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()

	for i := 0; i < 5; i++ {
		before := ios.Load()
		for ios.Load() < before+20 {
			time.Sleep(time.Millisecond)
		}
		if i == 2 {
			// FORGETs after a handover: the kernel drops these inodes
			// and forgets them with the lookup counts the old server saw.
			os.Remove(filepath.Join(mnt, "d", "gone1"))
		}
		cur, err = handOver(t, cur, orig, mnt)
		if err != nil {
			t.Fatalf("handover %d: %v", i, err)
		}
	}
	before := ios.Load()
	for ios.Load() < before+20 {
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The directory handle opened before the handovers still reads.
	names, err := dir.Readdirnames(-1)
	if err != nil || len(names) != 2 {
		t.Fatalf("readdir of the handed-over directory handle: %v %v", names, err)
	}
	if err := os.Remove(filepath.Join(mnt, "d", "gone2")); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d verified writes+reads across 5 handovers", ios.Load())
}

// verifiedIO writes a pattern to f and reads it back until stop.
func verifiedIO(f *os.File, stop *atomic.Bool, n *atomic.Int64) error {
	buf := make([]byte, 4096)
	got := make([]byte, 4096)
	for i := 0; !stop.Load(); i++ {
		for j := range buf {
			buf[j] = byte(i + j)
		}
		off := int64(i%64) * 4096
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write %d: %w", i, err)
		}
		if _, err := f.ReadAt(got, off); err != nil {
			return fmt.Errorf("read %d: %w", i, err)
		}
		if !bytes.Equal(buf, got) {
			return fmt.Errorf("read %d: wrong data", i)
		}
		n.Add(1)
	}
	return nil
}

// handOver detaches cur's server and serves its session with a new
// loopback bridge and server.
func handOver(t *testing.T, cur *handoverServer, orig, mnt string) (*handoverServer, error) {
	fd, err := cur.srv.Detach()
	if err != nil {
		return cur, err
	}
	st, err := ExportSession(cur.raw)
	if err != nil {
		return cur, err
	}
	sess := cur.srv.Session()
	root, err := NewLoopbackRoot(orig)
	if err != nil {
		return cur, err
	}
	rd := root.(*LoopbackNode).RootData
	opts, mo := handoverOpts()
	raw := NewNodeFS(root, opts)
	err = RestoreSession(raw, st,
		func(SessionNode) (InodeEmbedder, error) { return &LoopbackNode{RootData: rd}, nil },
		func(n InodeEmbedder, sf SessionFile) (FileHandle, error) {
			if sf.Dir {
				fh, _, errno := n.(NodeOpendirHandler).OpendirHandle(context.Background(), 0)
				return fh, errno2err(errno)
			}
			p := filepath.Join(orig, n.EmbeddedInode().Path(nil))
			fd, err := syscall.Open(p, int(sf.Flags)&^(syscall.O_CREAT|syscall.O_EXCL|syscall.O_TRUNC), 0)
			if err != nil {
				return nil, err
			}
			return NewLoopbackFile(fd), nil
		})
	if err != nil {
		return cur, err
	}
	srv, err := fuse.NewServerSession(raw, fd, mnt, mo, sess)
	if err != nil {
		return cur, err
	}
	go srv.Serve()
	return &handoverServer{srv, raw}, nil
}

func errno2err(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
