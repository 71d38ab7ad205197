// Package waiter is how Sluice's shared-memory pollers wait for work: the
// virtio door's queues (target and initiator) and the shim door's channel
// pollers. A poller owns one Waiter and calls Wait(ring) whenever its ring
// (a Waitable) is empty; Wait returns when the ring is ready, or false
// once Stop was called. Processed(n) after each batch feeds batch mode.
// Signal adds one to an eventfd (a kick or a call).
//
// A Waiter waits in one of three modes (Options.Mode):
//
//   - Eventfd: enable notifications, re-check the ring, block.
//   - Poll: spin with notifications suppressed, yielding the P every
//     ~16 checks; after PollIdle (1 s) without work, block. It keeps a
//     core busy: for hosts with cores to spare.
//   - Adaptive (default): spin up to the window (at most SpinMax,
//     64 µs), then take 5 µs nanosleeps until the window (at most PollMax,
//     256 µs) has passed, then enable notifications, re-check, block. The
//     window follows QEMU's rule: work within it keeps it, work after it
//     but before PollMax doubles it (from 4 µs), work only after 2 ×
//     PollMax halves it, in between (a slow wake-up, not idleness) keeps
//     it (so at 1,000 IOPS it reaches 0 within a few IOs and the poller
//     behaves like Eventfd). Completions per wake-up drive
//     batch mode: when an EWMA of them reaches 8, a spin that finds
//     nothing is followed by one sleep of about 8 / (measured rate),
//     between 5 and 150 µs (OpenEBS's bounds), with notifications
//     suppressed; batch mode ends when that sleep finds nothing.
//
// SpinMax is 64 µs, not QEMU's 32 µs, because naps are expensive here: on
// the 2-core VM a 5 µs nanosleep often returns 10-50 µs later, and when
// both sides nap each one's lateness adds to the other's wait. A 4 KiB
// write through the gateway takes ~18 µs in Volume.Do, so with a 16 µs
// spin both pollers napped about once per IO and QD1 writes took 67-82 µs
// instead of 23 µs (docs/BENCHMARKS.md).
//
// Notifications from the peer stay suppressed whenever a poller is not
// blocked: VRING_USED_F_NO_NOTIFY on a virtio target, VRING_AVAIL_F_NO_INTERRUPT
// on an initiator, or with EVENT_IDX an event index kept one behind; the
// header's idle word on a shim channel (Waitable.Notify).
// Enabling is followed by a full barrier and a re-check of the ring before
// blocking, so no wake-up is lost. Blocking reads a non-blocking dup of the
// peer's eventfd through Go's netpoller (the goroutine parks and its P runs
// other work; the notes measured the same wake-up cost as a blocking read),
// with a 1 s housekeeping deadline.
//
// Three Go specifics shape this. time.Sleep cannot sleep less than about
// 1 ms, so naps are unix.Nanosleep on a locked OS thread whose timer slack
// is set to 1 µs (PR_SET_TIMERSLACK; the thread keeps it). A nap or a
// spin holds a P, so the goroutines the poller just woke, or anyone else,
// would wait behind it: adaptive pollers yield every 4 µs and after each
// batch they deliver, and stop spinning or napping as soon as a yield takes
// longer than 5 µs (other goroutines needed the CPU; blocking then lets
// batches build up, which is what eventfd mode does well under load).
// Finally a poller that yields continuously keeps the scheduler from
// polling the network (its global run queue is never empty), which delays
// every netpoller wake-up in the process to sysmon's 10 ms: only Poll
// does that, by request.
package waiter
