package fsns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/store"
)

// FS is the namespace of an fs volume: inodes, directory entries, symlink
// targets and xattrs in badger, file data in chunks like a block volume's.
// It is the filesystem engine every file door shares (FUSE today, the
// LD_PRELOAD shim later); doors translate their protocol to these calls and
// map the error sentinels to errno in one place.
//
// # Transactions
//
// Every namespace operation is atomic and serialised per volume by one
// mutex (the kernel already serialises most operations on a directory;
// the mutex makes the read-check-write of each operation atomic without
// conflict retries). While the volume lives, every write of a namespace
// record (inode, length, entry, symlink, xattr, orphan) runs in
// FS.update, the orphan purge's included.
//
// An operation's writes join the volume's open group of changes, which
// is committed to badger as one transaction when something is about to
// read badger, when a file's chunks are about to be written, when it is
// full, on fsync or Store.Flush, and about a millisecond after its first
// change (group.go explains why and how reads stay exact). The commit
// is handed to badger without waiting for the write (memtable and its
// log, on another goroutine), and every transaction that begins later
// waits for it. What the group changes is the crash window: a SIGKILL can
// lose the last millisecond of acknowledged namespace changes that no
// fsync covered, each change whole or not at all (POSIX promises them
// nothing; badger does not sync its log per commit anyway, so power loss
// loses more). Fsync, and any Store.Flush, commit the group and wait for
// every commit before them. A commit that fails after its operations
// returned (badger could not write its log) fails the volume's
// namespace: every later change and fsync returns ErrIO, the attribute
// cache is disabled, and a restart finds the state of the last commit
// that was written.
//
// # File data and length
//
// File data goes through Volume.ReadAt/WriteAt with the file's inode, on an
// object (chunk table + stripe locks) that exists while the file is open.
// A write past the end extends the length in memory; the length (and mtime)
// is persisted by Fsync, by the last Release, and by SetAttr. After a crash
// a file therefore has the length of its last fsync or close, and whatever
// lies past that length is discarded the first time the file is opened
// again (the same rule that makes truncate-then-extend read zeros).
//
// # Unlinked but open
//
// When the last link of an inode goes, the same transaction records it as
// an orphan. An orphan that nobody has open is purged at once (chunks freed,
// records deleted); one that is open is purged on its last Release; orphans
// left by a crash are purged when the store opens.
type FS struct {
	v *store.Volume

	mu         sync.Mutex            // serialises namespace changes
	nextIno    uint64                // next free inode number, under mu (0: not read yet)
	inoLimit   uint64                // the stored inode counter (numbers below it are reserved), under mu
	inoPending uint64                // the counter the running transaction writes (0: none), under mu
	dying      []uint64              // inodes deleted by the running transaction, under mu
	attrMods   []attrChange          // inode records the running transaction writes, under mu
	attrs      attrCache             // committed attributes (attrcache.go)
	commitErr  atomic.Pointer[error] // the first commit that failed after its operations returned

	objMu   sync.Mutex
	inUse   map[uint64]*inUse // inodes with open handles or internal pins
	objs    sync.Map          // ino → *object: regular files in use (lock-free lookup for IO)
	trimmed map[uint64]bool   // files trimmed past their length since the store opened
	orphans map[uint64]bool   // inodes with an orphan record, purged when unused
	deleted bool

	watchers atomic.Pointer[[]Watcher] // replaced under objMu (watch.go)
	fresh    map[uint64]uint8          // under objMu: what inodes created since the store opened have never had (freshNo*)

	op ntxn // the running change's, reused; under mu

	// The open group of changes not yet handed to badger (group.go).
	// groupMu comes after mu and objMu: a reader holding objMu (an object
	// load) can commit the group without mu.
	groupMu      sync.Mutex
	group        []kvWrite
	groupIdx     map[string]int // key → its latest write in group
	groupSize    int
	groupChanges int
	groupSince   time.Time
	groupTimer   *time.Timer
	pending      atomic.Bool // set while group has any
	flushGen     uint64      // groups handed over so far
	// lastCommit is closed when the latest commit handed to badger, and
	// every one before it, has been written or has failed (nil: none yet).
	lastCommit chan struct{}
}

