package store

import (
	"context"

	"github.com/dgraph-io/badger/v4"
)

// namespace is what a volume whose data lives in files (an fs volume) gives
// the chunk engine. The engine keeps objects' chunks and never looks at
// inodes, names or attributes; where a data change or a store-wide step
// must include the namespace, it calls these instead of branching on the
// volume's kind. FS implements it; a block volume has none.
//
// This is the seam along which the namespace is meant to leave this
// package (see doc.go): the engine side must not call FS methods other
// than these.
type namespace interface {
	// openObject is the data path's lookup: the object of inode ino,
	// which must be open for IO.
	openObject(ino uint64) (*object, error)
	// loadedObjects lists the objects in memory (volume delete marks
	// them deleted).
	loadedObjects() []*object
	// willWrite runs before every change to o's chunks (write,
	// allocation, discard): the namespace's records that the chunks
	// depend on go to badger first.
	willWrite(o *object)
	// noteData runs after a change to ino's data in [off, off+length),
	// whether or not it succeeded (change reports).
	noteData(ctx context.Context, ino uint64, off, length int64)
	// barrier hands every namespace change made so far to badger: a
	// metadata sync, and fsck's snapshot, then cover them.
	barrier()
	// markDeleted fails every later namespace operation; the volume's
	// records are dropped after it returns.
	markDeleted()
	// purgeOrphans removes what a crash left of unlinked inodes; it runs
	// once, when the store opens.
	purgeOrphans() error
	// fsck checks the namespace's records in txn into r.
	fsck(txn *badger.Txn, r *FsckReport) error
}

var _ namespace = (*FS)(nil)

// namespaceMaker makes the namespaces of fs volumes: the engine knows a
// volume's kind only to ask it. The store's is fsMaker (fs.go); it is
// meant to come from the store's Options once the namespace has a package
// of its own.
type namespaceMaker interface {
	// create writes a new volume's first namespace records (its root
	// directory) in txn, the transaction that creates the volume.
	create(txn *badger.Txn, vol uint64) error
	// attach returns the namespace of volume v (created or loaded).
	attach(v *Volume) namespace
	// prefixes are the key prefixes of every namespace record of volume
	// vol: deleting a volume drops them after its chunks.
	prefixes(vol uint64) [][]byte
}

// willChange runs before a change to o's chunks: the namespace's willWrite
// (nothing without a namespace). The change's changed call follows it,
// deferred, whatever the outcome.
func (o *object) willChange() {
	if ns := o.v.ns; ns != nil {
		ns.willWrite(o)
	}
}

// changed reports a change to o's data in [off, off+length) to the
// namespace (nothing without one). No closure: the block path allocates
// nothing for it.
func (o *object) changed(ctx context.Context, off, length int64) {
	if ns := o.v.ns; ns != nil {
		ns.noteData(ctx, o.ino, off, length)
	}
}

// liveNamespaces lists the namespaces of the live volumes that have one.
func (s *Store) liveNamespaces() []namespace {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []namespace
	for _, v := range s.byID {
		if v.ns != nil {
			out = append(out, v.ns)
		}
	}
	return out
}
