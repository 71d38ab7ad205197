package waiter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Mode says how a queue's poller waits for work: new requests on the
// target, completions on the initiator.
type Mode uint8

// Wait modes. See the package doc for the algorithm.
const (
	// Adaptive spins for a short, self-tuning window, then takes short
	// nanosleeps on a locked OS thread, then re-enables notifications,
	// re-checks the ring and blocks on the eventfd. Under sustained load
	// it switches to timed sleeps sized by the measured rate.
	Adaptive Mode = iota
	// Eventfd re-enables notifications and blocks on the eventfd as
	// soon as the ring is empty (classic interrupt mode).
	Eventfd
	// Poll spins with notifications suppressed. After PollIdle without
	// work it blocks on the eventfd, so an idle connection costs no CPU.
	Poll
)

func (m Mode) String() string {
	switch m {
	case Adaptive:
		return "adaptive"
	case Eventfd:
		return "eventfd"
	case Poll:
		return "poll"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses "adaptive", "eventfd" or "poll".
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Adaptive, Eventfd, Poll} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("waiter: unknown wait mode %q (adaptive, eventfd, poll)", s)
}

// Options tune a poller. The zero value is the default adaptive mode.
type Options struct {
	Mode Mode
	// SpinMax caps the spinning part of the adaptive window (default 16 µs).
	SpinMax time.Duration
	// PollMax caps the whole adaptive window, spinning plus timed sleeps,
	// before the poller blocks (default 256 µs, QEMU's poll-max-ns is 32 µs
	// of spinning only).
	PollMax time.Duration
	// PollIdle: in Poll mode, block after this long without work
	// (default 1 s; negative: never block).
	PollIdle time.Duration
	// Spinners, if set, caps how many of the waiters sharing it spin or
	// nap at once (adaptive mode); the others block on their eventfd at
	// once. For doors with a poller per client process (the shim), whose
	// pollers can outnumber the cores many times over.
	Spinners *Spinners
}

// Spinners is a cap on spinning waiters, shared by the waiters of one
// server (Options.Spinners). It also keeps every one of them from
// spinning or napping while the machine has more runnable tasks than CPUs
// (load.go): then they block at once.
type Spinners struct {
	max  int32
	n    atomic.Int32
	load *osLoad
}

// NewSpinners returns a cap of n spinning waiters (at least 1).
func NewSpinners(n int) *Spinners {
	return &Spinners{max: int32(min(max(n, 1), 1<<20)), load: newOSLoad()}
}

// busy reports whether the machine's CPUs are all taken (a nil cap: no).
func (s *Spinners) busy() bool { return s != nil && s.load.contended() }

