package fsns

import (
	"context"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/store"
)

// Maker makes FS the namespace of a store's fs volumes: pass it as
// store.Options.Namespaces.
type Maker struct{}

var _ store.NamespaceMaker = Maker{}

// Create writes a new fs volume's root directory and inode counter in txn.
func (Maker) Create(txn *badger.Txn, vol uint64) error { return initRoot(viewTxn{txn}, vol, 0, 0) }

// Attach returns the namespace of fs volume v.
func (Maker) Attach(v *store.Volume) store.Namespace { return hooks{newFS(v)} }

// Prefixes are the key prefixes of fs volume vol's namespace records.
func (Maker) Prefixes(vol uint64) [][]byte { return namespacePrefixes(vol) }

// Of returns the namespace of an fs volume, nil for a block volume (or a
// volume of a store opened without Maker).
func Of(v *store.Volume) *FS {
	if h, ok := v.Namespace().(hooks); ok {
		return h.f
	}
	return nil
}

// hooks is FS as the engine's store.Namespace: the hooks stay off FS's own
// API, which is for the doors.
type hooks struct{ f *FS }

var _ store.Namespace = hooks{}

func (h hooks) OpenObject(ino uint64) (*store.Object, error) { return h.f.openObject(ino) }
func (h hooks) LoadedObjects() []*store.Object               { return h.f.loadedObjects() }
func (h hooks) WillWrite(o *store.Object)                    { h.f.willWrite(o) }
func (h hooks) Barrier()                                     { h.f.barrier() }
func (h hooks) MarkDeleted()                                 { h.f.markDeleted() }
func (h hooks) PurgeOrphans(keep map[uint64]bool) error      { return h.f.purgeOrphans(keep) }
func (h hooks) Fsck(txn *badger.Txn, r *store.FsckReport) error {
	return h.f.fsck(txn, r)
}
func (h hooks) NoteData(ctx context.Context, ino uint64, off, length int64) {
	h.f.noteData(ctx, ino, off, length)
}
