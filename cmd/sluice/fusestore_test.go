package main

import (
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/internal/handover"
	"github.com/sluice-storage/sluice/internal/systemd"
)

// fakeManager is the service manager's end of NOTIFY_SOCKET.
type fakeManager struct {
	t    *testing.T
	conn *net.UnixConn
	n    *systemd.Notifier
}

func newFakeManager(t *testing.T) *fakeManager {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := systemd.NewNotifier(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); n.Close() })
	return &fakeManager{t: t, conn: c, n: n}
}

// recv returns the next message and how many fds came with it (closed);
// "" when none arrives within wait.
func (m *fakeManager) recv(wait time.Duration) (string, int) {
	m.t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(16*4))
	m.conn.SetReadDeadline(time.Now().Add(wait))
	n, oobn, _, _, err := m.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return "", 0
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		m.t.Fatal(err)
	}
	fds := 0
	for _, cm := range msgs {
		got, err := unix.ParseUnixRights(&cm)
		if err != nil {
			m.t.Fatal(err)
		}
		for _, fd := range got {
			unix.Close(fd)
		}
		fds += len(got)
	}
	return string(buf[:n]), fds
}

func (m *fakeManager) expect(want string, fds int) {
	m.t.Helper()
	got, n := m.recv(10 * time.Second)
	if got != want || n != fds {
		m.t.Fatalf("manager got %q with %d fds, want %q with %d", got, n, want, fds)
	}
}

func (m *fakeManager) expectNothing() {
	m.t.Helper()
	if got, n := m.recv(50 * time.Millisecond); got != "" {
		m.t.Fatalf("manager got %q with %d fds, want nothing", got, n)
	}
}

func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func dupNull(t *testing.T) func() (int, error) {
	return func() (int, error) { return unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0) }
}

// TestIsSessionName: fuse- and a connection number, nothing else.
func TestIsSessionName(t *testing.T) {
	for name, want := range map[string]bool{"fuse-0": true, "fuse-42": true, "fuse-": false, "fuse-4a": false, "fuse": false, "api": false, "xfuse-1": false} {
		if got := isSessionName(name); got != want {
			t.Errorf("isSessionName(%q) = %v", name, got)
		}
	}
}

// TestMatchInheritedFUSE: an inherited fd named fuse-N is no listener
// and no error: it comes back as a FUSE session's fd.
func TestMatchInheritedFUSE(t *testing.T) {
	a := &gatewayArgs{APISocket: filepath.Join(t.TempDir(), "api.sock"), NBDSocket: "none", ShimSocket: "none"}
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	fd, _ := syscall.Dup(int(f.Fd()))
	f.Close()
	ls, fuseFDs, err := matchInherited(a, []*os.File{os.NewFile(uintptr(fd), "fuse-7")})
	if err != nil || len(ls) != 0 || len(fuseFDs) != 1 || fuseFDs[0].Name() != "fuse-7" {
		t.Fatalf("listeners %v, fuse fds %v, err %v", ls, fuseFDs, err)
	}
	fuseFDs[0].Close()
}

// TestKeeperStoreRoom: FUSE fds are stored (FDSTORE=1, FDNAME=fuse-N,
// the fd) while the store has room; beyond it storeFD says no (the
// caller puts the fd in the holder); a Drop sends FDSTOREREMOVE and
// frees the room. Without $FDSTORE nothing is stored.
func TestKeeperStoreRoom(t *testing.T) {
	mgr := newFakeManager(t)
	k := newKeeper(t.TempDir(), quietLog())
	k.useStore(mgr.n, true, 1, quietLog())
	m1, m2 := &fuse.Mount{Dev: unix.Mkdev(0, 41)}, &fuse.Mount{Dev: unix.Mkdev(0, 42)}
	k.mu.Lock()
	if !k.storeFD(m1, "fuse-41", dupNull(t)) {
		t.Fatal("the first FUSE fd was not stored")
	}
	mgr.expect("FDSTORE=1\nFDNAME=fuse-41", 1)
	if k.storeFD(m2, "fuse-42", dupNull(t)) {
		t.Fatal("a FUSE fd was stored beyond the room")
	}
	mgr.expectNothing()
	k.mu.Unlock()

	k.Drop(m1)
	mgr.expect("FDSTOREREMOVE=1\nFDNAME=fuse-41", 0)
	k.Drop(m1) // idempotent
	mgr.expectNothing()
	k.mu.Lock()
	if !k.storeFD(m2, "fuse-42", dupNull(t)) {
		t.Fatal("no room after the Drop")
	}
	k.mu.Unlock()
	mgr.expect("FDSTORE=1\nFDNAME=fuse-42", 1)

	// The manager did not say how many fds it keeps: nothing stored.
	k2 := newKeeper(t.TempDir(), quietLog())
	k2.useStore(mgr.n, false, 0, quietLog())
	k2.mu.Lock()
	if k2.storeFD(m1, "fuse-41", dupNull(t)) {
		t.Fatal("stored without $FDSTORE")
	}
	k2.mu.Unlock()
	mgr.expectNothing()
}

