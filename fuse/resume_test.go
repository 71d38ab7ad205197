package fuse

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sluice-storage/sluice/gateway"
)

// TestResumeSession serves a live fs mount with a server that knows none
// of the node IDs and file handles the kernel holds, as after a crash
// (the tables of the first server are dropped, only its fd and INIT
// settings are kept), three times in a row: a file and a directory
// opened before go on working through their old handles (unknown
// handles, materialised from the engine), a file opened after each
// resume gets a handle in a fresh range and works alongside, stat and
// listing work, and the mount unmounts at the end. The old file
// handle's first fsync after each resume reports EIO (writes the dead
// process answered may be lost), the next succeeds; a file opened after
// the resume fsyncs cleanly.
func TestResumeSession(t *testing.T) {
	_, fsVol, _ := handoverVolumes(t)
	m, dir := mountAt(t, fsVol)
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "d", "f"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := os.Open(filepath.Join(dir, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := bytes.Repeat([]byte("a"), 4*4096)
	if _, err := f.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, epoch := range []uint32{1, 2, MaxResumes} { // the last range: handles near 2^32
		fd, st, err := m.Detach(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st.Table = nil // lost with the process
		if m, err = Resume(context.Background(), fsVol, st, fd, epoch, Options{Logger: log}); err != nil {
			t.Fatal(err)
		}
		block := bytes.Repeat([]byte{byte('0' + epoch%8)}, 4096)
		at := int64(epoch%4) * 4096
		if _, err := f.WriteAt(block, at); err != nil {
			t.Fatalf("epoch %d: write through the old handle: %v", epoch, err)
		}
		copy(want[at:], block)
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("epoch %d: read through the old handle: %v (equal %v)", epoch, err, bytes.Equal(got, want))
		}
		// Opened before the crash: its first fsync reports EIO (writes
		// the dead process answered may be lost), the next succeeds.
		if err := f.Sync(); !errors.Is(err, syscall.EIO) {
			t.Fatalf("epoch %d: first fsync through the old handle: %v, want EIO", epoch, err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("epoch %d: second fsync through the old handle: %v", epoch, err)
		}
		if _, err := d.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		names, err := d.Readdirnames(-1)
		if err != nil || len(names) < 1 {
			t.Fatalf("epoch %d: list through the old directory handle: %v %v", epoch, names, err)
		}
		g, err := os.Create(filepath.Join(dir, "d", "g"))
		if err != nil {
			t.Fatalf("epoch %d: create after the resume: %v", epoch, err)
		}
		if _, err := g.Write(block); err != nil {
			t.Fatal(err)
		}
		if err := g.Sync(); err != nil {
			t.Fatalf("epoch %d: fsync of a file opened after the resume: %v", epoch, err)
		}
		g.Close()
		if b, err := os.ReadFile(filepath.Join(dir, "d", "g")); err != nil || !bytes.Equal(b, block) {
			t.Fatalf("epoch %d: read the new file: %v", epoch, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "d", "f")); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	d.Close()
	if err := m.Unmount(); err != nil {
		t.Fatalf("unmount after the resumes: %v", err)
	}
}

// TestResumeRefusedPastMaxResumes: a resume past MaxResumes would hand
// out the first process's handle numbers again, which the kernel may
// still hold for other files: it is refused, the mount ends (IO on it
// fails) and nothing reads another file's data.
func TestResumeRefusedPastMaxResumes(t *testing.T) {
	fsVol, _, f, fd, st := crashedWithFileOpen(t)
	_, err := Resume(context.Background(), fsVol, st, fd, MaxResumes+1, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "used up") {
		t.Fatalf("resume %d: %v, want a refusal", MaxResumes+1, err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("a write on the refused mount succeeded")
	}
}

// A crash's EIO not yet reported outlives a planned handover: a handle
// opened before the crash, used (materialised) after the resume but not
// fsynced, is handed to a new server, whose fsync through it reports
// EIO once; a handle opened after the resume is handed over clean.
func TestCrashEIOSurvivesHandover(t *testing.T) {
	fsVol, dir, f, fd, st := crashedWithFileOpen(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := Resume(context.Background(), fsVol, st, fd, 1, Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("after the crash"), 0); err != nil { // materialises the old handle
		t.Fatal(err)
	}
	g, err := os.OpenFile(filepath.Join(dir, "g"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if fd, st, err = m.Detach(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(st.CrashEIO) != 1 {
		t.Fatalf("handles with a crash to report: %v, want the one opened before the crash", st.CrashEIO)
	}
	if m, err = Adopt(context.Background(), fsVol, st, fd, Options{Logger: log}); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("first fsync through the handle opened before the crash, after the handover: %v, want EIO", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("second fsync: %v", err)
	}
	if err := g.Sync(); err != nil {
		t.Fatalf("fsync through the handle opened after the resume: %v", err)
	}
	f.Close()
	g.Close()
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
}

// crashedWithFileOpen mounts an fs volume at dir, opens dir/f (closed
// when the test ends) and detaches the mount as a crash leaves it: the
// /dev/fuse fd and the session, without tables.
func crashedWithFileOpen(t *testing.T) (vol *gateway.Volume, dir string, f *os.File, fd int, st *HandoverState) {
	t.Helper()
	_, vol, _ = handoverVolumes(t)
	m, dir := mountAt(t, vol)
	f, err := os.OpenFile(filepath.Join(dir, "f"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if fd, st, err = m.Detach(context.Background()); err != nil {
		t.Fatal(err)
	}
	st.Table = nil // lost with the process
	return vol, dir, f, fd, st
}
