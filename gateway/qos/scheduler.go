package qos

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// Defaults for Options.
const (
	DefaultCostUnit    = 8 << 10
	DefaultMaxInFlight = 64
)

// vRebase is where the virtual time is shifted back to zero, so that tag
// increments (≥ 1/MaxWeight) stay far above float64 resolution.
const vRebase = 1e9

// Options configure a Scheduler. Zero fields take the defaults.
type Options struct {
	// Clock is the time source; nil means RealClock().
	Clock Clock
	// CostUnit is the size of one cost unit in bytes: a read or write of
	// n bytes costs max(1, ceil(n/CostUnit)) units. Default 8 KiB.
	CostUnit int64
	// MaxInFlight is the number of device slots: how many admitted
	// requests may be outstanding at once across all queues of this
	// scheduler. Default 64.
	MaxInFlight int
	// CapacityIOPS is the device's capacity in cost units per second; 0
	// means unknown. When set, dispatch is paced to it, so requests wait in
	// their queues whenever demand exceeds it and reservations and weights
	// divide it — even on a device that is never busy because the real
	// bottleneck is the CPU (a page-cached pool file). This is Ceph's
	// osd_mclock_max_capacity_iops. Without it, only MaxInFlight makes
	// requests wait, and only a slow device makes weights act.
	CapacityIOPS float64
}

// phase says which mClock phase dispatched a request.
type phase uint8

const (
	phaseWeight phase = iota
	phaseReservation
)

// Scheduler orders requests of all queues of one device. It has no
// goroutine: requests are dispatched by Admit, by done functions, by
// SetLimits, and by a timer armed only while a free slot waits for a limit.
type Scheduler struct {
	clock       Clock
	epoch       time.Time
	costUnit    int64
	maxInFlight int
	pool        sync.Pool // *waiter

	capacity bucket // paces all dispatch when CapacityIOPS is set; guarded by mu

	mu       sync.Mutex
	inFlight int                 // admitted, done not yet called
	nWaiting int                 // waiters in all queues
	active   []*Queue            // queues with at least one waiter
	queues   map[*Queue]struct{} // open queues
	vtime    float64             // virtual time: start tag of the last weight-phase dispatch
	seq      uint64              // arrival order of waiters
	timer    Timer               // limit wake-up, nil if none armed
	timerAt  float64
	timerGen uint64

	// The device holds work back while a waiting request that its limits
	// let go waits for a slot or for the capacity (see Stats).
	held      bool
	heldSince float64
	heldTotal float64 // seconds, spans that ended

	admitted [numClasses]Admitted // by every queue, closed ones included
}

// SchedulerStats is a snapshot of a scheduler's counters.
type SchedulerStats struct {
	InFlight int // admitted requests whose done has not been called
	Waiting  int // requests waiting in all queues
	// HeldTime is the total time during which the device held work back:
	// some waiting request that its queue's limits would let go waited for
	// a free slot (MaxInFlight) or for the capacity (CapacityIOPS). It
	// grows while the device is the bottleneck, not while queues wait
	// only for their own limits. The span in progress is included.
	HeldTime time.Duration
	// Admitted is what all the scheduler's queues admitted, by class
	// (indexed by Read, Write, Other), queues since closed included.
	Admitted [numClasses]Admitted
}

// Admitted counts admitted requests.
type Admitted struct {
	Ops   uint64
	Bytes uint64
	Units uint64 // cost units
}

// Stats returns a snapshot of the scheduler's counters.
func (s *Scheduler) Stats() SchedulerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := s.heldTotal
	if s.held {
		held += math.Max(0, s.now()-s.heldSince)
	}
	return SchedulerStats{InFlight: s.inFlight, Waiting: s.nWaiting, HeldTime: time.Duration(held * 1e9), Admitted: s.admitted}
}

// noteHeldLocked records at now whether the device holds work back.
func (s *Scheduler) noteHeldLocked(now float64) {
	held := s.nWaiting > 0 && (s.inFlight >= s.maxInFlight || s.capacity.wait(now) > 0) && s.anyEligibleLocked(now)
	s.setHeldLocked(held, now)
}