// TestKeeperFindHeldFromStore: of the fds the fd store passed, the one
// whose record exists and whose directory has that st_dev is kept for
// the resume (and claimed by its mount without being stored again); one
// whose directory has another st_dev and one without a record are closed
// and removed from the store (FDSTOREREMOVE), their records too; a record
// no fd came with is removed.
func TestKeeperFindHeldFromStore(t *testing.T) {
	mgr := newFakeManager(t)
	data := t.TempDir()
	k := newKeeper(data, quietLog())
	k.useStore(mgr.n, true, 4, quietLog())
	k.checkFD = func(int) error { return nil } // /dev/null stands for /dev/fuse fds here
	dir := t.TempDir()
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, 0, unix.STATX_TYPE, &st); err != nil {
		t.Fatal(err)
	}
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	rec := sessionRecord{Volume: "t/v", Dir: dir, Init: handover.FUSEInit{Major: 7, Minor: 40}, Dev: dev, Epoch: 2}
	write := func(name string, r sessionRecord) {
		b, _ := json.Marshal(r)
		os.MkdirAll(filepath.Join(data, sessionDir), 0o700)
		if err := os.WriteFile(filepath.Join(data, sessionDir, name+".json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("fuse-1", rec)
	other := rec
	other.Dev = dev + 1
	write("fuse-2", other)
	write("fuse-4", rec) // no fd
	var files []*os.File
	for _, name := range []string{"fuse-1", "fuse-2", "fuse-3"} {
		fd, err := dupNull(t)()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	held, err := k.findHeld(files)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].name != "fuse-1" || !held[0].fromStore || held[0].rec.Epoch != 2 {
		t.Fatalf("held %+v, want fuse-1 from the store", held)
	}
	defer unix.Close(held[0].fd)
	mgr.expect("FDSTOREREMOVE=1\nFDNAME=fuse-2", 0)
	mgr.expect("FDSTOREREMOVE=1\nFDNAME=fuse-3", 0)
	mgr.expectNothing()
	for _, f := range files {
		if f.Close() == nil {
			t.Errorf("%s from the store left open", f.Name())
		}
	}
	entries, _ := os.ReadDir(filepath.Join(data, sessionDir))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "fuse-1.json" {
		t.Fatalf("records left: %v, want fuse-1.json", names)
	}
	// Its resumed mount claims the stored fd: nothing is sent.
	m := &fuse.Mount{Dev: dev}
	k.mu.Lock()
	ok := k.storeFD(m, "fuse-1", func() (int, error) { t.Fatal("a stored fd was stored again"); return -1, nil })
	k.mu.Unlock()
	if !ok {
		t.Fatal("the resumed mount's fd is not counted as stored")
	}
	mgr.expectNothing()
	if _, err := os.Stat(filepath.Join(data, "fdholder.sock")); err == nil {
		t.Fatal("a holder was started")
	}
}

// TestLiveFUSE: only a /dev/fuse fd with a live connection passes; a
// /dev/fuse fd that was never mounted reports an ended connection.
func TestLiveFUSE(t *testing.T) {
	fd, err := dupNull(t)()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := liveFUSE(fd); err == nil || !strings.Contains(err.Error(), "not /dev/fuse") {
		t.Fatalf("/dev/null: %v", err)
	}
	ffd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("/dev/fuse: %v", err)
	}
	defer unix.Close(ffd)
	if err := liveFUSE(ffd); err == nil || !strings.Contains(err.Error(), "ended") {
		t.Fatalf("an unmounted /dev/fuse fd: %v", err)
	}
}
