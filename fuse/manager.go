package fuse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// Manager keeps a gateway's mounts: at most one per directory, each
// unmounted on Close. Mounts do not outlive the gateway process, except
// by a planned handover (DetachAll, Adopt), which moves them to the
// process that takes over.
type Manager struct {
	g   *gateway.Gateway
	log *slog.Logger

	mu     sync.Mutex
	mounts map[string]*entry // by absolute directory
	closed bool
	keeper Keeper // nil: mounts end with the process (SetKeeper)
}

// Keeper keeps what a crash resume needs of a mount outside the
// process (the /dev/fuse fd in the fd holder, the INIT settings in the
// data directory): Keep when a mount is made, adopted or resumed, Drop
// when it ends (not when it is detached for a planned handover: the
// next process goes on with it).
type Keeper interface {
	Keep(m *Mount) error
	Drop(m *Mount)
}

// SetKeeper makes the manager tell k about its mounts (before the first
// mount).
func (mg *Manager) SetKeeper(k Keeper) {
	mg.mu.Lock()
	mg.keeper = k
	mg.mu.Unlock()
}

type entry struct {
	m        *Mount
	readOnly bool
	kind     string
}

// MountInfo describes one live mount.
type MountInfo struct {
	Volume   string `json:"volume"`
	Dir      string `json:"dir"`
	Kind     string `json:"kind"`
	ReadOnly bool   `json:"read_only"`
}

// NewManager returns an empty Manager for g.
func NewManager(g *gateway.Gateway, log *slog.Logger) *Manager {
	return &Manager{g: g, log: log, mounts: make(map[string]*entry)}
}

// Mount mounts volume ref at dir.
func (mg *Manager) Mount(ctx context.Context, ref, dir string, readOnly bool) (MountInfo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return MountInfo{}, fmt.Errorf("mount point %q: %w", dir, gateway.ErrInvalid)
	}
	vol, err := mg.g.Volume(ref)
	if err != nil {
		return MountInfo{}, err
	}
	mg.mu.Lock()
	defer mg.mu.Unlock()
	if mg.closed {
		return MountInfo{}, gateway.ErrClosed
	}
	if e := mg.mounts[abs]; e != nil {
		return MountInfo{}, fmt.Errorf("%s already has %s mounted: %w", abs, e.m.Volume, gateway.ErrExists)
	}
	m, err := MountVolume(ctx, vol, abs, Options{ReadOnly: readOnly, Logger: mg.log})
	if err != nil {
		return MountInfo{}, err
	}
	e := mg.add(abs, m, vol)
	mg.log.Info("mounted", "volume", ref, "dir", abs, "read_only", e.readOnly)
	return e.info(), nil
}

// add keeps m (mg.mu held).
func (mg *Manager) add(abs string, m *Mount, vol *gateway.Volume) *entry {
	e := &entry{m: m, readOnly: m.ReadOnly(), kind: vol.Kind()}
	mg.mounts[abs] = e
	if mg.keeper != nil {
		if err := mg.keeper.Keep(m); err != nil {
			mg.log.Warn("crash resume: the mount's session is not kept; it ends if the gateway crashes", "dir", abs, "err", err)
		}
	}
	k := mg.keeper
	go func() {
		// Forget mounts that go away behind our back (umount(8)), or
		// are detached for a handover.
		m.Wait()
		mg.mu.Lock()
		if mg.mounts[abs] == e {
			delete(mg.mounts, abs)
		}
		mg.mu.Unlock()
		if k != nil && !m.detaching.Load() {
			k.Drop(m)
		}
	}()
	return e
}

// Detached is a mount stopped for a handover (Mount.Detach): its
// /dev/fuse fd, owned by the holder, and the state to adopt it with.
type Detached struct {
	FD    int
	State *HandoverState
}

