package store

import (
	"context"

	"github.com/dgraph-io/badger/v4"
)

// Namespace is what a volume whose data lives in files (an fs volume) gives
// the chunk engine. The engine keeps objects' chunks and never looks at
// inodes, names or attributes; where a data change or a store-wide step
// must include the namespace, it calls these instead of branching on the
// volume's kind. A block volume has none.
type Namespace interface {
	// OpenObject is the data path's lookup: the object of inode ino,
	// which must be open for IO.
	OpenObject(ino uint64) (*Object, error)
	// LoadedObjects lists the objects in memory (volume delete marks
	// them deleted).
	LoadedObjects() []*Object
	// WillWrite runs before every change to o's chunks (write,
	// allocation, discard): the namespace's records that the chunks
	// depend on go to badger first.
	WillWrite(o *Object)
	// NoteData runs after a change to ino's data in [off, off+length),
	// whether or not it succeeded (change reports).
	NoteData(ctx context.Context, ino uint64, off, length int64)
	// Barrier hands every namespace change made so far to badger: a
	// metadata sync, and fsck's snapshot, then cover them.
	Barrier()
	// MarkDeleted fails every later namespace operation; the volume's
	// records are dropped after it returns.
	MarkDeleted()
	// PurgeOrphans removes what a crash left of unlinked inodes; it runs
	// once, when the store opens. Those in keep are still open (a planned
	// handover): they stay, purged at their last Release.
	PurgeOrphans(keep map[uint64]bool) error
	// Fsck checks the namespace's records in txn into r.
	Fsck(txn *badger.Txn, r *FsckReport) error
}

// NamespaceMaker makes the namespaces of fs volumes: the engine knows a
// volume's kind only to ask it (Options.Namespaces).
type NamespaceMaker interface {
	// Create writes a new volume's first namespace records (its root
	// directory) in txn, the transaction that creates the volume.
	Create(txn *badger.Txn, vol uint64) error
	// Attach returns the namespace of volume v (created or loaded).
	Attach(v *Volume) Namespace
	// Prefixes are the key prefixes of every namespace record of volume
	// vol: deleting a volume drops them after its chunks.
	Prefixes(vol uint64) [][]byte
}

// Namespace returns the volume's namespace, nil for a block volume.
func (v *Volume) Namespace() Namespace { return v.ns }

// willChange runs before a change to o's chunks: the namespace's WillWrite
// (nothing without a namespace). The change's changed call follows it,
// deferred, whatever the outcome.
func (o *Object) willChange() {
	if ns := o.v.ns; ns != nil {
		ns.WillWrite(o)
	}
}

// changed reports a change to o's data in [off, off+length) to the
// namespace (nothing without one). No closure: the block path allocates
// nothing for it.
func (o *Object) changed(ctx context.Context, off, length int64) {
	if ns := o.v.ns; ns != nil {
		ns.NoteData(ctx, o.ino, off, length)
	}
}

// liveNamespaces lists the namespaces of the live volumes that have one.
func (s *Store) liveNamespaces() []Namespace {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Namespace
	for _, v := range s.byID {
		if v.ns != nil {
			out = append(out, v.ns)
		}
	}
	return out
}
