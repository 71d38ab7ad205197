// Copyright 2026 the Go-FUSE Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

// Sluice patch (see PATCHES.md): serving a FUSE session whose previous
// server died (a crash), without its node and handle tables. The kernel
// still holds node IDs and file handles the dead process handed out;
// a bridge with Options.Resume set asks the file system for a node ID
// it does not know (possible when node IDs mean something to the file
// system: ExternalNodeID) and makes a handle for a file handle number it
// does not know, instead of panicking.

package fs

import (
	"log"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// stickyLookups is the lookup count a node gets in a resumed bridge:
// the kernel's count is not known (part of it was granted by the dead
// process), so the bridge never lets a FORGET drop a node (a FORGET
// larger than the count drops it to zero, which only happens after
// about 2^62 lookups). The cost: nodes stay in the tables until the
// mount ends.
const stickyLookups = 1 << 62

// ResumeOptions make a bridge answer a session another process served
// and lost its tables with (a crash): Options.Resume.
type ResumeOptions struct {
	// FileHandleBase: the file handles this bridge hands out are
	// FileHandleBase+1, FileHandleBase+2, ...; a handle number outside
	// that range was handed out by an earlier process and is
	// materialised with File on first use. Each resume of a session
	// must use a range no earlier process used (the first process used
	// base 0).
	FileHandleBase uint32
	// Node returns the node for a node ID the bridge does not know and
	// its StableAttr (Ino must be the node ID under ExternalNodeID). It
	// may return a node already in the tree (its node ID must be
	// nodeID). It must not fail: a node that no longer exists is a node
	// whose operations fail (ESTALE, say).
	Node func(nodeID uint64) (InodeEmbedder, StableAttr)
	// File returns the handle for handle number fh, which the bridge
	// does not know, open on node (dir: the node is a directory, so the
	// handle was made by OPENDIR). It must not fail: a file that cannot
	// be opened again is a handle whose operations fail. A RELEASE of an
	// unknown handle is answered without calling File: the dead
	// process's handle died with it.
	File func(node InodeEmbedder, fh uint32, dir bool) FileHandle
}

// initResume sets up the tables of a resumed bridge (NewNodeFS).
func (b *rawBridge) initResume() {
	r := b.options.Resume
	if r == nil {
		return
	}
	b.ids.fhBase = r.FileHandleBase
	b.ids.sticky = true
	b.ids.legacy = map[uint32]*fileEntry{}
	b.ids.nodes[1].lookupCount = stickyLookups
}

// unknown reports whether (nodeID, fh) names something the bridge does
// not know and Resume is set: the caller then materialises it.
func (b *rawBridge) unknown(e *nodeEntry, f *fileEntry) bool {
	return b.options.Resume != nil && (e == nil || f == nil)
}

// materialize registers nodeID and handle fh, whichever the bridge does
// not know, as Resume's functions make them.
func (b *rawBridge) materialize(nodeID uint64, fh uint64) (*nodeEntry, *fileEntry) {
	b.resumeMu.Lock()
	defer b.resumeMu.Unlock()
	e, f := b.ids.node(nodeID, fh)
	if e == nil {
		e = b.materializeNode(nodeID)
	}
	if f == nil {
		n := e.inode.Load()
		h := b.options.Resume.File(n.ops, uint32(fh), n.IsDir())
		t := &b.ids
		t.mu.Lock()
		f = &fileEntry{fh: uint32(fh), file: h, inode: n, nodeIndex: len(e.openFiles)}
		if _, ok := h.(FileReaddirenter); ok {
			f.lastRead = dirEntryPool.Get().([]fuse.DirEntry)
		}
		t.legacy[uint32(fh)] = f
		e.openFiles = append(e.openFiles, uint32(fh))
		t.mu.Unlock()
	}
	return e, f
}

func (b *rawBridge) materializeNode(nodeID uint64) *nodeEntry {
	if nodeID == 0 || nodeID == ^uint64(0) {
		log.Panicf("unknown node %d", nodeID)
	}
	ops, attr := b.options.Resume.Node(nodeID)
	n := ops.embed()
	if n.bridge == nil {
		attr.Mode &= syscall.S_IFMT
		if attr.Mode == 0 {
			attr.Mode = fuse.S_IFREG
		}
		initInode(n, ops, attr, b, false, nodeID)
	} else if n.bridge != b || n.nodeId != nodeID {
		log.Panicf("Resume.Node(%d) returned node %d of another bridge or node ID", nodeID, n.nodeId)
	}
	n.mu.Lock()
	n.hasKernelRef = true
	n.changeCounter++
	n.mu.Unlock()
	t := &b.ids
	t.mu.Lock()
	defer t.mu.Unlock()
	e := &nodeEntry{lookupCount: stickyLookups}
	e.inode.Store(n)
	t.nodes[nodeID] = e
	t.stableAttrs[t.dedupKey(n.stableAttr)] = n
	t.nodeCountHigh = max(t.nodeCountHigh, len(t.nodes))
	return e
}

// releaseUnknown reports whether a RELEASE names a handle (or node) the
// bridge does not know in a resumed bridge: nothing to release then.
func (b *rawBridge) releaseUnknown(nodeID uint64, fh uint64) bool {
	if b.options.Resume == nil {
		return false
	}
	e, f := b.ids.node(nodeID, fh)
	return e == nil || f == nil
}