// DetachAll stops every mount for a handover (Mount.Detach) and forgets
// it. A mount that cannot be detached is logged and left for Close
// (which unmounts it); one whose requests do not finish before ctx ends
// is aborted (Mount.Detach). It runs after the shim door has closed the
// files it held on the mounts: a close may wait for the mount's answer.
func (mg *Manager) DetachAll(ctx context.Context) []Detached {
	mg.mu.Lock()
	es := make(map[string]*entry, len(mg.mounts))
	for abs, e := range mg.mounts {
		es[abs] = e
	}
	mg.mu.Unlock()
	var out []Detached
	for abs, e := range es {
		fd, st, err := e.m.Detach(ctx)
		if err != nil {
			mg.log.Error("handover: a mount could not be detached; it ends", "volume", e.m.Volume, "dir", abs, "err", err)
			if ctx.Err() != nil {
				// Aborted (Mount.Detach): nothing is left to unmount.
				mg.mu.Lock()
				delete(mg.mounts, abs)
				mg.mu.Unlock()
			}
			continue
		}
		mg.mu.Lock()
		delete(mg.mounts, abs)
		mg.mu.Unlock()
		out = append(out, Detached{FD: fd, State: st})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].State.Dir < out[j].State.Dir })
	return out
}

// Adopt serves a mount the gateway this one took over detached
// (DetachAll, Adopt): fd is its /dev/fuse fd, which Adopt owns. If it
// cannot be adopted (the volume is gone, the directory has a mount of
// this gateway), the session ends: what waits on it fails.
func (mg *Manager) Adopt(ctx context.Context, st *HandoverState, fd int) (MountInfo, error) {
	return mg.adopt(ctx, st, fd, 0)
}

func (mg *Manager) adopt(ctx context.Context, st *HandoverState, fd int, epoch uint32) (MountInfo, error) {
	fail := func(err error) (MountInfo, error) {
		unix.Close(fd)
		unix.Unmount(st.Dir, unix.MNT_DETACH)
		return MountInfo{}, err
	}
	vol, err := mg.g.Volume(st.Volume)
	if err != nil {
		return fail(err)
	}
	mg.mu.Lock()
	defer mg.mu.Unlock()
	if mg.closed {
		return fail(gateway.ErrClosed)
	}
	if e := mg.mounts[st.Dir]; e != nil {
		return fail(fmt.Errorf("%s already has %s mounted: %w", st.Dir, e.m.Volume, gateway.ErrExists))
	}
	var m *Mount
	if epoch > 0 {
		m, err = Resume(ctx, vol, st, fd, epoch, Options{Logger: mg.log})
	} else {
		m, err = Adopt(ctx, vol, st, fd, Options{Logger: mg.log})
	}
	if err != nil {
		return MountInfo{}, err
	}
	e := mg.add(st.Dir, m, vol)
	if epoch > 0 {
		mg.log.Info("mount resumed after a crash", "volume", st.Volume, "dir", st.Dir, "read_only", e.readOnly, "epoch", epoch)
	} else {
		mg.log.Info("mount taken over", "volume", st.Volume, "dir", st.Dir, "read_only", e.readOnly,
			"nodes", len(st.Table.Nodes), "open_handles", len(st.Table.Files))
	}
	return e.info(), nil
}

// Resume serves a mount whose gateway died (fuse.Resume): fd is its
// /dev/fuse fd, which Resume owns; epoch counts the resumes of its
// session, this one included. If it cannot be resumed the session ends
// as for Adopt.
func (mg *Manager) Resume(ctx context.Context, st *HandoverState, fd int, epoch uint32) (MountInfo, error) {
	return mg.adopt(ctx, st, fd, epoch)
}

func (e *entry) info() MountInfo {
	return MountInfo{Volume: e.m.Volume, Dir: e.m.Dir, Kind: e.kind, ReadOnly: e.readOnly}
}

