package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/internal/handover"
)

// partBytes bounds one fuse_table message's JSON (the protocol's
// messages are at most 64 KiB).
const partBytes = 48 << 10

// handedFUSE is one FUSE mount the old process handed over: its
// /dev/fuse fd (owned until adopted) and state.
type handedFUSE struct {
	fd    int
	state *fuse.HandoverState
}

// sendFUSE sends one detached mount: a fuse_mount message with its
// /dev/fuse fd, then its tables in parts.
func sendFUSE(c *handover.Conn, d fuse.Detached) error {
	st := d.State
	k := st.Session.Kernel
	parts, err := tableParts(st.Table, st.CrashEIO)
	if err != nil {
		return err
	}
	m := handover.Message{Type: handover.TypeFUSE, FUSE: &handover.FUSEMount{Volume: st.Volume, Dir: st.Dir, ReadOnly: st.ReadOnly,
		Init:       handover.FUSEInit{Major: k.Major, Minor: k.Minor, MaxReadAhead: k.MaxReadAhead, Flags: k.Flags, Flags2: k.Flags2},
		Negotiated: st.Session.Negotiated, NextNodeID: st.Table.NextNodeID, AutomaticIno: st.Table.AutomaticIno, Parts: len(parts)}}
	if err := c.SendFDs(m, d.FD); err != nil {
		return err
	}
	for _, p := range parts {
		if err := c.Send(handover.Message{Type: handover.TypeTable, Table: p}); err != nil {
			return err
		}
	}
	return nil
}

// tableParts cuts a mount's tables into messages of at most partBytes;
// the handles in crashEIO (sorted) are sent with eio set.
func tableParts(t *fs.SessionTable, crashEIO []uint32) ([]*handover.FUSETable, error) {
	var parts []*handover.FUSETable
	cur, size := &handover.FUSETable{}, 0
	add := func(n int) {
		if size+n > partBytes && size > 0 {
			parts = append(parts, cur)
			cur, size = &handover.FUSETable{}, 0
		}
		size += n
	}
	for _, sn := range t.Nodes {
		wn := handover.FUSENode{ID: sn.NodeID, Mode: sn.Attr.Mode, Ino: sn.Attr.Ino, Gen: sn.Attr.Gen, Lookups: sn.Lookups}
		for i, l := range sn.Links {
			if i == handover.MaxFUSELinks {
				break // the newest names; the others only label paths
			}
			wn.Links = append(wn.Links, handover.FUSELink{P: l.Parent, N: l.Name})
		}
		b, err := json.Marshal(wn)
		if err != nil {
			return nil, err
		}
		add(len(b) + 1)
		cur.Nodes = append(cur.Nodes, wn)
	}
	for _, sf := range t.Files {
		add(64)
		_, eio := slices.BinarySearch(crashEIO, sf.Fh)
		cur.Files = append(cur.Files, handover.FUSEFile{Fh: sf.Fh, Node: sf.NodeID, Flags: sf.Flags, Dir: sf.Dir, EIO: eio})
	}
	if size > 0 {
		parts = append(parts, cur)
	}
	return parts, nil
}

