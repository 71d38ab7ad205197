// Copyright 2026 the Go-FUSE Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

// Sluice patch (see PATCHES.md): the bridge's kernel-facing tables
// (node IDs with their lookup counts, the tree's names, open file
// handles) exported from one bridge and restored into a fresh one, so
// that a FUSE session handed to another Server (fuse.Server.Detach,
// fuse.NewServerSession) is answered for the node IDs and file handles
// the kernel already holds.

package fs

import (
	"errors"
	"fmt"
	"sort"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// SessionNode is one node the kernel holds a node ID for.
type SessionNode struct {
	NodeID  uint64
	Attr    StableAttr
	Lookups uint64        // the kernel's lookup count (FORGET subtracts from it)
	Links   []SessionLink // its names in the tree, newest first
}

// SessionLink is one name of a node: in the directory with node ID
// Parent.
type SessionLink struct {
	Parent uint64
	Name   string
}

// SessionFile is one open file handle the kernel holds.
type SessionFile struct {
	Fh     uint32
	NodeID uint64
	Flags  uint32 // the flags the handle was registered with (OPEN's, or 0 for OPENDIR)
	Dir    bool   // opened with OPENDIR
}

// SessionTable is what a bridge must know to answer a FUSE connection
// that another bridge has served.
type SessionTable struct {
	Nodes        []SessionNode // sorted by node ID; includes the root (node ID 1)
	Files        []SessionFile // sorted by Fh
	NextNodeID   uint64
	AutomaticIno uint64
}

// errNotBridge is returned for a RawFileSystem not made by NewNodeFS.
var errNotBridge = errors.New("fs: not a node file system made by NewNodeFS")

// ExportSession returns raw's tables. raw must be made by NewNodeFS and
// must not be serving requests (its server detached: fuse.Server.Detach).
// Nodes using passthrough backing files cannot be exported.
func ExportSession(raw fuse.RawFileSystem) (*SessionTable, error) {
	b, ok := raw.(*rawBridge)
	if !ok {
		return nil, errNotBridge
	}
	type reg struct {
		id      uint64
		inode   *Inode
		lookups uint64
	}
	t := &b.ids
	t.mu.Lock()
	regs := make([]reg, 0, len(t.nodes))
	for id, e := range t.nodes {
		if e.backingID != 0 {
			t.mu.Unlock()
			return nil, fmt.Errorf("fs: node %d uses a passthrough backing file, which cannot be handed over", id)
		}
		regs = append(regs, reg{id, e.inode.Load(), e.lookupCount})
	}
	st := &SessionTable{NextNodeID: t.nextNodeId, AutomaticIno: t.automaticIno}
	for i, fe := range t.files {
		if i == 0 || fe == nil {
			continue
		}
		st.Files = append(st.Files, SessionFile{Fh: fe.fh, NodeID: fe.inode.nodeId, Flags: fe.flags, Dir: fe.inode.IsDir()})
	}
	for _, fe := range t.legacy { // Sluice patch: resume.go
		st.Files = append(st.Files, SessionFile{Fh: fe.fh, NodeID: fe.inode.nodeId, Flags: fe.flags, Dir: fe.inode.IsDir()})
	}
	t.mu.Unlock()
	sort.Slice(st.Files, func(i, j int) bool { return st.Files[i].Fh < st.Files[j].Fh })
	sort.Slice(regs, func(i, j int) bool { return regs[i].id < regs[j].id })
	for _, r := range regs {
		sn := SessionNode{NodeID: r.id, Attr: r.inode.stableAttr, Lookups: r.lookups}
		r.inode.mu.Lock()
		for _, p := range r.inode.parents.all() {
			sn.Links = append(sn.Links, SessionLink{Parent: p.parent.nodeId, Name: p.name})
		}
		r.inode.mu.Unlock()
		st.Nodes = append(st.Nodes, sn)
	}
	return st, nil
}

// RestoreSession fills raw, a bridge fresh from NewNodeFS whose server
// has not served a request yet, with st (ExportSession's, from another
// bridge over the same file system). newNode makes the InodeEmbedder for
// a node other than the root; it may return one already in the tree
// (a persistent node the root's OnAdd made), which must have the
// node's node ID and StableAttr. newFile makes the FileHandle of an open
// handle, for the node's InodeEmbedder. A link to a node that is not in
// st is dropped (the node then has no name in the tree, as a node the
// kernel reached by node ID alone).
func RestoreSession(raw fuse.RawFileSystem, st *SessionTable,
	newNode func(SessionNode) (InodeEmbedder, error),
	newFile func(InodeEmbedder, SessionFile) (FileHandle, error)) error {
	b, ok := raw.(*rawBridge)
	if !ok {
		return errNotBridge
	}
	byID, err := b.restoreNodes(st, newNode)
	if err != nil {
		return err
	}
	for _, sn := range st.Nodes {
		child := byID[sn.NodeID]
		// Oldest link first, so that the newest ends as the newest.
		for i := len(sn.Links) - 1; i >= 0; i-- {
			l := sn.Links[i]
			parent := byID[l.Parent]
			if parent == nil || l.Name == "" || l.Name == "." || l.Name == ".." {
				continue
			}
			if !parent.IsDir() {
				return fmt.Errorf("fs: node %d is linked into node %d, not a directory", sn.NodeID, l.Parent)
			}
			lockNodes(parent, child)
			parent.setEntry(l.Name, child)
			unlockNodes(parent, child)
		}
	}
	return b.restoreFiles(st, byID, newFile)
}

func (b *rawBridge) restoreNodes(st *SessionTable, newNode func(SessionNode) (InodeEmbedder, error)) (map[uint64]*Inode, error) {
	t := &b.ids
	byID := map[uint64]*Inode{1: b.root}
	for _, sn := range st.Nodes {
		if sn.NodeID == 1 {
			t.mu.Lock()
			t.nodes[1].lookupCount = sn.Lookups
			t.mu.Unlock()
			continue
		}
		if sn.NodeID == 0 || byID[sn.NodeID] != nil || sn.Attr.Reserved() {
			return nil, fmt.Errorf("fs: bad or repeated node ID %d", sn.NodeID)
		}
		if t.externalNodeID && sn.NodeID != sn.Attr.Ino {
			return nil, fmt.Errorf("fs: node ID %d is not its inode number %d (ExternalNodeID)", sn.NodeID, sn.Attr.Ino)
		}
		ops, err := newNode(sn)
		if err != nil {
			return nil, err
		}
		n := ops.embed()
		if n.bridge == nil {
			initInode(n, ops, sn.Attr, b, false, sn.NodeID)
		} else if n.bridge != b || n.nodeId != sn.NodeID || n.stableAttr != sn.Attr {
			return nil, fmt.Errorf("fs: node %d: the node given is another one (node ID %d, %v)", sn.NodeID, n.nodeId, n.stableAttr)
		}
		n.mu.Lock()
		n.hasKernelRef = sn.Lookups > 0
		n.changeCounter++
		n.mu.Unlock()
		e := &nodeEntry{lookupCount: sn.Lookups}
		e.inode.Store(n)
		t.mu.Lock()
		t.nodes[sn.NodeID] = e
		t.stableAttrs[t.dedupKey(sn.Attr)] = n
		t.nodeCountHigh = max(t.nodeCountHigh, len(t.nodes))
		t.mu.Unlock()
		byID[sn.NodeID] = n
	}
	t.mu.Lock()
	t.nextNodeId = max(t.nextNodeId, st.NextNodeID)
	t.automaticIno = max(t.automaticIno, st.AutomaticIno)
	t.mu.Unlock()
	return byID, nil
}

func (b *rawBridge) restoreFiles(st *SessionTable, byID map[uint64]*Inode, newFile func(InodeEmbedder, SessionFile) (FileHandle, error)) error {
	t := &b.ids
	for _, sf := range st.Files {
		n := byID[sf.NodeID]
		if n == nil {
			return fmt.Errorf("fs: file handle %d is open on node %d, which is not in the table", sf.Fh, sf.NodeID)
		}
		if sf.Fh == 0 {
			return fmt.Errorf("fs: bad file handle %d", sf.Fh)
		}
		f, err := newFile(n.ops, sf)
		if err != nil {
			return err
		}
		t.mu.Lock()
		if t.fileAt(uint64(sf.Fh)) != nil {
			t.mu.Unlock()
			return fmt.Errorf("fs: repeated file handle %d", sf.Fh)
		}
		e := t.nodes[sf.NodeID]
		fe := &fileEntry{fh: sf.Fh, file: f, inode: n, flags: sf.Flags, nodeIndex: len(e.openFiles)}
		if _, ok := f.(FileReaddirenter); ok {
			fe.lastRead = dirEntryPool.Get().([]fuse.DirEntry)
		}
		if sf.Fh > t.fhBase && sf.Fh-t.fhBase < 1<<24 {
			idx := sf.Fh - t.fhBase
			for uint32(len(t.files)) <= idx {
				t.files = append(t.files, nil)
			}
			t.files[idx] = fe
		} else {
			// Sluice patch: a handle of a process before a crash
			// resume (resume.go).
			if t.legacy == nil {
				t.legacy = map[uint32]*fileEntry{}
			}
			t.legacy[sf.Fh] = fe
		}
		e.openFiles = append(e.openFiles, sf.Fh)
		t.mu.Unlock()
	}
	t.mu.Lock()
	t.freeFiles = t.freeFiles[:0]
	for idx := len(t.files) - 1; idx > 0; idx-- {
		if t.files[idx] == nil {
			t.freeFiles = append(t.freeFiles, uint32(idx))
		}
	}
	t.mu.Unlock()
	return nil
}
