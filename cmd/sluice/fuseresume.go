package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/internal/fdholder"
	"github.com/sluice-storage/sluice/internal/handover"
	"github.com/sluice-storage/sluice/internal/systemd"
)

// Crash resume of FUSE mounts (--fuse-resume, docs/HANDOVER.md "Crash
// resume"): each mount's /dev/fuse fd is put in systemd's fd store when
// the gateway runs under systemd and the store has room (fusestore.go),
// in the fd holder (a process of its own, `sluice fd-holder`) otherwise,
// and what its INIT negotiated in a session record, DATA-DIR/fuse-sessions/fuse-N.json (N: the
// connection's number, the minor of the mount's st_dev). A gateway
// started on the data directory after a crash finds both and resumes the
// mount (fuse.Manager.Resume).

const sessionDir = "fuse-sessions"

// sessionRecord is a kept mount's record.
type sessionRecord struct {
	Volume     string            `json:"volume"`
	Dir        string            `json:"dir"`
	ReadOnly   bool              `json:"read_only"`
	Init       handover.FUSEInit `json:"init"`
	Negotiated uint64            `json:"negotiated"`
	Epoch      uint32            `json:"epoch"` // resumes so far
	Dev        uint64            `json:"dev"`
}

func sessionName(dev uint64) string { return fmt.Sprintf("fuse-%d", unix.Minor(dev)) }

// keeper is fuse.Keeper for --fuse-resume. A mount's fd goes to the
// service manager's fd store when it has room (fusestore.go), to the fd
// holder otherwise.
type keeper struct {
	dataDir string
	log     *slog.Logger
	mu      sync.Mutex
	cl      *fdholder.Client // started at the first Keep that needs it
	// kept: the mount whose fd this process put in the holder, by name
	// (a later mount of the same connection number is another owner).
	kept map[string]*fuse.Mount
	// notify is the service manager (nil: none), told to remove the
	// stored fds of sessions that end. storeOn: FUSE fds go to its fd
	// store, storeRoom of them at most. stored: what is in the store, by
	// name (a nil owner: taken from the store at start-up, not yet
	// claimed by its resumed mount).
	notify    *systemd.Notifier
	storeOn   bool
	storeRoom int
	stored    map[string]*fuse.Mount
	// checkFD checks a kept fd found at start-up (liveFUSE).
	checkFD func(fd int) error
}

func newKeeper(dataDir string, log *slog.Logger) *keeper {
	return &keeper{dataDir: dataDir, log: log, kept: map[string]*fuse.Mount{}, stored: map[string]*fuse.Mount{}, checkFD: liveFUSE}
}

func (k *keeper) holderPath() string { return filepath.Join(k.dataDir, fdholder.SocketName) }

func (k *keeper) recordPath(name string) string {
	return filepath.Join(k.dataDir, sessionDir, name+".json")
}

// client connects to the holder, starting it if none runs (k.mu held).
func (k *keeper) client() (*fdholder.Client, error) {
	if k.cl != nil {
		return k.cl, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cl, err := fdholder.Start(k.holderPath(), filepath.Join(k.dataDir, "fdholder.log"), exe, "fd-holder", "--socket", k.holderPath())
	if err != nil {
		return nil, err
	}
	k.cl = cl
	return cl, nil
}

// Keep writes the mount's record, then keeps its fd: in the fd store if
// it has room, in the holder otherwise.
func (k *keeper) Keep(m *fuse.Mount) error {
	s := m.Session()
	rec := sessionRecord{Volume: m.Volume, Dir: m.Dir, ReadOnly: m.AskedReadOnly(), Epoch: m.Epoch, Dev: m.Dev,
		Init: handover.FUSEInit{Major: s.Kernel.Major, Minor: s.Kernel.Minor, MaxReadAhead: s.Kernel.MaxReadAhead,
			Flags: s.Kernel.Flags, Flags2: s.Kernel.Flags2}, Negotiated: s.Negotiated}
	name := sessionName(m.Dev)
	if err := k.writeRecord(name, rec); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.storeFD(m, name, m.DupFD) {
		return nil
	}
	fd, err := m.DupFD()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	cl, err := k.client()
	if err != nil {
		return err
	}
	if err := cl.Put(name, fd); err != nil {
		return err
	}
	k.kept[name] = m
	return nil
}

// Drop removes the mount's fd from the fd store or the holder, and its
// record; nothing if another mount of the same connection number has
// taken the name since.
func (k *keeper) Drop(m *fuse.Mount) {
	name := sessionName(m.Dev)
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.stored[name] == m && m != nil:
		k.unstore(name)
	case k.kept[name] == m && m != nil:
		delete(k.kept, name)
		if err := k.cl.Remove(name); err != nil {
			k.log.Warn("crash resume: removing a mount's fd from the holder", "name", name, "err", err)
		}
	default:
		return
	}
	os.Remove(k.recordPath(name))
}

