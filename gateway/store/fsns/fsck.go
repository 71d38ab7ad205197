package fsns

import (
	"encoding/binary"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/store"
)

// The namespace's half of fsck (Store.Fsck runs it after the chunk maps'
// half, in the same snapshot): inodes, entries, link counts, orphans, and
// which inodes may own records and chunks.

// fsck checks inodes, entries and link counts (namespace).
func (f *FS) fsck(txn *badger.Txn, r *store.FsckReport) error {
	vol := f.v.ID()
	attrs := fsckInodes(txn, vol, r)
	r.Inodes = len(attrs)
	orphans := fsckOrphans(txn, vol)
	r.Orphans = len(orphans)
	links, subdirs := fsckDentries(txn, vol, attrs, r)
	fsckLinkCounts(attrs, orphans, links, subdirs, r)
	fsckOwned(txn, vol, attrs, r)
	return nil
}

// fsckInodes reads every inode record of volume vol.
func fsckInodes(txn *badger.Txn, vol uint64, r *store.FsckReport) map[uint64]Attr {
	attrs := make(map[uint64]Attr)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: inoKey(prefixInode, vol, 0)[:9], PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != 17 {
			r.Problemf("malformed inode key %x", k)
			continue
		}
		ino := binary.BigEndian.Uint64(k[9:])
		var a Attr
		if err := it.Item().Value(func(b []byte) (err error) { a, err = decodeAttr(ino, b); return err }); err != nil {
			r.Problemf("%v", err)
			continue
		}
		attrs[ino] = a
	}
	return attrs
}

// fsckOrphans reads the orphan records of volume vol.
func fsckOrphans(txn *badger.Txn, vol uint64) map[uint64]bool {
	orphans := make(map[uint64]bool)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: inoKey(prefixOrphan, vol, 0)[:9]})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if k := it.Item().Key(); len(k) == 17 {
			orphans[binary.BigEndian.Uint64(k[9:])] = true
		}
	}
	return orphans
}

// fsckDentries checks every directory entry against the inodes and counts
// the entries pointing at each inode (links) and the subdirectories of
// each directory (subdirs).
func fsckDentries(txn *badger.Txn, vol uint64, attrs map[uint64]Attr, r *store.FsckReport) (links, subdirs map[uint64]uint32) {
	links = make(map[uint64]uint32)
	subdirs = make(map[uint64]uint32)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: inoKey(prefixDentry, vol, 0)[:9], PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) <= 17 {
			r.Problemf("malformed dentry key %x", k)
			continue
		}
		parent, name := binary.BigEndian.Uint64(k[9:]), string(k[17:])
		r.Dentries++
		var ino uint64
		var typ uint32
		if err := it.Item().Value(func(b []byte) (err error) { ino, typ, err = decodeDentry(b); return err }); err != nil {
			r.Problemf("entry %q in directory %d: %v", name, parent, err)
			continue
		}
		p, ok := attrs[parent]
		switch {
		case !ok:
			r.Problemf("entry %q in directory %d, which does not exist", name, parent)
		case !p.IsDir():
			r.Problemf("entry %q in inode %d, which is not a directory", name, parent)
		}
		a, ok := attrs[ino]
		if !ok {
			r.Problemf("entry %q in directory %d points at inode %d, which does not exist", name, parent, ino)
			continue
		}
		if a.Mode&0o170000 != typ {
			r.Problemf("entry %q in directory %d says type %#o, inode %d is %#o", name, parent, typ, ino, a.Mode&0o170000)
		}
		links[ino]++
		if a.IsDir() {
			subdirs[parent]++
			if a.Parent != parent {
				r.Problemf("directory inode %d is entry %q of %d but its parent link says %d", ino, name, parent, a.Parent)
			}
		}
	}
	return links, subdirs
}

// fsckLinkCounts checks each inode's link count against the entries that
// point at it, and that every inode is reachable or an orphan.
func fsckLinkCounts(attrs map[uint64]Attr, orphans map[uint64]bool, links, subdirs map[uint64]uint32, r *store.FsckReport) {
	for ino, a := range attrs {
		switch {
		case a.IsDir():
			r.Dirs++
		case a.IsRegular():
			r.Files++
		}
		if ino == RootIno {
			if !a.IsDir() {
				r.Problemf("root inode is not a directory")
			} else if a.Nlink != 2+subdirs[ino] {
				r.Problemf("root directory: nlink %d, want %d", a.Nlink, 2+subdirs[ino])
			}
			continue
		}
		if links[ino] == 0 {
			if !orphans[ino] {
				r.Problemf("inode %d is in no directory and not an orphan (leaked)", ino)
			} else if a.Nlink != 0 {
				r.Problemf("orphan inode %d has nlink %d", ino, a.Nlink)
			}
			continue
		}
		if orphans[ino] {
			r.Problemf("inode %d is an orphan but still has %d entries", ino, links[ino])
		}
		want := links[ino]
		if a.IsDir() {
			if links[ino] != 1 {
				r.Problemf("directory inode %d has %d entries", ino, links[ino])
			}
			want = 2 + subdirs[ino]
		}
		if a.Nlink != want {
			r.Problemf("inode %d: nlink %d, want %d", ino, a.Nlink, want)
		}
	}
	for ino := range orphans {
		if _, ok := attrs[ino]; !ok {
			r.Problemf("orphan record for inode %d, which does not exist", ino)
		}
	}
}

// fsckOwned checks that lengths, xattrs, symlink targets and chunks belong
// to an inode that can have them.
func fsckOwned(txn *badger.Txn, vol uint64, attrs map[uint64]Attr, r *store.FsckReport) {
	for _, rec := range []struct {
		prefix byte
		what   string
	}{{prefixLength, "length"}, {prefixXattr, "xattr"}, {prefixLink, "symlink target"}} {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: inoKey(rec.prefix, vol, 0)[:9]})
		last := ^uint64(0)
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) < 17 {
				r.Problemf("malformed %s key %x", rec.what, k)
				continue
			}
			ino := binary.BigEndian.Uint64(k[9:17])
			if ino == last {
				continue
			}
			last = ino
			if _, ok := attrs[ino]; !ok {
				r.Problemf("%s record of inode %d, which does not exist (leaked)", rec.what, ino)
			}
		}
		it.Close()
	}

	// Chunks must belong to regular files.
	it := txn.NewIterator(badger.IteratorOptions{Prefix: store.ChunkPrefix(vol, 0)[:9]})
	defer it.Close()
	last := ^uint64(0)
	for it.Rewind(); it.Valid(); it.Next() {
		_, ino, _, ok := store.ParseChunkKey(it.Item().Key())
		if !ok || ino == last {
			continue
		}
		last = ino
		if a, ok := attrs[ino]; !ok {
			r.Problemf("chunks of inode %d, which does not exist (leaked)", ino)
		} else if !a.IsRegular() {
			r.Problemf("chunks of inode %d, which is not a regular file", ino)
		}
	}
}
