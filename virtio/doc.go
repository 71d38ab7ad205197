// Package virtio is Sluice's shared-memory block door: vhost-user-blk over
// unix sockets with split virtqueues, both sides.
//
//   - The target (back-end) serves one Export, normally a gateway volume, to
//     any vhost-user-blk front-end: QEMU VMs (vhost-user-blk-pci), SPDK's
//     bdev_virtio, libblkio, or this package's initiator.
//   - The initiator (front-end) is a Go library that talks to any
//     vhost-user-blk target (qemu-storage-daemon, SPDK vhost, our target)
//     and offers concurrent block IO; it implements gateway/device.Device,
//     so it can be the device under a store (spdkbackend).
//
// Protocol references and measurements: notes/virtio.md (QEMU
// docs/interop/vhost-user.rst, the virtio 1.x split ring and virtio-blk).
//
// # Target
//
//	srv := virtio.NewServer(volume, virtio.ServerOptions{})
//	l, err := virtio.Listen("/run/sluice/virtio/tenant-vol.sock") // mode 0600
//	go srv.Serve(ctx, l)
//	...
//	srv.Shutdown(ctx) // stop every queue (in-flight requests finish), close
//
// A planned handover (handover.go) replaces Shutdown with
// ShutdownHandover, which returns each connection stopped at a message
// boundary with its rings drained, as state and fds for another process's
// Server.Adopt; the front-end is not told.
//
// Export is Size() int64 and Do(ctx, *gateway.Request) error, plus an
// optional ReadOnly() bool; *gateway.Volume satisfies it. Requests carry
// Door = gateway.DoorVirtio. Several front-ends may connect to one socket at
// once; each connection is independent (like NBD multi-conn: flush covers
// what the export has acknowledged, from any connection).
//
// Offered virtio features: VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES,
// RING_INDIRECT_DESC, RING_EVENT_IDX, blk SEG_MAX, BLK_SIZE, FLUSH, MQ, and
// DISCARD + WRITE_ZEROES (or RO instead, for read-only exports). Protocol
// features: MQ, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS, INFLIGHT_SHMFD.
// Config space:
// capacity (export size / 512, read at each GET_CONFIG), seg_max 126,
// blk_size (ServerOptions.BlockSize, default 512), num_queues
// (ServerOptions.Queues, default 4), max_discard_sectors and
// max_write_zeroes_sectors 4Mi (2 GiB), max_discard_seg and
// max_write_zeroes_seg 32, discard_sector_alignment blk_size/512,
// write_zeroes_may_unmap 1. GET_CONFIG answers exactly the bytes asked for
// (zeros past the fields above, up to 256 bytes); SET_CONFIG is accepted
// and ignored (nothing is writable).
//
// Messages handled: GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER,
// RESET_OWNER and RESET_DEVICE (stop and forget every ring), SET_MEM_TABLE
// (up to 8 regions), ADD_MEM_REG / REM_MEM_REG (up to 32 slots),
// GET_MAX_MEM_SLOTS, GET_QUEUE_NUM, SET_VRING_NUM / ADDR / BASE / KICK /
// CALL / ERR / ENABLE, GET_VRING_BASE, GET/SET_CONFIG, GET/SET_INFLIGHT_FD.
// NEED_REPLY is
// honoured on every request once REPLY_ACK is negotiated (0 = done, 1 =
// refused). SET_BACKEND_REQ_FD and other requests for features we do not
// offer are refused; GET_STATUS (which the front-end would wait on
// forever) closes the connection.
//
// Inflight tracking (INFLIGHT_SHMFD, inflight.go): GET_INFLIGHT_FD answers
// a zeroed, sealed memfd laid out as QEMU's vhost-user.rst "Inflight I/O
// tracking" says for split rings (per queue a 16-byte header: features,
// version, desc_num, last_batch_head, used_idx; then 16 bytes per
// descriptor: inflight, next, counter; each queue's part rounded up to 64
// bytes). The front-end keeps it and gives it back with SET_INFLIGHT_FD at
// every device start, also to a new back-end process after the old one
// died (QEMU's chardev reconnect=N). A head is marked (inflight 1, the next
// counter) when the poller takes it; completing it sets last_batch_head,
// publishes the used element, then clears the mark and sets used_idx, all
// under the ring's used mutex. A ring that starts on a region of version 1
// recovers: a mark left by a death between publishing used.idx and
// clearing it (used_idx behind used.idx) is cleared; the heads still
// marked are run again, oldest counter first, before any new one; and the
// next avail entry is used.idx plus their number, whatever SET_VRING_BASE
// said (QEMU sets the base to used.idx when it lost its back-end). A
// region of version 0 (a new one, or a front-end restarted) is initialized
// and the base stands. The region is the front-end's shared memory: it is
// read once per ring start, only marks on heads inside the ring count, each
// head at most once; resubmitted chains are walked and checked like new
// ones; a hostile region can make the ring fail (its avail index then
// looks moved too far), never the gateway (FuzzInflightRecover,
// TestInflightHostileMessages).
//
// What QEMU 7.2 sends, and how it is handled (replayed in
// TestQEMUSequenceMemSlots and TestQEMUSequenceMemTable): GET_CONFIG comes
// before SET_FEATURES (answered from the export's current size);
// SET_FEATURES and SET_VRING_CALL are repeated (harmless); guest memory
// arrives as several regions of one memfd at different offsets, each with
// its own fd (each is mapped on its own, from file offset 0 like
// libvhost-user, after checking the file is long enough); with
// CONFIGURE_MEM_SLOTS it uses ADD_MEM_REG, without it SET_MEM_TABLE, sent
// again while the ring runs (rings are stopped, the table swapped, rings
// restarted; in-flight requests finish first); the device is started twice
// (SeaBIOS, then Linux), stopped in between with SET_VRING_ENABLE 0 and
// GET_VRING_BASE, and restarted with new ring addresses and more features
// (EVENT_IDX, indirect).
//
// Ring lifecycle: a ring runs once it has a size, addresses, a kick fd (or
// the "no fd" flag: then it is polled) and memory, and is enabled
// (SET_VRING_ENABLE 1; rings are enabled from the start when
// VHOST_USER_F_PROTOCOL_FEATURES was not negotiated). GET_VRING_BASE stops
// it, waits for its in-flight requests, answers the next avail index and
// closes the kick and call fds. Changing a running ring's size, base,
// addresses, kick fd or the features stops and restarts it. A new call fd
// is swapped in without a stop, and signalled once (a spurious interrupt is
// harmless, a lost one hangs the driver).
//
// virtio-blk requests and how they reach the export: IN → OpRead, OUT →
// OpWrite, FLUSH → OpFlush, DISCARD → OpDiscard and WRITE_ZEROES →
// OpWriteZeroes (one Do per segment; NoHole unless the segment's unmap flag
// is set), GET_ID → ServerOptions.Serial (default "sluice", NUL-padded to
// 20 bytes) without the export. Any other type gets UNSUPP, as do discard
// segments with flags and write-zeroes segments with flags other than
// unmap. The buffer layout is free (VIRTIO_F_ANY_LAYOUT semantics): the
// first 16 device-readable bytes are the header, the last device-writable
// byte the status. A data buffer that is one piece of shared memory goes to
// Export.Do as is (zero copy); a scattered one through a pooled bounce
// buffer. used.len is the data written plus the status byte (qsd does the
// same: 4097 for a 4 KiB read, 21 for GET_ID).
//
// Durability: virtio-blk has no FUA bit. A driver that negotiates FLUSH
// (Linux does) gets a write-back device: completed writes are durable after
// a completed FLUSH. A driver that does not (SeaBIOS, say) gets a
// write-through device, as the spec requires when FLUSH is offered but not
// negotiated: OUT, DISCARD and WRITE_ZEROES then reach the export with
// Request.FUA, so each is durable when it completes.
//
// Status: OK, UNSUPP for gateway.ErrUnsupported, IOERR for every other
// error (logged unless it is a range, space, read-only, invalid or closed
// error), for requests that panicked (below), and for requests the server
// rejects itself: data not a multiple of 512, more than 32 MiB, or past
// the end of the export (checked before the export is called), writes to a
// read-only export.
//
// Panics: a panic while running a request (in the export, in this package,
// or a fault in its guest buffers) fails that request with IOERR: the
// status byte is written, the head returned to the used ring and the
// driver notified like any completion, and the ring serves on. The panic
// is logged at ERROR with its stack and counted (ServerStats.Panics).
// *gateway.Volume recovers panics in Do itself (ErrIO, hence IOERR), so
// the policy is the same in every door. When even completing the request
// faults (its status byte or the used ring is no longer mapped), there is
// nothing to complete: on the ring's poller the ring stops (a broken ring,
// below); on a request goroutine the request is dropped, logged and
// counted, and its head stays in flight. A panic in a connection's message
// loop closes that connection, logged and counted the same way
// (internal/door's panic policy); the accept loop, the registry of
// connections and Shutdown are internal/door's too.
//
// # Safety against a hostile front-end
//
// Every address and length from the peer is checked. Ring addresses
// (front-end virtual addresses) and descriptor addresses (guest-physical)
// are translated through the region table with overflow-checked
// arithmetic; a buffer may span adjacent regions (it becomes several
// pieces), but every byte must be in a region. Descriptors are copied out
// of shared memory once and then checked, so the peer cannot change them
// between check and use. A chain is walked at most max(queue size,
// seg_max+2) descriptors (that is what stops loops); indices must be inside
// their table; an indirect table must be a multiple of 16 bytes, inside
// memory, not nested, not combined with NEXT or direct descriptors, and
// only used when negotiated; device-readable descriptors may not follow
// device-writable ones.
//
// A bad chain fails that request only. If the walk found the chain's end
// and its last descriptor is a writable byte in memory, the status says
// IOERR (used.len 1); otherwise (loops, bad indices, bad indirect tables)
// the head is returned with used.len 0 and the status untouched. Either way
// the ring carries on; the first rejection per ring is logged as a warning,
// later ones at debug level, and Server.Stats counts them.
//
// Ring-level violations leave no request to fail: an avail index that moves
// by more than the ring size, a head outside the ring, a head made
// available again while in flight. The ring stops (the error eventfd is
// signalled, Stats.BrokenRings counts it); the connection and every other
// ring and connection carry on. Each poller pass takes at most one ring's
// worth of heads, so a ring whose requests rewrite the avail ring cannot
// keep the poller from its stop check.
//
// Memory faults: a front-end that truncates its memfd after sharing it
// would make our accesses raise SIGBUS. The region's file size is checked
// when it is mapped, and every goroutine of ours that touches guest memory
// (the connection, ring pollers, request goroutines) runs with
// debug.SetPanicOnFault, so a later truncation costs the requests whose
// buffers it took (IOERR), that ring if the ring itself is gone, or that
// connection, never the gateway. Export.Do receives guest memory as req.Buf
// on that goroutine; an export must not keep it, or hand it to other
// goroutines, after Do returns (a fault there would not be recovered). Our
// initiator seals its memfd against shrinking; QEMU does not seal.
//
// # Initiator
//
//	c, err := virtio.Dial(ctx, "/var/tmp/vhost.0", virtio.Options{Queues: 2})
//	n, err := c.ReadAt(buf, off) // also WriteAt, Flush, Discard, WriteZeroes,
//	err = c.Do(ctx, req)         // GetID, Size, BlockSize; Do takes a context
//	c.Close()
//
// Handshake (the order SPDK's and qsd's clients use): GET_FEATURES,
// GET/SET_PROTOCOL_FEATURES (MQ, REPLY_ACK, CONFIG; CONFIG is required, it
// is how we learn the size), GET_QUEUE_NUM, GET_CONFIG (60 bytes),
// SET_OWNER, SET_FEATURES (VERSION_1 required; PROTOCOL_FEATURES, indirect,
// EVENT_IDX, SIZE_MAX, SEG_MAX, BLK_SIZE, FLUSH, RO, MQ, DISCARD,
// WRITE_ZEROES when offered), SET_MEM_TABLE with one region, then per queue
// NUM, BASE 0, ADDR, CALL, KICK (kick last: DPDK judges readiness on it),
// ENABLE 1. With REPLY_ACK every step asks for an ack. Close sends
// GET_VRING_BASE per queue, so the target stops touching our memory, before
// unmapping it.
//
// Memory: one memfd holding, per queue, the rings, per-request metadata
// (header, status byte, indirect table) and one data buffer of MaxIO bytes
// per request slot. It is mapped MAP_POPULATE and sealed against resizing;
// with Options.HugePages it comes from 2 MiB hugetlbfs pages (what SPDK
// needs to DMA into it; the host must have free huge pages). Its
// guest-physical address is 1 TiB, not our virtual address, so a target
// that mixes the two fails at once.
//
// Requests: each queue has QueueDepth slots (default 32). With indirect
// descriptors a request is one ring entry (depth up to the queue size);
// without, a fixed run of queue entries per slot (depth up to queue size /
// descriptors per request). Reads and writes must be multiples of 512 bytes
// at multiples of 512; larger than MaxIO (default 256 KiB, lowered to
// seg_max × size_max) they are split, and the pieces run concurrently up
// to the queue depth. Data is copied between the caller's buffer and the
// slot (one memcpy each way; there is no zero-copy API yet). Queues are
// used round-robin. Discard and write-zeroes send one segment per request,
// split at the target's max_*_sectors. A FUA write (Do) is a write then a
// flush. Without the FLUSH feature (or with Options.DisableFlush) the
// device is write-through and Flush returns nil; without DISCARD or WRITE_ZEROES those return
// gateway.ErrUnsupported. DiscardZeroes is false: virtio-blk does not
// promise that discarded ranges read as zeros.
//
// Errors: IOERR → gateway.ErrIO, UNSUPP → gateway.ErrUnsupported, a
// completion without status (used.len 0) → gateway.ErrIO; out of range →
// device.ErrOutOfRange and gateway.ErrOutOfRange; unaligned →
// gateway.ErrInvalid; writes to a read-only target → gateway.ErrReadOnly;
// a lost connection or Close → gateway.ErrClosed for every waiting and
// later request. A context that ends while a request is queued for a slot
// returns at once; once the request is on the ring the slot belongs to the
// target until it completes, so the caller gets ctx.Err() and the poller
// frees the slot when the completion arrives.
//
// # Threading
//
// Target: one goroutine per connection reads and handles messages in
// order. Each running ring has a poller goroutine that takes heads from the
// avail ring, walks and checks their chains, and runs each request either
// inline or on its own goroutine: inline while requests of that kind
// (read; write, discard and write-zeroes; flush) have averaged less than
// ServerOptions.InlineBelow (default 20 µs) in Export.Do, otherwise on a
// goroutine, so a slow or throttled export sees the driver's whole queue
// depth. Used elements are published under a per-ring mutex; inline
// requests are published as they finish and signalled with one call per
// pass, goroutine requests with a call each (both subject to the driver's
// suppression: VRING_AVAIL_F_NO_INTERRUPT or used_event with EVENT_IDX).
//
// Initiator: callers fill a slot and publish it under the queue's submit
// mutex, kick if the target asked for kicks (VRING_USED_F_NO_NOTIFY or
// avail_event), and wait on the slot's channel. One poller goroutine per
// queue harvests used elements and wakes the callers, then yields so they
// run at once on its P.
//
// # Waiting for work
//
// Both sides' pollers wait with internal/waiter (WaitOptions.Mode: adaptive,
// eventfd or poll; that package's doc gives the algorithm and its numbers).
// Notifications from the peer stay suppressed whenever a poller is not
// blocked: VRING_USED_F_NO_NOTIFY on the target, VRING_AVAIL_F_NO_INTERRUPT
// on the initiator, or with EVENT_IDX an event index kept one behind.
//
// # Limits and what is not supported
//
// Little-endian hosts only (amd64, arm64): rings are accessed in native
// byte order. Split rings only: no packed rings, IN_ORDER,
// ACCESS_PLATFORM, NOTIFY_ON_EMPTY. No dirty logging (LOG_SHMFD, live
// migration), no inflight tracking for packed rings, no BACKEND_REQ channel (no config-change
// notification when a volume is resized), no SET/GET_STATUS, no
// postcopy. The target needs the avail ring 4-byte aligned (the spec
// promises 2; Linux, QEMU and our initiator align it to 16 or a page):
// otherwise the ring does not start and SET_VRING_KICK/ENABLE is refused.
// The initiator does not reconnect after the target goes away; requests
// then fail with gateway.ErrClosed.
package virtio