// close ends the connection to the holder (it keeps what it holds, and
// exits once nothing is held and no gateway is connected).
func (k *keeper) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cl != nil {
		k.cl.Close()
		k.cl = nil
	}
}

func (k *keeper) writeRecord(name string, rec sessionRecord) error {
	dir := filepath.Join(k.dataDir, sessionDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name+".json"))
}

func (k *keeper) readRecord(name string) (sessionRecord, error) {
	var rec sessionRecord
	b, err := os.ReadFile(k.recordPath(name))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, err
	}
	if rec.Volume == "" || !filepath.IsAbs(rec.Dir) || rec.Init.Major == 0 {
		return rec, fmt.Errorf("session record %s: incomplete", name)
	}
	return rec, nil
}

// heldSession is a mount found at start-up: its fd, from the fd store
// (fromStore) or the holder, and its record.
type heldSession struct {
	name      string
	fd        int
	rec       sessionRecord
	fromStore bool
}

// findHeld lists the sessions kept from a gateway that died (before the
// store opens: their volumes keep every orphan): fromStore, the fds the
// fd store passed (named fuse-N; findHeld owns them), and the holder's. A
// kept fd without a record, or whose directory no longer has that
// connection mounted, ends: it is closed and removed from where it was
// kept, with its record. Records no fd came with are removed. An error
// (the holder does not answer) comes with the fd store's sessions.
func (k *keeper) findHeld(fromStore []*os.File) ([]heldSession, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	found := k.takeStored(fromStore)
	herr := k.listHolder(found)
	names := slices.Sorted(maps.Keys(found))
	var out []heldSession
	for _, name := range names {
		h := found[name]
		err := k.checkFD(h.fd)
		var rec sessionRecord
		if err == nil {
			rec, err = k.readRecord(name)
		}
		if err == nil {
			err = sameConnection(rec)
		}
		if err != nil {
			k.log.Warn("crash resume: a kept FUSE session cannot be resumed; it ends", "name", name, "fd_store", h.fromStore, "err", err)
			unix.Close(h.fd)
			k.forget(h)
			continue
		}
		h.rec = rec
		out = append(out, h)
	}
	if herr != nil {
		return out, herr
	}
	k.removeStrayRecords(found)
	return out, nil
}

// listHolder adds the holder's sessions to found (none when no holder
// runs). A name the fd store passed too is taken from the store, and the
// holder's copy is removed. k.mu held.
func (k *keeper) listHolder(found map[string]heldSession) error {
	cl, err := fdholder.Dial(k.holderPath())
	if err != nil {
		if fdholder.IsAbsent(err) {
			return nil
		}
		return err
	}
	k.cl = cl
	fds, err := cl.List()
	if err != nil {
		return err
	}
	for name, fd := range fds {
		if _, dup := found[name]; dup {
			k.log.Warn("crash resume: a FUSE session is both in the fd store and in the fd holder; the fd store's is used", "name", name)
			unix.Close(fd)
			cl.Remove(name)
			continue
		}
		found[name] = heldSession{name: name, fd: fd}
	}
	return nil
}

// removeStrayRecords removes the session records no kept fd came with
// (mounts that ended with their gateway, or whose fd was never kept).
func (k *keeper) removeStrayRecords(found map[string]heldSession) {
	dir := filepath.Join(k.dataDir, sessionDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if _, held := found[name]; ok && held {
			continue
		}
		os.Remove(filepath.Join(dir, e.Name()))
	}
}

