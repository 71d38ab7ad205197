// Package fsns is the namespace of fs volumes: inodes, directory entries,
// symlink targets, xattrs, file lengths and orphans, kept as records in the
// store's badger database, over file data that the chunk engine (package
// store) keeps. FS is the filesystem every file door shares (FUSE today,
// the LD_PRELOAD shim later).
//
// # Who owns what
//
// The engine (store) owns chunks: allocation, the chunk maps and tables,
// device IO, copy-on-write, caches, and durability ordering (data before
// metadata, deferred reuse of freed space, Flush and FUA). This package
// owns the namespace and the order of its metadata transactions, and
// keeps these invariants:
//
//   - link counts match the directory entries, every inode is reachable
//     or an orphan, and every record (length, xattr, symlink target,
//     chunk) belongs to an inode that can have it (fsck.go);
//   - every namespace record is written in FS.update, and its group
//     commit reaches badger before any chunk commit of a file that depends
//     on it (the WillWrite hook) and before every metadata sync (Barrier);
//   - a shorter length is recorded only after the chunks past it are cut,
//     and what lies past the recorded length after a crash reads as zeros
//     (the first load of the file trims it);
//   - an orphan's chunks are dropped only after its orphan record is in
//     badger, and its records only after its chunks.
//
// # The seam
//
// The engine calls this package only through store.Namespace, which FS
// meets through an adapter (hooks, maker.go) so the hooks stay off FS's
// door API; Maker is the store.NamespaceMaker a store is opened with, and
// Of returns a volume's FS. This package uses only the engine's exported
// API (listed in package store's doc). The keys of its records are in
// format.go and docs/FORMAT.md.
package fsns
