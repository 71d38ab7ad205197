package handover

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// Limits on the FUSE messages (state version 3).
const (
	// MaxFUSEMounts bounds the mounts one handover carries.
	MaxFUSEMounts = 4096
	// MaxFUSEParts bounds the fuse_table messages of one mount.
	MaxFUSEParts = 1 << 16
	// MaxFUSELinks bounds the names sent for one node (the sender drops
	// the oldest beyond it: a name only labels the node's path).
	MaxFUSELinks = 16
	maxName      = 255
)

// FUSEMount is a FUSE mount the old process stopped at a request
// boundary without unmounting it (fuse.Mount.Detach): its /dev/fuse fd
// rides with the fuse_mount message, and Parts fuse_table messages
// follow with the node IDs and file handles the kernel holds.
type FUSEMount struct {
	Volume   string `json:"volume"`
	Dir      string `json:"dir"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// What the kernel's INIT negotiated: its request's versions and
	// flags, and the flags the old process answered.
	Init       FUSEInit `json:"init"`
	Negotiated uint64   `json:"negotiated"`
	// go-fuse's counters (node IDs of a block volume's mount, automatic
	// inode numbers).
	NextNodeID   uint64 `json:"next_node_id"`
	AutomaticIno uint64 `json:"automatic_ino"`
	Parts        int    `json:"parts"`
}

// FUSEInit is the part of the kernel's INIT request a server uses.
type FUSEInit struct {
	Major        uint32 `json:"major"`
	Minor        uint32 `json:"minor"`
	MaxReadAhead uint32 `json:"max_readahead"`
	Flags        uint32 `json:"flags"`
	Flags2       uint32 `json:"flags2,omitempty"`
}

// FUSETable is one part of a mount's tables.
type FUSETable struct {
	Nodes []FUSENode `json:"nodes,omitempty"`
	Files []FUSEFile `json:"files,omitempty"`
}

// FUSENode is a node ID the kernel holds, with its lookup count and its
// names (newest first).
type FUSENode struct {
	ID      uint64     `json:"id"`
	Mode    uint32     `json:"mode,omitempty"` // file type bits
	Ino     uint64     `json:"ino"`
	Gen     uint64     `json:"gen,omitempty"`
	Lookups uint64     `json:"lookups"`
	Links   []FUSELink `json:"links,omitempty"`
}

// FUSELink is one name of a node in the directory with node ID P.
type FUSELink struct {
	P uint64 `json:"p"`
	N string `json:"n"`
}

// FUSEFile is an open file handle the kernel holds.
type FUSEFile struct {
	Fh    uint32 `json:"fh"`
	Node  uint64 `json:"node"`
	Flags uint32 `json:"flags,omitempty"`
	Dir   bool   `json:"dir,omitempty"`
	// EIO: opened before a crash of an earlier gateway and not told yet;
	// its next fsync reports EIO (docs/HANDOVER.md, unsynced writes).
	EIO bool `json:"eio,omitempty"`
}

func (f *FUSEMount) check() error {
	switch {
	case f == nil:
		return errors.New("no FUSE mount")
	case f.Volume == "" || len(f.Volume) > maxString:
		return errors.New("FUSE mount's volume empty or too long")
	case len(f.Dir) > maxString || !filepath.IsAbs(f.Dir) || filepath.Clean(f.Dir) != f.Dir:
		return fmt.Errorf("FUSE mount directory %q is not a clean absolute path", f.Dir)
	case f.Init.Major == 0:
		return errors.New("FUSE mount without its INIT settings")
	case f.Parts < 0 || f.Parts > MaxFUSEParts:
		return fmt.Errorf("FUSE mount in %d parts (at most %d)", f.Parts, MaxFUSEParts)
	}
	return nil
}

// normalize makes empty lists none (so a message encodes and parses to
// itself).
func (t *FUSETable) normalize() {
	if t == nil {
		return
	}
	if len(t.Nodes) == 0 {
		t.Nodes = nil
	}
	if len(t.Files) == 0 {
		t.Files = nil
	}
	for i := range t.Nodes {
		if len(t.Nodes[i].Links) == 0 {
			t.Nodes[i].Links = nil
		}
	}
}

func (t *FUSETable) check() error {
	if t == nil {
		return errors.New("no FUSE table")
	}
	for _, n := range t.Nodes {
		if n.ID == 0 {
			return errors.New("FUSE node ID 0")
		}
		if len(n.Links) > MaxFUSELinks {
			return fmt.Errorf("FUSE node %d with %d names (at most %d)", n.ID, len(n.Links), MaxFUSELinks)
		}
		for _, l := range n.Links {
			if l.P == 0 || l.N == "" || len(l.N) > maxName || l.N == "." || l.N == ".." || strings.ContainsAny(l.N, "/\x00") {
				return fmt.Errorf("FUSE node %d: bad name %q in %d", n.ID, l.N, l.P)
			}
		}
	}
	for _, f := range t.Files {
		if f.Fh == 0 || f.Node == 0 { // any uint32: a resumed session's handles are epoch<<24+index (fuse/resume.go)
			return fmt.Errorf("FUSE file handle %d on node %d", f.Fh, f.Node)
		}
	}
	return nil
}