// forget ends a kept session found at start-up that is not resumed: its
// fd leaves the fd store or the holder, its record goes (k.mu held).
func (k *keeper) forget(h heldSession) {
	if h.fromStore {
		k.unstore(h.name)
	} else if k.cl != nil {
		k.cl.Remove(h.name)
	}
	os.Remove(k.recordPath(h.name))
}

// liveFUSE checks that fd is a /dev/fuse fd (a character device, misc
// minor 229) whose connection has not ended (poll reports no POLLERR, as
// for an aborted or unmounted connection; events 0: a pending request's
// POLLIN does not count). Which connection it is cannot be read from the
// fd: sameConnection checks the record's.
func liveFUSE(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(10, 229) {
		return errors.New("the fd is not /dev/fuse")
	}
	pfd := []unix.PollFd{{Fd: int32(fd)}}
	for {
		n, err := unix.Poll(pfd, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n > 0 && pfd[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return errors.New("its FUSE connection has ended")
		}
		return nil
	}
}

// sameConnection checks that rec's directory still has its connection
// mounted (statx without asking the server: the mount's st_dev).
func sameConnection(rec sessionRecord) error {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, rec.Dir, unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st); err != nil {
		return fmt.Errorf("statx %s: %w", rec.Dir, err)
	}
	if dev := unix.Mkdev(st.Dev_major, st.Dev_minor); dev != rec.Dev {
		return fmt.Errorf("%s is no longer the mount of that session (st_dev %d, was %d)", rec.Dir, dev, rec.Dev)
	}
	return nil
}

// keepOrphans: every orphan of the held sessions' volumes is kept
// (which inodes the kernel holds open is not known).
func keepAllOrphans(held []heldSession, into map[string]map[uint64]bool) map[string]map[uint64]bool {
	if len(held) == 0 {
		return into
	}
	if into == nil {
		into = map[string]map[uint64]bool{}
	}
	for _, h := range held {
		if into[h.rec.Volume] == nil {
			into[h.rec.Volume] = map[uint64]bool{}
		}
		into[h.rec.Volume][0] = true
	}
	return into
}

// resumeHeld serves the held sessions again; it returns the directories
// resumed. One that cannot be resumed ends (fuse.Manager.Resume).
func resumeHeld(ctx context.Context, mounts *fuse.Manager, k *keeper, held []heldSession) []string {
	var dirs []string
	for _, h := range held {
		r := h.rec
		st := &fuse.HandoverState{Volume: r.Volume, Dir: r.Dir, ReadOnly: r.ReadOnly,
			Session: gofuse.Session{Negotiated: r.Negotiated, Kernel: gofuse.InitIn{Major: r.Init.Major, Minor: r.Init.Minor,
				MaxReadAhead: r.Init.MaxReadAhead, Flags: r.Init.Flags, Flags2: r.Init.Flags2}}}
		if _, err := mounts.Resume(ctx, st, h.fd, r.Epoch+1); err != nil {
			k.log.Warn("crash resume: a FUSE mount could not be resumed; it ends", "volume", r.Volume, "dir", r.Dir, "err", err)
			k.mu.Lock()
			k.forget(h)
			k.mu.Unlock()
			continue
		}
		dirs = append(dirs, r.Dir)
	}
	return dirs
}

// epochOf is the resume count of the session at dir (0 without a
// record): a takeover's new process goes on in the same handle range.
func (k *keeper) epochOf(dev uint64) uint32 {
	rec, err := k.readRecord(sessionName(dev))
	if err != nil {
		return 0
	}
	return rec.Epoch
}

// fdHolderCommand is `sluice fd-holder`, started by the gateway.
func fdHolderCommand() *cli.Command {
	var socket string
	return &cli.Command{
		Name:   "fd-holder",
		Usage:  "hold the gateway's FUSE fds across a crash (started by `sluice gateway --fuse-resume`; not for direct use)",
		Hidden: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Destination: &socket, Usage: "`PATH` of the holder's socket"},
		},
		Action: func(c *cli.Context) error {
			if err := requireFlag(c, "socket"); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pid", os.Getpid())
			l, err := fdholder.Listen(socket)
			if err != nil {
				return &exitError{exitStartup, err}
			}
			err = fdholder.Serve(context.Background(), l, time.Minute, log)
			if err != nil && !errors.Is(err, context.Canceled) {
				return &exitError{exitFailed, err}
			}
			return nil
		},
	}
}
