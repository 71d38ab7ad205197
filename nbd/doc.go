// Package nbd is Sluice's NBD door: a Network Block Device server that serves
// gateway volumes to NBD clients (qemu, libnbd tools such as nbdinfo, nbdcopy
// and nbdfuse, fio's nbd engine, nbd-client and the Linux kernel).
//
// # Using it
//
//	srv := nbd.NewServer(exports, nbd.Options{})
//	go srv.Serve(ctx, listener) // TCP or unix; call once per listener
//	...
//	srv.Shutdown(ctx)           // drain in-flight requests, then close
//
// Export names are "tenant/volume"; Exports.Lookup resolves them. A client
// URI looks like nbd+unix:///tenant/vol?socket=/run/sluice/nbd.sock or
// nbd://host:10809/tenant/vol.
//
// # Handshake
//
// Fixed newstyle negotiation only (no oldstyle), with NO_ZEROES. Client flags
// other than C_FIXED_NEWSTYLE and C_NO_ZEROES end the connection. Options:
//
//   - EXPORT_NAME (for old clients; an unknown name closes the connection,
//     as the spec requires);
//   - INFO and GO, answering INFO_EXPORT, INFO_NAME (when asked) and
//     INFO_BLOCK_SIZE (always: minimum 1, preferred 4096, maximum
//     Options.MaxPayload); an unknown export gets NBD_REP_ERR_UNKNOWN;
//   - LIST, ABORT;
//   - STRUCTURED_REPLY;
//   - LIST_META_CONTEXT and SET_META_CONTEXT with the single context
//     "base:allocation" (LIST also matches the query "base:"). Contexts
//     selected for one export are dropped if GO names another.
//
// Everything else (STARTTLS, EXTENDED_HEADERS, unknown options) gets
// NBD_REP_ERR_UNSUP and negotiation continues. Option data above 64 KiB gets
// NBD_REP_ERR_TOO_BIG. The option phase is limited to 30 s and 1024 options.
//
// # Transmission
//
// Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_CACHE and CAN_MULTI_CONN
// always (the gateway's flush covers writes from every connection); SEND_FUA,
// SEND_TRIM and SEND_WRITE_ZEROES on writable exports; READ_ONLY when
// Options.ReadOnly is set or the export has a ReadOnly() bool method that
// returns true; SEND_DF when structured replies were negotiated.
//
// Commands and how they reach the volume (gateway.Request, Door = DoorNBD):
//
//   - READ → OpRead. The data is read before any reply header is sent. With
//     structured replies the answer is one OFFSET_DATA chunk, so DF always
//     holds. OFFSET_HOLE is never sent.
//   - WRITE → OpWrite, FUA flag → Request.FUA.
//   - FLUSH → OpFlush.
//   - TRIM → OpDiscard; WRITE_ZEROES → OpWriteZeroes with NO_HOLE →
//     Request.NoHole. FAST_ZERO is not advertised; a request carrying it
//     gets ENOTSUP. FUA on either → Request.FUA: the volume makes the range
//     durable before the reply (it flushes after the unmap or the zeroes).
//   - CACHE: accepted and ignored (success).
//   - BLOCK_STATUS for base:allocation (needs SET_META_CONTEXT): the
//     export's Extents become descriptors, holes as HOLE|ZERO and everything
//     else as 0; REQ_ONE returns one descriptor. At most 65536 descriptors
//     per reply; the reply may cover less than the request, as allowed.
//   - DISC: the server finishes and answers in-flight requests, then closes.
//
// Execution: one reader goroutine per connection parses requests. While the
// export answers a kind of request (read; write/trim/zero; flush; block
// status) in under 20 µs on average, the reader runs such requests itself
// and batches their replies into one writev before it next blocks; this
// avoids a goroutine hand-off per request on fast (cached) paths. Otherwise
// requests go to up to 128 worker goroutines per connection, so a slow or
// throttled export sees the client's full queue depth and replies go out in
// completion order. A connection starts in worker mode. At most 64 MiB of
// READ/WRITE payload is in flight per connection. Replies are queued and
// written by whichever goroutine finds the socket idle, several per writev
// under load. Buffers and request state come from pools; a 4 KiB read or
// write makes no heap allocation. A WRITE payload is read straight into the
// request buffer; when 64 KiB or more of it is still in the socket, the reader
// reads it through the socket's RawConn and, finding the socket empty, yields
// and retries (up to 200 times) before parking in the netpoller, since the
// client is normally mid-send and a park/wake-up per piece costs more
// (payload.go).
//
// A reader about to wait for the next request on an idle connection
// (nothing in flight) first polls its socket for up to Options.SpinMax
// (64 µs by default), but only while the client's recent requests came
// closer together than that; otherwise it parks at once (spin.go). At queue
// depth 1 over TCP this takes Go's netpoller wake-up out of each request.
//
// # Errors
//
// Volume errors map to NBD errors in one place (errno): ErrOutOfRange and
// ErrInvalid → EINVAL, ErrNoSpace → ENOSPC, ErrReadOnly → EPERM,
// ErrUnsupported → ENOTSUP, ErrClosed or a cancelled context → ESHUTDOWN,
// anything else → EIO and a log line. The server checks requests before they
// reach the volume: unknown commands and flags not valid for the command →
// EINVAL; zero length → EINVAL; offset+length overflowing → EINVAL; READ,
// TRIM, CACHE and BLOCK_STATUS past the end → EINVAL; WRITE and WRITE_ZEROES
// past the end → ENOSPC; writes on a read-only export → EPERM; READ or WRITE
// longer than MaxPayload → EINVAL. A rejected WRITE's payload is read and
// discarded so the stream stays in sync; only when that payload is larger than
// max(2×MaxPayload, 64 MiB) is the connection closed instead. A request with a
// bad magic closes the connection. With structured replies errors are sent as
// NBD_REPLY_TYPE_ERROR chunks with a message, otherwise as simple replies.
// A panic while running a request (in the export or in this package)
// fails that request with EIO and the connection serves on; it is logged
// at ERROR with its stack and counted (Server.Panics). *gateway.Volume
// recovers panics in Do itself (ErrIO, which maps to EIO), so the same
// policy holds for every door. Two cases close the connection instead,
// because the stream can no longer be trusted: a panic in the reply writer
// after the request's reply was queued, and a panic in the reader or the
// handshake, where there is no request to fail (logged and counted too).
// Other connections carry on. The logging and counting are internal/door's
// panic policy, shared by every door.
//
// # Shutdown
//
// Shutdown stops the listeners, closes connections that are still
// negotiating, stops reading on the others (requests already in the server's
// read buffer get ESHUTDOWN; requests still in the socket are not read and
// get no reply), waits for running requests to be answered and closes.
// If its context ends first, connections are closed at once and their
// requests' contexts cancelled. Cancelling Serve's context does the same for
// the connections accepted by that Serve call. The accept loop, the
// connection caps, the registry of connections and this order of shutdown
// are internal/door's, shared with the virtio door.
//
// ShutdownHandover is Shutdown for a gateway handover: connections in
// transmission without TLS stop exactly at a request boundary, answer
// every request they read, and are returned (a duplicate of the socket
// and the negotiated state) instead of closed; Resume serves such a
// socket in another server without a handshake (handover.go,
// docs/HANDOVER.md).
//
// # Not supported
//
// TLS on a listener served with Serve (STARTTLS gets ERR_UNSUP there;
// ServeTLS requires it, tls.go), extended headers, oldstyle negotiation, export descriptions, FAST_ZERO,
// RESIZE, OFFSET_HOLE read replies, meta contexts other than base:allocation,
// and kernel attach (netlink/ioctl) — that lives with the attach code.
package nbd