type inUse struct {
	refs    int
	obj     *store.Object // regular files only
	purging bool          // a pin by purgeIfUnused: the inode is going away
}

func newFS(v *store.Volume) *FS {
	return &FS{v: v, inUse: make(map[uint64]*inUse), trimmed: make(map[uint64]bool), orphans: make(map[uint64]bool), fresh: make(map[uint64]uint8), groupIdx: make(map[string]int)}
}

// NewInode describes an inode to create.
type NewInode struct {
	Mode     uint32 // type bits (S_IFREG, S_IFDIR, S_IFLNK, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK) | permissions
	UID, GID uint32
	Rdev     uint32
	Target   string // symlinks
}

// DirEntry is one entry of a directory listing.
type DirEntry struct {
	Name string `json:"name"`
	Ino  uint64 `json:"ino"`
	Type uint32 `json:"type"` // S_IFMT bits
}

// Rename flags (Linux renameat2).
const (
	RenameNoReplace = 1 << 0
	RenameExchange  = 1 << 1
)

func now() int64 { return time.Now().UnixNano() }

func validEntryName(name string) error {
	switch {
	case name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("name %q: %w", name, store.ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name of %d bytes: %w", len(name), store.ErrNameTooLong)
	}
	return nil
}

func (f *FS) check() error {
	if f.deleted {
		return fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrNotFound)
	}
	return f.failed()
}

// failed returns the error of a namespace commit that failed after its
// operation returned, wrapped in ErrIO, or nil.
func (f *FS) failed() error {
	if p := f.commitErr.Load(); p != nil {
		return fmt.Errorf("volume %s: %w: an earlier metadata commit failed: %w", f.v.Ref(), store.ErrIO, *p)
	}
	return nil
}

func (f *FS) markDeleted() {
	f.mu.Lock()
	f.flushGroup() // before the volume's records are dropped
	f.deleted = true
	f.mu.Unlock()
}

// initRoot creates the root directory in txn (volume creation).
func initRoot(txn kv, vol uint64, uid, gid uint32) error {
	t := now()
	root := Attr{Ino: RootIno, Mode: syscall.S_IFDIR | 0o755, Nlink: 2, UID: uid, GID: gid, Atime: t, Mtime: t, Ctime: t, Parent: RootIno}
	if err := txn.Set(inodeKey(vol, RootIno), encodeAttr(root)); err != nil {
		return err
	}
	return txn.Set(inoCounterKey(vol), binary.BigEndian.AppendUint64(nil, RootIno+1))
}

func inoCounterKey(vol uint64) []byte { return store.CounterKey(fmt.Sprintf("ino.%d", vol)) }

// getAttr reads ino's attributes in txn, with the live length and mtime of
// a file in use, and the space it holds.
func (f *FS) getAttr(txn kv, ino uint64) (Attr, error) {
	a, err := f.rawAttr(txn, ino)
	if err != nil || !a.IsRegular() {
		return a, err
	}
	if f.overlayLive(&a) {
		return a, nil
	}
	if a.Size, err = readLength(txn, f.v.ID(), ino); err != nil {
		return Attr{}, err
	}
	if a.Size > 0 {
		a.Blocks = f.v.HeldBytes(txn, ino) / 512
	}
	return a, nil
}

// overlayLive sets a regular file's length, mtime and blocks from its
// object, if one is loaded, and reports whether one was.
func (f *FS) overlayLive(a *Attr) bool {
	o := f.loaded(a.Ino)
	if o == nil {
		return false
	}
	liveValues(a, o)
	return true
}

// overlayCached completes attributes a read from the cache at
// generation gen: a regular file's live values overlay them if its object
// is loaded. It reports false if a may be stale: no object is loaded and
// the cache has changed since gen, so the object may have been unloaded
// after a was read, with the cache refreshed to its final values in
// between (Release does both, in that order). The caller then reads
// again, from badger.
func (f *FS) overlayCached(a *Attr, gen uint64) bool {
	if !a.IsRegular() || f.overlayLive(a) {
		return true
	}
	return f.attrs.generation() == gen
}

