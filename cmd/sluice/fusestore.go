package main

import (
	"log/slog"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/internal/systemd"
)

// FUSE sessions in systemd's fd store (docs/HANDOVER.md, "Under
// systemd"). The fd holder is a process of the unit's cgroup: when the
// gateway dies, systemd kills it with the rest of the unit, and the
// mounts' connections end. The fd store is systemd's own: it keeps the
// fds across the restart (Restart=on-failure) and passes them back in
// LISTEN_FDS. So under systemd, when $FDSTORE leaves room beyond the
// listening sockets, each mount's /dev/fuse fd is stored (FDSTORE=1,
// FDNAME=fuse-N, N as in its session record's name) instead of held,
// and removed (FDSTOREREMOVE=1) when the mount ends. When the store is
// full a mount's fd goes to the holder, with a warning.

// sessionPrefix starts the fd name of a FUSE session (fuse-N).
const sessionPrefix = "fuse-"

// isSessionName reports whether an inherited fd's name is a FUSE
// session's: fuse- and a connection number.
func isSessionName(name string) bool {
	n, ok := strings.CutPrefix(name, sessionPrefix)
	return ok && n != "" && strings.Trim(n, "0123456789") == ""
}

// useStore makes the keeper store FUSE fds in the service manager's fd
// store (told by n), room of them at most. n nil: no manager, nothing
// stored. told: the manager said how many fds its store takes
// ($FDSTORE); otherwise nothing is stored either, but sessions found in
// the store at start-up that end are still removed from it.
func (k *keeper) useStore(n *systemd.Notifier, told bool, room int, log *slog.Logger) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.notify = n
	k.storeOn = n != nil && told
	k.storeRoom = room
	if k.storeOn {
		log.Info("crash resume: FUSE mounts' fds go to the service manager's fd store", "room", room)
	}
}

// storeFD puts m's fd (a duplicate from dup) in the fd store under name
// when the store is used and has room. It reports whether the fd is in
// the store (stored now, or taken from it at start-up and now claimed by
// the mount resumed from it); when not, the caller puts it in the
// holder. k.mu held.
func (k *keeper) storeFD(m *fuse.Mount, name string, dup func() (int, error)) bool {
	if !k.storeOn {
		return false
	}
	if owner, ok := k.stored[name]; ok {
		if owner == nil || owner == m {
			k.stored[name] = m
			return true
		}
		// An earlier mount of this connection number ended and its Drop
		// has not run yet: its fd leaves the store first.
		k.unstore(name)
	}
	if len(k.stored) >= k.storeRoom {
		k.log.Warn("fd store: full; this FUSE mount's fd goes to the fd holder, which systemd kills with the unit: the mount will not survive a crash of the gateway (raise FileDescriptorStoreMax=)",
			"name", name, "fuse_fds_stored", len(k.stored), "room", k.storeRoom)
		return false
	}
	fd, err := dup()
	if err == nil {
		f := os.NewFile(uintptr(fd), name)
		err = k.notify.StoreFDs(name, f)
		f.Close()
	}
	if err != nil {
		k.log.Warn("fd store: a FUSE mount's fd was not stored; it goes to the fd holder", "name", name, "err", err)
		return false
	}
	k.stored[name] = m
	k.log.Info("fd store: FUSE session stored", "name", name)
	return true
}

// unstore asks the service manager to close its stored fd of name (k.mu
// held).
func (k *keeper) unstore(name string) {
	delete(k.stored, name)
	if err := k.notify.RemoveFDs(name); err != nil {
		k.log.Warn("fd store: removing a FUSE session's fd", "name", name, "err", err)
	}
}

// takeStored makes the fds the fd store passed kept sessions found at
// start-up (a duplicate of each; the files are closed), by name; a second
// fd of one name is closed. They count as stored until resumed or ended.
// k.mu held.
func (k *keeper) takeStored(files []*os.File) map[string]heldSession {
	found := map[string]heldSession{}
	for _, f := range files {
		name := f.Name()
		fd, err := dupFile(f)
		f.Close()
		if err != nil {
			k.log.Warn("crash resume: a FUSE session's fd from the fd store", "name", name, "err", err)
			continue
		}
		if _, dup := found[name]; dup {
			k.log.Warn("crash resume: the fd store passed two fds of one FUSE session; the first is used", "name", name)
			unix.Close(fd)
			continue
		}
		found[name] = heldSession{name: name, fd: fd, fromStore: true}
		k.stored[name] = nil
	}
	return found
}

// dupFile duplicates f's fd (close-on-exec) without changing its
// blocking mode (os.File.Fd would).
func dupFile(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}

// endStoredSessions ends the FUSE sessions the fd store passed to a
// gateway started without --fuse-resume: their fds are closed and
// removed from the store, so their connections end (the mounts fail
// with ENOTCONN, as without the store).
func endStoredSessions(n *systemd.Notifier, files []*os.File, log *slog.Logger) {
	for _, f := range files {
		log.Warn("the fd store passed a FUSE session, but --fuse-resume is off: the mount ends", "name", f.Name())
		f.Close()
		if err := n.RemoveFDs(f.Name()); err != nil {
			log.Warn("fd store: removing a FUSE session's fd", "name", f.Name(), "err", err)
		}
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