func (s *Scheduler) setHeldLocked(held bool, now float64) {
	switch {
	case held && !s.held:
		s.held, s.heldSince = true, now
	case !held && s.held:
		s.held = false
		s.heldTotal += math.Max(0, now-s.heldSince)
	}
}

// anyEligibleLocked reports whether some waiting request is within its
// queue's limits at now.
func (s *Scheduler) anyEligibleLocked(now float64) bool {
	for _, q := range s.active {
		if w, _ := q.pick(now); w != nil {
			return true
		}
	}
	return false
}

// waiter is one request waiting in a queue. Pooled.
type waiter struct {
	ready chan struct{} // receives one value when dispatched (cap 1)

	// Guarded by Scheduler.mu.
	q          *Queue
	class      Class
	cost       float64 // cost units
	bytes      int64   // bytes charged to BPS limits
	seq        uint64
	arrived    float64
	dispatched bool
	at         float64 // dispatch time
	prev, next *waiter
}

// NewScheduler returns a scheduler for one device.
func NewScheduler(opts Options) *Scheduler {
	if opts.Clock == nil {
		opts.Clock = RealClock()
	}
	if opts.CostUnit <= 0 {
		opts.CostUnit = DefaultCostUnit
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	s := &Scheduler{
		clock:       opts.Clock,
		epoch:       opts.Clock.Now(),
		costUnit:    opts.CostUnit,
		maxInFlight: opts.MaxInFlight,
		queues:      make(map[*Queue]struct{}),
	}
	s.capacity.set(opts.CapacityIOPS, capacityBank, 0)
	s.pool.New = func() any { return &waiter{ready: make(chan struct{}, 1)} }
	return s
}

// capacityBank is how much of the capacity an idle device banks, in
// seconds: enough to absorb ~1 ms of timer lateness at any rate without
// losing throughput, small enough that pacing still orders requests.
const capacityBank = 0.02

// SetCapacity changes the device capacity (cost units per second; 0 turns
// pacing off). It applies to requests already waiting.
func (s *Scheduler) SetCapacity(iops float64) error {
	if math.IsNaN(iops) || math.IsInf(iops, 0) || iops < 0 {
		return fmt.Errorf("%w: capacity %g", ErrInvalidLimits, iops)
	}
	s.mu.Lock()
	s.capacity.set(iops, capacityBank, s.now())
	s.dispatchLocked()
	s.mu.Unlock()
	return nil
}

// now returns seconds since the scheduler's epoch.
func (s *Scheduler) now() float64 { return s.clock.Now().Sub(s.epoch).Seconds() }

// Cost returns the cost in units and the bytes charged to BPS limits for a
// request of class c and size bytes. Reads and writes cost
// max(1, ceil(bytes/CostUnit)) units and their bytes; Other costs 1 unit and
// no bytes (a flush or discard moves no data through the gateway, and
// charging a whole-volume discard by its extent would stall the queue).
func (s *Scheduler) Cost(c Class, bytes int64) (units int64, charged int64) {
	if c == Other {
		return 1, 0
	}
	units = bytes / s.costUnit
	if bytes%s.costUnit != 0 {
		units++
	}
	if units < 1 {
		units = 1
	}
	return units, bytes
}

// Admit waits until the request (class c, size bytes) may go to the
// device, then returns a function to call exactly once when the IO is done;
// it frees the device slot. If ctx ends first the request leaves the queue,
// nothing is charged, and the error wraps ctx.Err(). If the request is
// dispatched at the same moment ctx ends, Admit may return success.
//
// A closed queue admits everything at once, uncounted.
func (s *Scheduler) Admit(ctx context.Context, q *Queue, c Class, bytes int64) (done func(), err error) {
	if q.s != s {
		return nil, fmt.Errorf("%w: %q", ErrForeignQueue, q.name)
	}
	if c >= numClasses {
		return nil, fmt.Errorf("%w: %d", ErrInvalidClass, uint8(c))
	}
	if bytes < 0 {
		return nil, fmt.Errorf("%w: %d", ErrInvalidBytes, bytes)
	}
	w, closed := s.submit(q, c, bytes)
	if closed {
		return func() {}, nil
	}
	if w == nil {
		return q.doneFns[c], nil
	}
	select {
	case <-w.ready:
		w.q = nil
		s.pool.Put(w)
		return q.doneFns[c], nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	if w.dispatched {
		s.mu.Unlock()
		<-w.ready
		w.q = nil
		s.pool.Put(w)
		return q.doneFns[c], nil
	}
	s.removeLocked(w, s.now())
	s.mu.Unlock()
	w.q = nil
	s.pool.Put(w)
	return nil, fmt.Errorf("qos: queue %q: %w", q.name, ctx.Err())
}

// submit is Admit without the waiting. It returns closed if the queue is
// closed (admitted, nothing owed), a nil waiter if the request was admitted
// at once (the caller owes a done call), or the waiter now in the queue; the
// waiter's ready channel receives when it is dispatched.
func (s *Scheduler) submit(q *Queue, c Class, bytes int64) (w *waiter, closed bool) {
	cost, charged := s.Cost(c, bytes)
	s.mu.Lock()
	if q.closed {
		s.mu.Unlock()
		return nil, true
	}
	// Fast path: nobody waits anywhere and a slot is free, so this request
	// is the only candidate; it goes if its limits allow.
	if s.nWaiting == 0 && s.inFlight < s.maxInFlight {
		var now float64
		if q.limited || q.reserved || s.capacity.rate > 0 {
			now = s.now()
		}
		if (!q.limited || q.classWait(c, now) == 0) && s.capacity.wait(now) == 0 {
			q.activate(now)
			ph := phaseWeight
			if q.reserved && q.rFin <= now {
				ph = phaseReservation
			}
			s.admitLocked(q, c, float64(cost), charged, ph, now, 0)
			s.mu.Unlock()
			return nil, false
		}
	}
	now := s.now()
	w = s.pool.Get().(*waiter)
	s.seq++
	*w = waiter{ready: w.ready, q: q, class: c, cost: float64(cost), bytes: charged, seq: s.seq, arrived: now}
	if q.nWaiting == 0 {
		q.activate(now)
		q.activeIdx = len(s.active)
		s.active = append(s.active, q)
	}
	q.fifo[c].push(w)
	q.nWaiting++
	s.nWaiting++
	s.dispatchLocked()
	if w.dispatched {
		s.mu.Unlock()
		<-w.ready
		w.q = nil
		s.pool.Put(w)
		return nil, false
	}
	s.mu.Unlock()
	return w, false
}

// unqueueLocked takes waiter w out of its queue's FIFO and the waiting
// counts; a queue left with no waiter stops being active.
func (s *Scheduler) unqueueLocked(w *waiter) {
	q := w.q
	q.fifo[w.class].remove(w)
	q.nWaiting--
	s.nWaiting--
	if q.nWaiting == 0 {
		s.deactivateLocked(q)
	}
}

// removeLocked takes an undispatched waiter out of its queue at time now.
func (s *Scheduler) removeLocked(w *waiter, now float64) {
	q := w.q
	s.unqueueLocked(w)
	if now > w.arrived {
		q.st.class[w.class].waited += now - w.arrived
	}
	s.noteHeldLocked(now)
}

func (s *Scheduler) deactivateLocked(q *Queue) {
	i := q.activeIdx
	last := len(s.active) - 1
	s.active[i] = s.active[last]
	s.active[i].activeIdx = i
	s.active[last] = nil
	s.active = s.active[:last]
	q.activeIdx = -1
}

// admitLocked accounts one request of q going to the device at now:
// limits, mClock tags, stats, slots.
func (s *Scheduler) admitLocked(q *Queue, c Class, cost float64, bytes int64, ph phase, now, waited float64) {
	if q.limited {
		q.charge(c, cost, bytes, now)
	}
	s.capacity.take(cost, now)
	// Proportional tag, start-time fair queueing in virtual time: a queue
	// that was idle, limited or outranked restarts at the current virtual
	// time rather than cashing in credit.
	start := math.Max(q.p, s.vtime)
	q.p = start + cost/q.weight
	switch ph {
	case phaseWeight:
		s.vtime = start
	case phaseReservation:
		// Reservation lag beyond one burst is forgiven, so a queue that
		// could not get its reservation (device too slow) does not
		// monopolise the device later to catch up.
		q.rFin = math.Max(q.rFin, now-q.burst) + q.resInterval(c, cost, bytes, s.costUnit)
		q.st.reserved++
	}
	q.count(c, cost, bytes, waited)
	q.inFlight++
	s.inFlight++
	if s.vtime > vRebase {
		shift := s.vtime
		for x := range s.queues {
			x.p -= shift
		}
		s.vtime = 0
	}
}

// dispatchLocked fills free slots with waiting requests in mClock order
// and, if a slot stays free while requests wait for their limits, arms the
// timer for the earliest moment one of them becomes eligible.
func (s *Scheduler) dispatchLocked() {
	if s.nWaiting == 0 || s.inFlight >= s.maxInFlight {
		if s.held || s.nWaiting > 0 {
			s.noteHeldLocked(s.now())
		}
		return
	}
	now := s.now()
	for s.inFlight < s.maxInFlight && s.nWaiting > 0 {
		if d := s.capacity.wait(now); d > 0 {
			s.armTimerLocked(now, now+d)
			s.noteHeldLocked(now)
			return
		}
		var resQ, wQ *Queue
		var resW, wW *waiter
		var wStart float64
		wake := math.Inf(1)
		for _, q := range s.active {
			w, qwake := q.pick(now)
			if w == nil {
				wake = math.Min(wake, qwake)
				continue
			}
			// Reservation phase: smallest R tag that is due.
			if q.reserved && q.rFin <= now &&
				(resW == nil || q.rFin < resQ.rFin || (q.rFin == resQ.rFin && w.seq < resW.seq)) {
				resQ, resW = q, w
			}
			// Weight phase: highest priority, then smallest P tag, then
			// oldest request.
			start := math.Max(q.p, s.vtime)
			if wW == nil || q.lim.Priority > wQ.lim.Priority ||
				(q.lim.Priority == wQ.lim.Priority && (start < wStart || (start == wStart && w.seq < wW.seq))) {
				wQ, wW, wStart = q, w, start
			}
		}
		switch {
		case resW != nil:
			s.dispatchWaiterLocked(resW, phaseReservation, now)
		case wW != nil:
			s.dispatchWaiterLocked(wW, phaseWeight, now)
		default:
			s.armTimerLocked(now, wake)
			s.setHeldLocked(false, now)
			return
		}
	}
	s.noteHeldLocked(now)
}

func (s *Scheduler) dispatchWaiterLocked(w *waiter, ph phase, now float64) {
	q := w.q
	s.unqueueLocked(w)
	s.admitLocked(q, w.class, w.cost, w.bytes, ph, now, math.Max(0, now-w.arrived))
	w.dispatched = true
	w.at = now
	w.ready <- struct{}{}
}

// armTimerLocked makes sure dispatchLocked runs again by time at.
func (s *Scheduler) armTimerLocked(now, at float64) {
	if math.IsInf(at, 1) {
		return
	}
	if s.timer != nil && s.timerAt <= at {
		return
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timerGen++
	gen := s.timerGen
	d := time.Duration(math.Ceil((at - now) * 1e9))
	if d < 1 {
		d = 1
	}
	s.timerAt = at
	s.timer = s.clock.AfterFunc(d, func() { s.onTimer(gen) })
}

func (s *Scheduler) onTimer(gen uint64) {
	s.mu.Lock()
	if gen == s.timerGen {
		s.timer = nil
		s.dispatchLocked()
	}
	s.mu.Unlock()
}