// liveValues sets a's length, mtime and blocks from the file's object.
func liveValues(a *Attr, o *store.Object) {
	a.Size = o.Size()
	if m := o.Mtime(); m > a.Mtime {
		a.Mtime, a.Ctime = m, max(a.Ctime, m)
	}
	a.Blocks = o.Held() / 512
}

// rawAttr reads ino's attribute record only: what namespace changes need
// (a file's length and blocks are left zero).
func (f *FS) rawAttr(txn kv, ino uint64) (Attr, error) {
	b, err := txn.Get(inodeKey(f.v.ID(), ino))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Attr{}, fmt.Errorf("inode %d: %w", ino, store.ErrNotFound)
	} else if err != nil {
		return Attr{}, err
	}
	a, err := decodeAttr(ino, b)
	if err != nil {
		return Attr{}, err
	}
	switch {
	case a.IsDir():
		a.Size = 4096
	case a.IsSymlink():
		if target, err := txn.Get(linkKey(f.v.ID(), ino)); err == nil {
			a.Size = int64(len(target))
		}
	}
	return a, nil
}

func readLength(txn kv, vol, ino uint64) (int64, error) {
	b, err := txn.Get(lengthKey(vol, ino))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("inode %d: length record of %d bytes: %w", ino, len(b), store.ErrIO)
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

// putAttr writes a's attributes (not its length) in txn, which must be
// FS.update's: the new record goes to the attribute cache on commit (a
// regular file or symlink leaves it instead, see attrCache).
func (f *FS) putAttr(txn kv, a Attr) error {
	rec := encodeAttr(a)
	if a.IsRegular() || a.IsSymlink() { // sizes live in other records
		f.noteDrop(a.Ino)
		return txn.Set(inodeKey(f.v.ID(), a.Ino), rec)
	}
	c, err := decodeAttr(a.Ino, rec) // exactly what rawAttr reads back
	if err != nil {
		return err
	}
	if c.IsDir() {
		c.Size = 4096
	}
	f.attrMods = append(f.attrMods, attrChange{a: c, keep: true})
	return txn.Set(inodeKey(f.v.ID(), a.Ino), rec)
}

// Lookup returns the attributes of name in directory parent, from the
// cache when it has both the name and the inode.
func (f *FS) Lookup(ctx context.Context, parent uint64, name string) (Attr, error) {
	if len(name) > MaxNameLen {
		return Attr{}, fmt.Errorf("name of %d bytes: %w", len(name), store.ErrNameTooLong)
	}
	if a, gen, ok, absent := f.attrs.lookupAt(parent, name); absent {
		return Attr{}, store.ErrNotFound // a common answer: no formatted error
	} else if ok && f.overlayCached(&a, gen) {
		return a, nil
	}
	gen := f.attrs.generation()
	var a Attr
	var wasLoaded bool
	err := f.view(func(txn kv) error {
		ino, _, err := f.lookupTxn(txn, parent, name)
		if err == nil {
			wasLoaded = f.loaded(ino) != nil
		}
		if errors.Is(err, store.ErrNotFound) {
			if _, derr := f.dirAttr(txn, parent); derr != nil {
				return derr // the parent is gone or not a directory
			}
		}
		if err != nil {
			return err
		}
		a, err = f.getAttr(txn, ino)
		return err
	})
	if err == nil {
		var attr *Attr
		if !a.IsRegular() || !wasLoaded && f.loaded(a.Ino) == nil {
			attr = &a
		}
		f.attrs.fill(gen, attr, &dentName{parent, name}, a.Ino)
	}
	return a, err
}

// GetAttr returns ino's attributes, from the attribute cache when it has
// them.
func (f *FS) GetAttr(ctx context.Context, ino uint64) (Attr, error) {
	if a, gen, ok := f.attrs.getAt(ino); ok && f.overlayCached(&a, gen) {
		return a, nil
	}
	gen := f.attrs.generation()
	wasLoaded := f.loaded(ino) != nil
	var a Attr
	err := f.view(func(txn kv) (err error) {
		a, err = f.getAttr(txn, ino)
		return err
	})
	if err == nil && (!a.IsRegular() || !wasLoaded && f.loaded(ino) == nil) {
		f.attrs.fill(gen, &a, nil, 0)
	}
	return a, err
}

// noteDrop records that the running transaction (FS.update's) changes
// ino's length or deletes it: the cache drops it on commit.
func (f *FS) noteDrop(ino uint64) {
	f.attrMods = append(f.attrMods, attrChange{a: Attr{Ino: ino}})
}

// Readlink returns a symlink's target.
func (f *FS) Readlink(ctx context.Context, ino uint64) (string, error) {
	var target string
	err := f.view(func(txn kv) error {
		b, err := txn.Get(linkKey(f.v.ID(), ino))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("inode %d is not a symlink: %w", ino, store.ErrInvalid)
		} else if err != nil {
			return err
		}
		target = string(b)
		return nil
	})
	return target, err
}