// acquire takes a place to spin in; a nil cap always has one.
func (s *Spinners) acquire() bool {
	if s == nil {
		return true
	}
	if s.busy() {
		return false
	}
	for {
		n := s.n.Load()
		if n >= s.max {
			return false
		}
		if s.n.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *Spinners) release() {
	if s != nil {
		s.n.Add(-1)
	}
}

// Tuning constants (notes/virtio.md §10.4).
const (
	defaultSpinMax  = 64 * time.Microsecond
	defaultPollMax  = 256 * time.Microsecond
	defaultPollIdle = time.Second
	windowStart     = 4 * time.Microsecond // first non-zero window
	napShort        = 5 * time.Microsecond // one timed sleep in the window
	napMin          = 5 * time.Microsecond // batch-mode sleep bounds (OpenEBS)
	napMax          = 150 * time.Microsecond
	batchTarget     = 8 // items per wake-up that means "sustained load"
	timerSlackNs    = 1000
	housekeeping    = time.Second // re-check the ring while blocked
)

func (o Options) WithDefaults() Options {
	if o.SpinMax <= 0 {
		o.SpinMax = defaultSpinMax
	}
	if o.PollMax <= 0 {
		o.PollMax = defaultPollMax
	}
	if o.PollMax < o.SpinMax {
		o.PollMax = o.SpinMax
	}
	if o.PollIdle == 0 {
		o.PollIdle = defaultPollIdle
	}
	return o
}

// Waitable is a ring as a poller sees it.
type Waitable interface {
	// Ready reports whether there is work (avail entries on a virtio
	// target, used entries on an initiator, submitted slots on a shim
	// channel).
	Ready() bool
	// Notify enables (true) or suppresses (false) the peer's notifications,
	// followed by a full barrier.
	Notify(on bool)
}

// Waiter is one queue's poller state. Only Stop and the counters are used
// from other goroutines.
type Waiter struct {
	opt Options
	// ev is a dup of the peer's eventfd (kick on the target, call on the
	// initiator) in non-blocking mode, read through Go's netpoller so a
	// blocked poller holds no P. nil: no usable fd, poll only.
	ev       *os.File
	evBroken bool // ev is not an eventfd we can read (poller only)

	stopped atomic.Bool

	window    time.Duration // adaptive polling window
	batch     float64       // EWMA of items per wake-up
	rate      float64       // EWMA of items per second
	lastWake  time.Time
	batchMode bool
	slackTid  int

	ctr *Counters // shared by the waiters of one client or server
}

// Stats count what the pollers of a client or server did while
// waiting, summed over their queues (for benchmarks and tuning).
type Stats struct {
	Wakeups   uint64 // returns from wait with work
	Blocks    uint64 // times a poller blocked on the eventfd
	Naps      uint64 // timed sleeps (nanosleep)
	Contended uint64 // yields that found other goroutines waiting
	Capped    uint64 // waits that blocked at once: Options.Spinners was full
}

// Counters is where waiters count (Stats); one per client or server,
// shared by its queues' waiters.
type Counters struct {
	wakeups, blocks, naps, contended, capped atomic.Uint64
}

// Stats reads the counters.
func (c *Counters) Stats() Stats {
	return Stats{Wakeups: c.wakeups.Load(), Blocks: c.blocks.Load(), Naps: c.naps.Load(), Contended: c.contended.Load(), Capped: c.capped.Load()}
}

// New returns a waiter that blocks on fd (-1: none) and counts into
// ctr (nil: its own counters). fd stays owned by the caller; the waiter
// uses a dup. The dup shares the open file description, so fd becomes
// non-blocking, as vhost-user peers expect.
func New(opt Options, fd int, ctr *Counters) (*Waiter, error) {
	if ctr == nil {
		ctr = new(Counters)
	}
	w := &Waiter{opt: opt.WithDefaults(), window: windowStart, ctr: ctr}
	if fd < 0 {
		return w, nil
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("waiter: dup eventfd: %w", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("waiter: eventfd non-blocking: %w", err)
	}
	w.ev = os.NewFile(uintptr(dup), "eventfd")
	return w, nil
}

// Stop makes Wait return false, now or at its next call.
func (w *Waiter) Stop() {
	w.stopped.Store(true)
	if w.ev != nil {
		w.ev.SetReadDeadline(time.Unix(1, 0))
	}
}

func (w *Waiter) Close() {
	if w.ev != nil {
		w.ev.Close()
	}
}

// Signal adds 1 to an eventfd (a kick or a call).
func Signal(fd int) {
	if fd < 0 {
		return
	}
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	for {
		if _, err := unix.Write(fd, one[:]); err != unix.EINTR {
			return
		}
	}
}

// processed tells the waiter how many items the last wake-up found; it
// drives the batch-mode decision.
func (w *Waiter) Processed(n int) {
	now := time.Now()
	if !w.lastWake.IsZero() {
		if dt := now.Sub(w.lastWake).Seconds(); dt > 0 {
			w.rate = 0.75*w.rate + 0.25*float64(n)/dt
		}
	}
	w.lastWake = now
	w.batch = 0.75*w.batch + 0.25*float64(n)
	w.batchMode = w.opt.Mode == Adaptive && w.batch >= batchTarget && w.rate > 0
}

// Wait returns true when t is ready and false when the waiter was stopped.
// Notifications from the peer are suppressed when it returns true.
func (w *Waiter) Wait(t Waitable) bool {
	if w.stopped.Load() {
		return false
	}
	switch {
	case w.ev == nil || w.evBroken:
		return w.spin(t, w.opt.PollIdle)
	case w.opt.Mode == Eventfd:
		return w.block(t)
	case w.opt.Mode == Poll:
		return w.spin(t, w.opt.PollIdle)
	}
	return w.adaptive(t)
}

// Spinning and the Go scheduler. A poller that never yields keeps its P
// from the goroutines it just woke; one that yields continuously keeps the
// global run queue non-empty, so the scheduler never polls the netpoller
// and goroutines blocked on sockets or eventfds wait for sysmon (up to 10
// ms). Poll yields every spinYield checks (about a microsecond): it is
// for hosts with cores to spare. Adaptive yields every yieldEvery and
// stops spinning as soon as a yield shows contention.
const (
	spinYield      = 16 // ready checks between clock reads (and, in Poll, yields)
	yieldEvery     = 4 * time.Microsecond
	contendedYield = 5 * time.Microsecond
)

// spin polls t until it is ready; after idle (if positive) it blocks.
func (w *Waiter) spin(t Waitable, idle time.Duration) bool {
	start := time.Now()
	for i := 1; ; i++ {
		if t.Ready() {
			w.ctr.wakeups.Add(1)
			return true
		}
		if i%spinYield == 0 {
			if w.stopped.Load() {
				return false
			}
			if idle > 0 && time.Since(start) > idle {
				return w.block(t)
			}
			runtime.Gosched()
		}
	}
}

// adaptive: spin, then a batch nap or timed sleeps, then block (package
// doc).
func (w *Waiter) adaptive(t Waitable) bool {
	if !w.opt.Spinners.acquire() {
		w.ctr.capped.Add(1)
		return w.block(t)
	}
	held := true
	release := func() {
		if held {
			w.opt.Spinners.release()
			held = false
		}
	}
	defer release()
	start := time.Now()
	lastYield := start
	spin := w.spinBudget()
	for i := 1; ; i++ {
		if t.Ready() {
			w.adjust(time.Since(start))
			w.ctr.wakeups.Add(1)
			return true
		}
		if i%spinYield == 0 {
			if w.stopped.Load() {
				return false
			}
			now := time.Now()
			if now.Sub(start) >= spin {
				break
			}
			if now.Sub(lastYield) >= yieldEvery {
				if w.yield() || w.opt.Spinners.busy() {
					release()
					return w.block(t)
				}
				lastYield = time.Now()
			}
		}
	}
	if w.batchMode {
		// Sustained load and the spin found nothing: sleep long enough
		// for about batchTarget items to gather, notifications still
		// suppressed, unless other goroutines need this P (then block
		// and let them run).
		if w.yield() {
			release()
			return w.block(t)
		}
		w.nap(batchNap(w.rate))
		if t.Ready() {
			w.ctr.wakeups.Add(1)
			return true
		}
		w.batchMode = false
		w.batch = 0
	}
	for time.Since(start) < w.window {
		if w.yield() || w.opt.Spinners.busy() {
			release()
			return w.block(t)
		}
		w.nap(napShort)
		if t.Ready() {
			w.adjust(time.Since(start))
			w.ctr.wakeups.Add(1)
			return true
		}
		if w.stopped.Load() {
			return false
		}
	}
	release()
	ok := w.block(t)
	w.adjust(time.Since(start))
	return ok
}

// spinBudget is how long the next wait spins before it naps: the window,
// at most SpinMax.
func (w *Waiter) spinBudget() time.Duration { return min(w.window, w.opt.SpinMax) }

// batchNap is the batch-mode sleep at a measured rate of items per
// second: long enough for batchTarget items, within [napMin, napMax].
func batchNap(rate float64) time.Duration {
	if rate <= 0 {
		return napMax
	}
	d := time.Duration(float64(batchTarget) / rate * float64(time.Second))
	return min(max(d, napMin), napMax)
}

// yield lets other goroutines have this P and reports whether any needed
// it (the yield took longer than contendedYield). Spinning or napping then
// only delays the goroutines that produce our work: the poller blocks
// instead, and wake-ups are amortised over the batches that build up.
func (w *Waiter) yield() bool {
	t0 := time.Now()
	runtime.Gosched()
	if time.Since(t0) > contendedYield {
		w.ctr.contended.Add(1)
		return true
	}
	return false
}

// nap sleeps about d with nanosleep(2) on a locked OS thread whose timer
// slack is 1 µs: time.Sleep rounds sub-millisecond sleeps up to ~1 ms, and
// the default 50 µs slack stretches a 5 µs nanosleep to ~60 µs. The thread
// keeps the 1 µs slack afterwards (it only makes its timers more precise).
// A nap holds the P: callers yield first and skip it under contention.
func (w *Waiter) nap(d time.Duration) {
	w.ctr.naps.Add(1)
	runtime.LockOSThread()
	if tid := unix.Gettid(); tid != w.slackTid {
		unix.Prctl(unix.PR_SET_TIMERSLACK, timerSlackNs, 0, 0, 0)
		w.slackTid = tid
	}
	ts := unix.NsecToTimespec(int64(d))
	unix.Nanosleep(&ts, nil) // EINTR (Go's preemption signal) just ends it early
	runtime.UnlockOSThread()
}

// adjust tunes the window after a wait of d (QEMU's adjust_polling_time,
// with a dead band): work inside the window keeps it, work soon after
// grows it, work only after idleAfter (2 × PollMax) shrinks it. Waits
// between PollMax and idleAfter keep it: on a busy VM a blocked poller's
// eventfd wake-up alone can take 100-400 µs, and shrinking on those made
// the window collapse under a steady QD1 stream of ~20 µs writes (each
// collapse costs more blocked waits, which shrank it again).
func (w *Waiter) adjust(d time.Duration) {
	switch {
	case d <= w.window:
	case d > 2*w.opt.PollMax:
		w.window /= 2
	case d > w.opt.PollMax:
	default:
		w.window = min(max(w.window*2, windowStart), w.opt.PollMax)
	}
}

// block arms notifications, re-checks, and waits for the eventfd in the
// netpoller (the goroutine parks; its P runs other work). Notifications
// are suppressed again when it returns true.
func (w *Waiter) block(t Waitable) bool {
	t.Notify(true)
	if t.Ready() {
		t.Notify(false)
		w.ctr.wakeups.Add(1)
		return true
	}
	if w.ev == nil || w.evBroken {
		return w.idle(t)
	}
	w.ctr.blocks.Add(1)
	var b [8]byte
	for {
		// Housekeeping deadline: re-check the ring now and then even if
		// a notification got lost. Set before the stop check, so a stop
		// racing with us always leaves a deadline in the past.
		w.ev.SetReadDeadline(time.Now().Add(housekeeping))
		if w.stopped.Load() {
			return false
		}
		n, err := w.ev.Read(b[:])
		if w.stopped.Load() {
			return false
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) || err == nil && n != len(b) {
			// Not an eventfd we can read: poll slowly instead.
			w.evBroken = true
			return w.idle(t)
		}
		if t.Ready() {
			t.Notify(false)
			w.ctr.wakeups.Add(1)
			return true
		}
	}
}

// idle waits without an eventfd (the peer sent none, or a broken one):
// millisecond sleeps with notifications still armed.
func (w *Waiter) idle(t Waitable) bool {
	for !t.Ready() {
		if w.stopped.Load() {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	t.Notify(false)
	w.ctr.wakeups.Add(1)
	return true
}
