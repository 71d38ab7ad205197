// Package fuse is Sluice's filesystem door: it mounts a gateway volume as a
// POSIX filesystem with go-fuse's node API, in the gateway's own process.
//
// # What a mount shows
//
//   - An fs volume mounts as its namespace. Every node is a thin adapter over
//     the volume's gateway.Namespace: names and attributes go straight to
//     it; file data and every other data change (write, truncate, fallocate,
//     punch, fsync) go through Volume.Do with the file's inode and path (so
//     QoS rules, filters and counters apply: the path the file was opened or
//     created through, checked again after each rename or link through the
//     mount; file.go), and errors become errno in one place (errno.go).
//   - A block volume mounts as a directory holding one file, "image", whose
//     size is the volume's. It is served with direct IO (no page cache
//     between a loop device and the gateway), so a loop device bound to it
//     with --direct-io=on is a block device of the volume. The image cannot
//     be truncated; fallocate punch-hole discards.
//
// # Semantics and choices
//
//   - Writes are synchronous to the store (no FUSE writeback cache); fsync
//     and fdatasync persist the file's length and mtime and flush the store
//     (device, then metadata), so fsynced data survives a crash.
//   - O_DIRECT opens bypass the page cache (FOPEN_DIRECT_IO).
//   - Entry, attribute and negative lookups are cached by the kernel for an
//     hour; the page cache of a file is dropped on open. Every change made
//     through this mount is seen at once; the engine reports every change
//     made through anything else (another mount, the LD_PRELOAD shim, a
//     write through Volume.Do) and the mount's notifier invalidates the
//     kernel's entry, attribute and page caches by inode number (go-fuse's
//     EntryNotify and InodeNotify; node IDs are the engine's inode numbers,
//     ExternalNodeID), on a goroutine of its own (notify.go).
//   - POSIX (fcntl) and BSD (flock) locks are handled by the kernel for this
//     mount (go-fuse's EnableLocks is off): correct between processes using
//     the mount, not yet shared with other doors.
//   - Permissions are checked by the kernel (default_permissions) from the
//     mode, uid and gid the engine stores; other users may use the mount
//     (allow_other).
//   - Directory listings are snapshots taken at opendir (and at rewind), so
//     telldir/seekdir offsets stay valid while the directory changes.
//   - Hard links, symlinks, FIFOs, sockets, device nodes, xattrs (values up
//     to 64 KiB), rename with RENAME_NOREPLACE and RENAME_EXCHANGE, O_TMPFILE,
//     SEEK_DATA/SEEK_HOLE, fallocate (allocate, keep-size, punch hole, zero
//     range) and statfs from the volume's size and use are supported.
//   - A panic in a handler fails that operation with EIO and the mount
//     serves on (go-fuse's PanicHandler); it is logged at ERROR with its
//     stack. Panics inside Volume.Do are recovered there (ErrIO, counted in
//     sluice_volume_panics_total), the same policy as every door.
//
// # Handover
//
// A planned handover (`sluice gateway --takeover`, docs/HANDOVER.md) moves
// each mount to the new process without unmounting it (handover.go):
// Mount.Detach stops go-fuse at a request boundary and returns the
// /dev/fuse fd with what INIT negotiated and go-fuse's node and handle
// tables; Adopt serves them in the new process. go-fuse is vendored and
// patched for it (third_party/go-fuse/PATCHES.md).
//
// The serving process must never touch its own mount (go-fuse's deadlock
// rules); tests run the gateway as a separate process.
package fuse