// ReadDir lists directory ino in name order ("." and ".." not included).
func (f *FS) ReadDir(ctx context.Context, ino uint64) ([]DirEntry, error) {
	var out []DirEntry
	err := f.view(func(txn kv) error {
		if _, err := f.dirAttr(txn, ino); err != nil {
			return err
		}
		prefix := dentryPrefix(f.v.ID(), ino)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var e DirEntry
			e.Name = string(it.Item().Key()[len(prefix):])
			err := it.Item().Value(func(b []byte) (err error) { e.Ino, e.Type, err = decodeDentry(b); return err })
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

func dirEmpty(txn kv, vol, ino uint64) bool {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: dentryPrefix(vol, ino), PrefetchSize: 1})
	defer it.Close()
	it.Rewind()
	return !it.Valid()
}

// Create makes a new inode called name in parent: a file, directory,
// symlink (in.Target), FIFO, socket or device node, as in.Mode says.
func (f *FS) Create(ctx context.Context, parent uint64, name string, in NewInode) (Attr, error) {
	if err := validEntryName(name); err != nil {
		return Attr{}, err
	}
	typ := in.Mode & syscall.S_IFMT
	switch typ {
	case syscall.S_IFREG, syscall.S_IFDIR, syscall.S_IFIFO, syscall.S_IFSOCK, syscall.S_IFCHR, syscall.S_IFBLK:
	case syscall.S_IFLNK:
		if in.Target == "" || len(in.Target) > MaxSymlinkLen {
			return Attr{}, fmt.Errorf("symlink target of %d bytes: %w", len(in.Target), store.ErrNameTooLong)
		}
	default:
		return Attr{}, fmt.Errorf("mode %#o: %w", in.Mode, store.ErrInvalid)
	}
	if f.v.ReadOnly() {
		return Attr{}, fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrReadOnly)
	}
	var a Attr
	err := f.update(ctx, func(txn kv) error {
		p, err := f.dirAttr(txn, parent)
		if err != nil {
			return err
		}
		if _, _, err := f.entryOf(txn, parent, name); err == nil {
			return fmt.Errorf("%q: %w", name, store.ErrExists)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if a, err = f.newInode(txn, in, 1); err != nil {
			return err
		}
		t := a.Ctime
		switch typ {
		case syscall.S_IFDIR:
			a.Nlink, a.Parent, a.Size = 2, parent, 4096
			p.Nlink++
		case syscall.S_IFLNK:
			a.Size = int64(len(in.Target))
			if err := txn.Set(linkKey(f.v.ID(), a.Ino), []byte(in.Target)); err != nil {
				return err
			}
		}
		p.Mtime, p.Ctime = t, t
		if err := f.putAttr(txn, a); err != nil {
			return err
		}
		switch typ {
		case syscall.S_IFREG, syscall.S_IFLNK:
			// As created, the record is the whole truth (empty, or the
			// target's length): cache it.
			f.attrMods = append(f.attrMods, attrChange{a: a, keep: true})
		case syscall.S_IFDIR:
			f.attrMods = append(f.attrMods, attrChange{a: a, newDir: true})
		}
		if err := f.putAttr(txn, p); err != nil {
			return err
		}
		return f.setDentry(txn, parent, name, a.Ino, a.Mode)
	})
	return a, err
}

// newInode allocates an inode number and returns the attributes of a new
// inode made from in with nlink links, its times now.
func (f *FS) newInode(txn kv, in NewInode, nlink uint32) (Attr, error) {
	ino, err := f.allocIno(txn)
	if err != nil {
		return Attr{}, err
	}
	f.markFresh(ino)
	t := now()
	return Attr{Ino: ino, Mode: in.Mode, Nlink: nlink, UID: in.UID, GID: in.GID, Rdev: in.Rdev, Atime: t, Mtime: t, Ctime: t}, nil
}

// Tmpfile makes an unnamed regular file (O_TMPFILE): an orphan from the
// start, open once for the caller, who must Release it.
func (f *FS) Tmpfile(ctx context.Context, parent uint64, in NewInode) (Attr, error) {
	if in.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return Attr{}, fmt.Errorf("tmpfile mode %#o: %w", in.Mode, store.ErrInvalid)
	}
	if f.v.ReadOnly() {
		return Attr{}, fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrReadOnly)
	}
	var a Attr
	err := f.update(ctx, func(txn kv) error {
		if _, err := f.dirAttr(txn, parent); err != nil {
			return err
		}
		var err error
		if a, err = f.newInode(txn, in, 0); err != nil {
			return err
		}
		if err := f.putAttr(txn, a); err != nil {
			return err
		}
		return txn.Set(orphanKey(f.v.ID(), a.Ino), nil)
	})
	if err != nil {
		return Attr{}, err
	}
	f.setOrphan(a.Ino, true)
	return a, f.acquireNew(a.Ino)
}