// Unmount unmounts dir; it fails while files on it are in use.
func (mg *Manager) Unmount(ctx context.Context, dir string) error {
	e, abs, err := mg.entryAt(dir)
	if err != nil {
		return err
	}
	if err := e.m.Unmount(); err != nil {
		return fmt.Errorf("unmount %s: %w (files still open?)", abs, busyOr(err))
	}
	e.m.Wait()
	mg.drop(e.m)
	mg.log.Info("unmounted", "volume", e.m.Volume, "dir", abs)
	return nil
}

// busyOr maps an unmount refused because the mount is in use (EBUSY from
// umount2, or fusermount's "Device or resource busy") to ErrInvalid: the
// caller's mistake, not the gateway's failure.
func busyOr(err error) error {
	if errors.Is(err, unix.EBUSY) || strings.Contains(err.Error(), "busy") {
		return fmt.Errorf("%w: device busy", gateway.ErrInvalid)
	}
	return err
}

// Mounts lists the live mounts by directory.
func (mg *Manager) Mounts() []MountInfo {
	mg.mu.Lock()
	defer mg.mu.Unlock()
	out := make([]MountInfo, 0, len(mg.mounts))
	for _, e := range mg.mounts {
		out = append(out, e.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir < out[j].Dir })
	return out
}

// MountedAt returns the mount at dir, if any.
func (mg *Manager) MountedAt(dir string) (MountInfo, bool) {
	abs, _ := filepath.Abs(dir)
	mg.mu.Lock()
	defer mg.mu.Unlock()
	if e := mg.mounts[abs]; e != nil {
		return e.info(), true
	}
	return MountInfo{}, false
}

// ByDevice returns the live fs mount whose device number is dev (the
// st_dev of a file on it): the shim door's check that a file it is handed
// is one of this gateway's. Block volumes' image mounts are not returned.
func (mg *Manager) ByDevice(dev uint64) (*Mount, bool) {
	mg.mu.Lock()
	defer mg.mu.Unlock()
	for _, e := range mg.mounts {
		if e.m.Dev == dev && e.kind == gateway.KindFS {
			return e.m, true
		}
	}
	return nil, false
}

// ImageResized makes the kernel take the new size of the block volume
// mounted at dir (Mount.ImageResized).
func (mg *Manager) ImageResized(dir string) error {
	e, _, err := mg.entryAt(dir)
	if err != nil {
		return err
	}
	return e.m.ImageResized()
}

// entryAt finds the mount at dir (and returns dir made absolute).
func (mg *Manager) entryAt(dir string) (*entry, string, error) {
	abs, _ := filepath.Abs(dir)
	mg.mu.Lock()
	e := mg.mounts[abs]
	mg.mu.Unlock()
	if e == nil {
		return nil, abs, fmt.Errorf("no sluice mount at %s: %w", abs, gateway.ErrNotFound)
	}
	return e, abs, nil
}

// Close unmounts everything (lazily if busy: the kernel detaches the mount
// once the last user is gone, and IO on it fails from now on).
func (mg *Manager) Close() {
	mg.mu.Lock()
	mg.closed = true
	es := make([]*entry, 0, len(mg.mounts))
	for _, e := range mg.mounts {
		es = append(es, e)
	}
	mg.mu.Unlock()
	for _, e := range es {
		if err := e.m.Unmount(); err != nil {
			mg.log.Error("abandoning a mount that is still in use: it is detached lazily, and IO on the files open on it fails from now on; "+
				"close them and `sluice umount` before stopping the gateway", "volume", e.m.Volume, "dir", e.m.Dir, "err", err)
			unix.Unmount(e.m.Dir, unix.MNT_DETACH)
		}
		// The held fd goes too: a mount detached lazily must end when
		// this process does, not wait for a gateway that is not coming.
		mg.drop(e.m)
	}
}

// drop tells the keeper a mount ended (also done when its server ends;
// Keeper.Drop is idempotent).
func (mg *Manager) drop(m *Mount) {
	mg.mu.Lock()
	k := mg.keeper
	mg.mu.Unlock()
	if k != nil {
		k.Drop(m)
	}
}
