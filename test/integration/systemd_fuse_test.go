package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recvStored reads notifications up to READY=1 and returns the fds
// stored before it, by name (the test holds them, as systemd would).
func (n *notifySocket) recvStored(g *gw) map[string]*os.File {
	n.t.Helper()
	stored := map[string]*os.File{}
	for {
		msg, fds := n.recvFDs(g)
		if strings.HasPrefix(msg, "READY=1\n") {
			return stored
		}
		name, ok := strings.CutPrefix(msg, "FDSTORE=1\nFDNAME=")
		if !ok || len(fds) != 1 || stored[name] != nil {
			n.t.Fatalf("before READY=1: %q with %d fds", msg, len(fds))
		}
		f := os.NewFile(uintptr(fds[0]), name)
		n.t.Cleanup(func() { f.Close() })
		stored[name] = f
	}
}

// TestSystemdFUSEStore: under systemd with room in the fd store
// ($FDSTORE) and --fuse-resume, the gateway stores a new FUSE mount's
// /dev/fuse fd (FDSTORE=1, FDNAME=fuse-N) instead of starting the fd
// holder (which systemd would kill with the unit). The test holds the
// stored fds, as systemd does, while another process keeps a file open
// on the mount and writes, fsyncs and reads it back. The gateway is
// killed with SIGKILL and started again with the stored fds in
// LISTEN_FDS (the sockets, the FUSE session, and a bogus fuse-N without
// a session record): it removes the bogus one from the store
// (FDSTOREREMOVE), resumes the mount from the stored fd without storing
// anything again, the client goes on without an error and every fsynced
// byte reads back; a later unmount removes the session from the store,
// and so does a stop with a mount (its unmount).
func TestSystemdFUSEStore(t *testing.T) {
	n := listenNotify(t)
	dir := t.TempDir()
	g := startSystemdGateway(t, dir, []string{"NOTIFY_SOCKET=" + n.path, "FDSTORE=16"}, nil, "--fuse-resume")
	stored := n.recvStored(g)
	mnt := g.mountVolume("t/fs", "fs", "64M")
	dev := deviceOfPath(t, mnt)
	t.Cleanup(func() {
		if t.Failed() {
			// Nobody may serve the mount: end its connection, or the
			// removal of the test's directories waits on it forever.
			os.WriteFile(fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(dev)), []byte("1"), 0)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	session := fmt.Sprintf("fuse-%d", unix.Minor(dev))
	msg, fds := n.recvFDs(g)
	if msg != "FDSTORE=1\nFDNAME="+session || len(fds) != 1 {
		t.Fatalf("after the mount: %q with %d fds, want FDSTORE=1 FDNAME=%s with its fd\n%s", msg, len(fds), session, g.logTail())
	}
	fuseFD := os.NewFile(uintptr(fds[0]), session)
	t.Cleanup(func() { fuseFD.Close() })
	if _, err := os.Stat(filepath.Join(dir, "fdholder.sock")); err == nil {
		t.Fatal("the fd holder was started although the fd store had room")
	}

	w := startCrashWorker(t, mnt)
	w.progress(t, g, "IO before the kill")

	g.kill()
	bogus := "fuse-99"
	if bogus == session {
		bogus = "fuse-98"
	}
	null, err := os.Open("/dev/null")
	must(t, err)
	t.Cleanup(func() { null.Close() })
	files := []*os.File{stored["api"], stored["nbd"], stored["shim"], fuseFD, null}
	env := []string{"NOTIFY_SOCKET=" + n.path, "FDSTORE=16", "LISTEN_FDS=5", "LISTEN_FDNAMES=api:nbd:shim:" + session + ":" + bogus}
	g2 := startSystemdGateway(t, dir, env, files, "--fuse-resume")
	if msg := n.recv(g2); msg != "FDSTOREREMOVE=1\nFDNAME="+bogus {
		t.Fatalf("after the restart: %q, want FDSTOREREMOVE=1 FDNAME=%s (a fuse-N fd without a session)\n%s", msg, bogus, g2.logTail())
	}
	if msg := n.recv(g2); !strings.HasPrefix(msg, "READY=1\n") {
		t.Fatalf("after the restart: %q, want READY=1 (nothing stored again)\n%s", msg, g2.logTail())
	}
	if log := g2.logTail(); !strings.Contains(log, `msg="crash resume" fuse_mounts_resumed=1 fuse_sessions_held=1`) {
		t.Fatalf("the restarted gateway did not resume the mount:\n%s", log)
	}
	w.progress(t, g2, "IO after the restart")
	if n := w.eio.Load(); n != 1 {
		t.Fatalf("%d fsyncs reported EIO after the crash, want 1 (the first through the handle opened before it)", n)
	}

	w.stop(t, g2)
	t.Logf("client: writes %d, stat+readdir loops %d; longest write+fsync+read %d ms", w.writes.Load(), w.lists.Load(), w.longest.Load())

	g2.mustSluice("umount", mnt)
	if msg := n.recv(g2); msg != "FDSTOREREMOVE=1\nFDNAME="+session {
		t.Fatalf("after the unmount: %q, want FDSTOREREMOVE=1 FDNAME=%s", msg, session)
	}
	if _, err := os.Stat(filepath.Join(dir, "fuse-sessions", session+".json")); err == nil {
		t.Fatal("the session record is still there after the unmount")
	}
	// Mounted again, then stopped: the stop's unmount removes it too.
	g2.mustSluice("mount", "t/fs", mnt)
	msg, fds = n.recvFDs(g2)
	session = fmt.Sprintf("fuse-%d", unix.Minor(deviceOfPath(t, mnt)))
	if msg != "FDSTORE=1\nFDNAME="+session || len(fds) != 1 {
		t.Fatalf("after mounting again: %q with %d fds, want FDSTORE=1 FDNAME=%s", msg, len(fds), session)
	}
	unix.Close(fds[0])
	g2.stop()
	if msg := n.recv(g2); !strings.HasPrefix(msg, "STOPPING=1\n") {
		t.Fatalf("on SIGTERM: %q, want STOPPING=1", msg)
	}
	if msg := n.recv(g2); msg != "FDSTOREREMOVE=1\nFDNAME="+session {
		t.Fatalf("on stop with a mount: %q, want FDSTOREREMOVE=1 FDNAME=%s", msg, session)
	}
	if msg, err := n.read(100 * time.Millisecond); err == nil {
		t.Fatalf("after the stop: %q", msg)
	}
	if _, err := os.Stat(filepath.Join(dir, "fdholder.sock")); err == nil {
		t.Fatal("an fd holder was started")
	}
}
