// Package qos is Sluice's IOFlow-style queues with an mClock scheduler: per
// tenant/volume limits, reservations, weights and priorities on one device.
//
// # Model
//
// A Scheduler stands for one device (one per gateway) with MaxInFlight
// slots: at most that many admitted requests are outstanding at once. A
// Queue is what one QoS rule names; the caller (the gateway) matches rules
// and routes requests. Requests that match no rule never come here.
//
// Optionally the device has a capacity (Options.CapacityIOPS, SetCapacity):
// a scheduler-wide token bucket in cost units per second, with a 20 ms bank,
// that paces every dispatch. On a device that is never busy (a page-cached
// pool file, where the CPU is the bottleneck) nothing would otherwise wait,
// and reservations and weights would have nothing to order; with a capacity
// they divide it. This is Ceph's osd_mclock_max_capacity_iops. The capacity
// is configured, not measured. For each
// routed request the caller does
//
//	done, err := sched.Admit(ctx, queue, qos.Read, n)
//	if err != nil { return err }   // ctx ended while waiting
//	... do the IO ...
//	done()                         // exactly once; frees the slot
//
// Admit blocks until the request is dispatched. The package has no goroutine
// and no polling: requests are dispatched inside Admit, inside done, inside
// SetLimits, and by one timer per scheduler that is armed only while a slot
// is free and every waiting request is held back by a limit.
//
// # Cost
//
// A read or write of n bytes costs max(1, ceil(n/CostUnit)) units (CostUnit
// defaults to 8 KiB, so 512 B costs 1 and 64 KiB costs 8) and is charged n
// bytes. Other (flush, discard, write-zeroes) costs 1 unit and 0 bytes. IOPS
// limits, the IOPS reservation and weights count units; BPS limits and the
// BPS reservation count bytes.
//
// # Limits
//
// Each of the six limits (IOPS, BPS; ReadIOPS, ReadBPS; WriteIOPS,
// WriteBPS) is a token bucket of depth limit × Burst (Burst defaults to
// DefaultBurst, 100 ms). Read requests are checked against IOPS, BPS and
// the Read pair, writes against IOPS, BPS and the Write pair, Other against
// IOPS only. Like QEMU's throttling the bucket is a meter with debt: a
// request goes when no applicable bucket is in debt and then takes its full
// cost, so a request larger than the bank is not stuck. Hence over any
// window of length T a queue gets at most limit×T + bank + one request,
// whatever spare capacity the device has; the long-run rate is exact. A new
// queue, or a limit newly switched on, starts with an empty bank: the first
// second after creating a rule is not inflated by a burst. An idle queue
// banks up to the bucket depth; that much is then admitted at once.
//
// Within a queue requests wait in one FIFO per class, so writes held back
// by WriteIOPS do not block reads behind them; across classes a queue serves
// its oldest eligible request.
//
// # Scheduling (mClock)
//
// When a slot is free the scheduler picks, among queues whose oldest
// eligible request is within all its limits:
//
//  1. Reservation phase: a queue whose R tag is due (R ≤ now), smallest R
//     first. A reserved dispatch moves R by cost/ReservationIOPS (or
//     bytes/ReservationBPS, whichever is shorter when both are set). Only
//     reserved dispatches move R (dmClock's reduce_reservation_tags), and R
//     restarts at now when an idle queue gets a request, so idle time is
//     not banked. A reserved queue that fell behind (the device is slower
//     than the sum of reservations) later catches up by at most one Burst
//     of its reservation; older arrears are forgiven. A changed
//     reservation moves an R that is ahead of now back to now: its lead
//     was counted at the old rate.
//  2. Weight phase: the highest Priority first; within it the smallest P
//     tag, then the oldest request. Every dispatch (either phase) moves P by
//     cost/Weight. P tags live in virtual time (start-time fair queueing): a
//     queue's next start tag is max(its P, the start tag of the last
//     weight-phase dispatch), so a queue that was idle, held back by a
//     limit, or outranked does not come back with credit and monopolise the
//     device; it shares by weight from then on (mClock's max(now, prev)
//     rule, in the virtual clock).
//
// Consequences: a queue gets at least its reservation when the device can
// give it, and otherwise max(reservation, weight share) of what the device
// does, never more than its limits. The scheduler is work conserving: a slot
// is never left idle while a queue within its limits has waiting work;
// reservations are not limits (a reserved queue alone uses the whole device).
// Priority is strict in the weight phase: a lower-priority queue gets spare
// capacity only when no higher-priority queue has an eligible request, but
// reservations of every priority are served first.
//
// # Live changes
//
// SetLimits applies at once, to waiting requests too. A bucket keeps the
// tokens (or debt) it had, cut to the new depth; debt is repaid at the new
// rate. Tags are kept. Close releases waiting requests (they are admitted
// and owe done, even beyond MaxInFlight) and later Admit calls on the closed
// queue pass through at once, uncounted, with a no-op done.
//
// # Cancellation
//
// If ctx ends while a request waits, the request leaves its queue, nothing
// is charged, no slot is freed, and Admit returns an error wrapping
// ctx.Err(). If it was dispatched at the same moment, Admit returns success
// and the caller owes done.
//
// # Cost of the fast path
//
// When nothing waits anywhere and a slot is free, Admit is one mutex, one
// clock read if the queue has a limit or reservation, and no allocation; done
// is one mutex. A waiting request uses a pooled waiter and no goroutine.
// Dispatch scans the queues that have waiting requests (O(active queues) per
// dispatch), which suits tens of queues per device, not thousands.
//
// # Stats
//
// Queue.Stats gives admitted ops and bytes, ops served as reservation, total
// time requests spent waiting (for a limit or for a slot), the current depth
// and the number in flight, in all and per class (with the cost units
// admitted). Scheduler.Stats gives HeldTime: how long the device held work
// back, that is, some waiting request that its limits would let go waited
// for a slot or for the capacity. It tells a saturated device from queues
// that only wait for their own limits (the cluster controller's capacity
// measurement uses it).
//
// # Not done
//
//   - No distributed dmClock: limits and reservations are per scheduler
//     (per device, per gateway). A global SLO must be split into per-gateway
//     Limits by a controller.
//   - The device's capacity is MaxInFlight slots, fixed; it is not measured
//     or adapted (Ceph needed that to make mClock reservations mean anything).
//     Reservations are only as good as MaxInFlight is small enough that
//     the device queue, not Sluice's, is where requests wait.
//   - Cost is linear in size (one unit per CostUnit); there is no
//     per-class or piecewise-linear cost curve, and no sequential/random
//     distinction.
//   - No burst rate (QEMU's *-max): a bank is spent at device speed.
//   - No AtLimit Allow/Reject modes: a request over a limit always waits.
//   - Timers are real Go timers (about 1 ms late here), fine for limits
//     measured over 100 ms or more.
package qos