// Link adds a new name for ino (not a directory) in newParent.
func (f *FS) Link(ctx context.Context, ino, newParent uint64, newName string) (Attr, error) {
	if err := validEntryName(newName); err != nil {
		return Attr{}, err
	}
	if f.v.ReadOnly() {
		return Attr{}, fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrReadOnly)
	}
	var a Attr
	resurrected := false
	err := f.update(ctx, func(txn kv) error {
		p, err := f.dirAttr(txn, newParent)
		if err != nil {
			return err
		}
		if a, err = f.getAttr(txn, ino); err != nil {
			return err
		}
		if a.IsDir() {
			return fmt.Errorf("hard link to directory inode %d: %w", ino, store.ErrPerm)
		}
		if _, _, err := f.entryOf(txn, newParent, newName); err == nil {
			return fmt.Errorf("%q: %w", newName, store.ErrExists)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if a.Nlink == 0 {
			// Linking an open O_TMPFILE file (linkat AT_EMPTY_PATH)
			// brings it back from the orphan list.
			if err := txn.Delete(orphanKey(f.v.ID(), ino)); err != nil {
				return err
			}
			resurrected = true
		}
		t := now()
		a.Nlink++
		a.Ctime = t
		p.Mtime, p.Ctime = t, t
		if err := f.putAttr(txn, a); err != nil {
			return err
		}
		if err := f.putAttr(txn, p); err != nil {
			return err
		}
		return f.setDentry(txn, newParent, newName, ino, a.Mode)
	})
	if err == nil && resurrected {
		f.setOrphan(ino, false)
	}
	return a, err
}

// Unlink removes name (not a directory) from parent.
func (f *FS) Unlink(ctx context.Context, parent uint64, name string) error {
	return f.remove(ctx, parent, name, false)
}

// Rmdir removes the empty directory name from parent.
func (f *FS) Rmdir(ctx context.Context, parent uint64, name string) error {
	return f.remove(ctx, parent, name, true)
}

