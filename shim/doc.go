// Package shim is the gateway's side of the LD_PRELOAD door: it serves
// file IO of unmodified, dynamically linked programs over shared memory.
// The client is a small C library, libsluice-shim.so (shim/lib), loaded
// with LD_PRELOAD (`sluice run --mount DIR -- CMD`). docs/SHIM.md is the
// manual and the wire format; shim/lib/proto.h is the C twin of proto.go.
//
// # The model
//
// Programs open files through a Sluice FUSE mount as usual: every fd is
// a real kernel fd, and whatever the library does not serve (mmap,
// locks, metadata, exec) keeps the kernel's semantics. For an fd on a
// mount of this gateway, the library serves the data calls (pread,
// pwrite, read and write at the kernel's offset, fsync, fdatasync,
// ftruncate, fallocate, fstat) over a per-process channel:
//
//   - a unix socket (SOCK_SEQPACKET) at DATA-DIR/shim.sock, mode 0666,
//     for the handshake and fd registration;
//   - a memfd the client creates and seals against shrinking: a header,
//     one 64-byte record per request slot and one data region per slot;
//   - an eventfd the client kicks when the gateway's poller sleeps, and
//     a futex on each slot's state word for the way back.
//
// # Proof of access
//
// On an fd's first IO the library sends the fd itself (SCM_RIGHTS). The
// gateway checks the received fd, never the client's word: statx (type,
// device, inode; AT_STATX_DONT_SYNC so the gateway asks nothing of its
// own mount) must name a regular file on one of the gateway's fs mounts
// (Mounts: the FUSE door's node IDs are the volume's inodes); the open
// file's flags give the access mode (a read-only fd cannot write) and
// refuse O_PATH and O_APPEND (those calls go to the kernel, which keeps
// appends atomic). The gateway keeps the fd for as long as the handle
// lives: the same open file description as the client's, so a later
// fcntl(F_SETFL, O_APPEND) or an O_DSYNC open is seen at each write.
//
// # One data plane
//
// Each request enters Volume.Do with Door DoorShim, the file's inode and
// its path in the volume (from the kernel's name for the fd, looked up
// again after a rename through the mount), so QoS file rules, FILE
// policies, filters and counters apply as through the FUSE door. The
// engine reports every change made through a door other than a mount to
// that mount's notifier, which drops the kernel's cached pages and
// attributes (fuse/notify.go): a shim write is seen by the next read
// through the mount, a write through the mount by the next shim read.
//
// # Hostile clients
//
// Every record is copied out of shared memory before it is checked;
// every data range must lie inside the data regions, every file range
// must not overflow, a handle must be the channel's; a bad request fails
// EINVAL, an unknown handle is answered "fall back". Written data is
// copied out before Volume.Do sees it (filters must see one version of
// the bytes). A memfd without F_SEAL_SHRINK is refused, and every
// goroutine that touches the mapping runs with debug.SetPanicOnFault:
// a process that corrupts its ring hurts only itself.
//
// Connections, caps, drain and the panic policy are internal/door's.
package shim