// recvFUSE receives one fuse_mount message with its fd and its parts.
func recvFUSE(c *handover.Conn) (handedFUSE, error) {
	m, fds, err := c.Recv()
	if err != nil || m.Type != handover.TypeFUSE || len(fds) != 1 {
		closeFDs(fds)
		return handedFUSE{}, fmt.Errorf("expected a FUSE mount with its /dev/fuse fd, got %q with %d fds: %v", m.Type, len(fds), err)
	}
	fm := m.FUSE
	st := &fuse.HandoverState{Volume: fm.Volume, Dir: fm.Dir, ReadOnly: fm.ReadOnly,
		Session: gofuse.Session{Negotiated: fm.Negotiated, Kernel: gofuse.InitIn{Major: fm.Init.Major, Minor: fm.Init.Minor,
			MaxReadAhead: fm.Init.MaxReadAhead, Flags: fm.Init.Flags, Flags2: fm.Init.Flags2}},
		Table: &fs.SessionTable{NextNodeID: fm.NextNodeID, AutomaticIno: fm.AutomaticIno}}
	h := handedFUSE{fds[0], st}
	for i := 0; i < fm.Parts; i++ {
		p, fds, err := c.Recv()
		closeFDs(fds)
		if err != nil || p.Type != handover.TypeTable {
			h.end()
			return handedFUSE{}, fmt.Errorf("expected part %d of %d of the tables of %s, got %q: %v", i+1, fm.Parts, fm.Dir, p.Type, err)
		}
		for _, n := range p.Table.Nodes {
			sn := fs.SessionNode{NodeID: n.ID, Attr: fs.StableAttr{Mode: n.Mode, Ino: n.Ino, Gen: n.Gen}, Lookups: n.Lookups}
			for _, l := range n.Links {
				sn.Links = append(sn.Links, fs.SessionLink{Parent: l.P, Name: l.N})
			}
			st.Table.Nodes = append(st.Table.Nodes, sn)
		}
		for _, f := range p.Table.Files {
			st.Table.Files = append(st.Table.Files, fs.SessionFile{Fh: f.Fh, NodeID: f.Node, Flags: f.Flags, Dir: f.Dir})
			if f.EIO {
				st.CrashEIO = append(st.CrashEIO, f.Fh)
			}
		}
	}
	slices.Sort(st.CrashEIO)
	return h, nil
}

// end gives up a handed-over mount: its fd closes (the kernel fails what
// waits on it) and the directory is unmounted lazily.
func (h handedFUSE) end() {
	unix.Close(h.fd)
	unix.Unmount(h.state.Dir, unix.MNT_DETACH)
}

// setEpochs gives each handed-over mount its session's resume count
// (from its record: not part of the handover protocol), so that the new
// process hands out file handles in the same range as the old one.
func (t *takenOver) setEpochs(k *keeper) {
	for _, h := range t.fuse {
		var st unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, h.state.Dir, unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st); err == nil {
			h.state.Epoch = k.epochOf(unix.Mkdev(st.Dev_major, st.Dev_minor))
		}
	}
}

// closeFUSE ends the handed-over mounts not adopted.
func (t *takenOver) closeFUSE() {
	for _, h := range t.fuse {
		h.end()
	}
	t.fuse = nil
}

// adoptFUSE serves the handed-over FUSE mounts with the mount manager;
// it returns the directories adopted. One that cannot be adopted ends
// (logged).
func (t *takenOver) adoptFUSE(ctx context.Context, d *daemon) []string {
	var dirs []string
	for _, h := range t.fuse {
		if _, err := d.mounts.Adopt(ctx, h.state, h.fd); err != nil {
			d.log.Warn("takeover: a FUSE mount could not be adopted; it ends", "volume", h.state.Volume, "dir", h.state.Dir, "err", err)
			continue
		}
		dirs = append(dirs, h.state.Dir)
	}
	t.fuse = nil
	return dirs
}

// openInodes are the inodes the handed-over mounts hold open, by volume
// (node IDs of an fs volume's mount are its inode numbers).
func (t *takenOver) openInodes() map[string]map[uint64]bool {
	out := map[string]map[uint64]bool{}
	for _, h := range t.fuse {
		for _, f := range h.state.Table.Files {
			if out[h.state.Volume] == nil {
				out[h.state.Volume] = map[uint64]bool{}
			}
			out[h.state.Volume][f.NodeID] = true
		}
	}
	return out
}

// unmountedOf is what the old process ended rather than handed over:
// the mounts it had (before) that were not detached.
func unmountedOf(before []fuse.MountInfo, detached []fuse.Detached) []string {
	handed := map[string]bool{}
	for _, dt := range detached {
		handed[dt.State.Dir] = true
	}
	var out []string
	for _, m := range before {
		if !handed[m.Dir] {
			out = append(out, m.Dir)
		}
	}
	return out
}