func (f *FS) remove(ctx context.Context, parent uint64, name string, dir bool) error {
	if f.v.ReadOnly() {
		return fmt.Errorf("volume %s: %w", f.v.Ref(), store.ErrReadOnly)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("remove %q: %w", name, store.ErrInvalid)
	}
	var gone uint64
	err := f.update(ctx, func(txn kv) error {
		p, err := f.dirAttr(txn, parent)
		if err != nil {
			return err
		}
		ino, _, err := f.entryOf(txn, parent, name)
		if err != nil {
			return err
		}
		a, err := f.recordOf(txn, ino)
		if err != nil {
			return err
		}
		switch {
		case dir && !a.IsDir():
			return fmt.Errorf("%q: %w", name, store.ErrNotDir)
		case !dir && a.IsDir():
			return fmt.Errorf("%q: %w", name, store.ErrIsDir)
		case dir && !dirEmpty(txn, f.v.ID(), ino):
			return fmt.Errorf("%q: %w", name, store.ErrNotEmpty)
		}
		t := now()
		p.Mtime, p.Ctime = t, t
		if dir {
			p.Nlink--
		}
		if err := f.putAttr(txn, p); err != nil {
			return err
		}
		if err := f.deleteDentry(txn, parent, name); err != nil {
			return err
		}
		if gone, err = f.dropLink(txn, a, t); err != nil {
			return err
		}
		return nil
	})
	if err == nil && gone != 0 {
		f.setOrphan(gone, true)
		f.purgeIfUnused(ctx, gone)
	}
	return err
}

// dropLink removes one link of a (a directory loses all of its), in txn.
// When none is left, an inode that nobody has open and that holds no data
// is deleted in the same transaction; otherwise it becomes an orphan, and
// dropLink returns its number for purgeIfUnused after the commit.
func (f *FS) dropLink(txn kv, a Attr, t int64) (uint64, error) {
	if a.IsDir() || a.Nlink <= 1 {
		a.Nlink = 0
	} else {
		a.Nlink--
	}
	a.Ctime = t
	if a.Nlink > 0 {
		return 0, f.putAttr(txn, a)
	}
	if f.claimDying(a.Ino) {
		// Nobody has it open, and nobody can open it now: what it
		// holds can no longer change.
		fresh := f.freshness(a.Ino)
		// Chunks are written outside namespace changes, so the
		// change's reads (which may have begun before the inode's
		// last writer committed) cannot answer this: the engine looks
		// in a transaction of its own.
		if fresh&freshNoChunks != 0 || !f.v.HasChunks(a.Ino) {
			f.noteDrop(a.Ino)
			f.forgetFresh(a.Ino)
			// a had a name until now, so it has no orphan record (Link
			// deletes that of an O_TMPFILE file it names).
			return 0, deleteInode(txn, f.v.ID(), a.Ino, fresh&freshNoXattrs == 0, a.IsSymlink(), false)
		}
		f.unclaimDying(a.Ino)
	}
	if err := f.putAttr(txn, a); err != nil {
		return 0, err
	}
	return a.Ino, txn.Set(orphanKey(f.v.ID(), a.Ino), nil)
}

// claimDying pins ino as purging if nobody has it open, so that no Open
// can slip in between this check and the commit that deletes the inode;
// update releases the pin after the commit. The caller holds f.mu.
func (f *FS) claimDying(ino uint64) bool {
	f.objMu.Lock()
	defer f.objMu.Unlock()
	if f.inUse[ino] != nil {
		return false
	}
	f.inUse[ino] = &inUse{refs: 1, purging: true}
	f.dying = append(f.dying, ino)
	return true
}

// unclaimDying undoes the claimDying just made in this change.
func (f *FS) unclaimDying(ino uint64) {
	f.objMu.Lock()
	defer f.objMu.Unlock()
	delete(f.inUse, ino)
	f.dying = f.dying[:len(f.dying)-1]
}

// deleteInode deletes an inode's records (not its chunks) in txn. Xattrs,
// a symlink target and an orphan record are looked for or deleted only
// when the caller says they may exist: each delete is one more entry for
// badger to write, and looking for xattrs is a read.
func deleteInode(txn kv, vol, ino uint64, mayXattrs, mayLink, mayOrphan bool) error {
	var keys [][]byte
	if mayXattrs {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: xattrPrefix(vol, ino)})
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		it.Close()
	}
	keys = append(keys, inodeKey(vol, ino), lengthKey(vol, ino))
	if mayLink {
		keys = append(keys, linkKey(vol, ino))
	}
	if mayOrphan {
		keys = append(keys, orphanKey(vol, ino))
	}
	for _, k := range keys {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (f *FS) setOrphan(ino uint64, on bool) {
	f.objMu.Lock()
	defer f.objMu.Unlock()
	if on {
		f.orphans[ino] = true
	} else {
		delete(f.orphans, ino)
	}
}
