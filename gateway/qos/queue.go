package qos

import (
	"fmt"
	"math"
	"time"
)

// Queue is one IOFlow queue: the requests that one rule routes, with that
// rule's limits, reservation, weight and priority. Create it with
// Scheduler.NewQueue; all its state is guarded by the scheduler's mutex.
type Queue struct {
	s       *Scheduler
	name    string
	doneFns [numClasses]func() // q.complete per class, built once so Admit does not allocate

	lim      Limits
	weight   float64
	burst    float64 // seconds
	limited  bool    // some limit is set
	reserved bool    // some reservation is set
	b        [numBuckets]bucket

	fifo      [numClasses]waitList // waiting requests, per class
	nWaiting  int
	activeIdx int // index in Scheduler.active, or -1
	inFlight  int
	closed    bool

	p    float64 // P tag: virtual finish of the last dispatched request
	rFin float64 // R tag: when the next reserved request is due (seconds)

	st struct {
		ops, bytes, reserved uint64
		class                [numClasses]classCounters
	}
}

// classCounters are one class's share of a queue's counters.
type classCounters struct {
	ops, bytes, units uint64
	waited            float64 // seconds
	inFlight          int
}

// QueueStats is a snapshot of one queue's counters. Its JSON form has
// snake_case keys and times in seconds (json.go).
type QueueStats struct {
	Name          string
	Limits        Limits
	AdmittedOps   uint64        // requests admitted (including those released by Close)
	AdmittedBytes uint64        // bytes of admitted reads and writes
	ReservedOps   uint64        // of AdmittedOps, those served as reservation
	ThrottledTime time.Duration // total time requests spent waiting in this queue, for a limit or a slot, including those waiting now
	Depth         int           // requests waiting now
	InFlight      int           // admitted requests whose done has not been called
	// Classes splits the counters by class (indexed by Read, Write,
	// Other), for callers that meter reads and writes apart (the cluster
	// controller's reports).
	Classes [numClasses]ClassStats
}

// ClassStats are one class's share of a queue's counters.
type ClassStats struct {
	Ops      uint64        // requests admitted
	Bytes    uint64        // bytes admitted
	Units    uint64        // cost units admitted (what IOPS limits count)
	Waited   time.Duration // time requests spent waiting, for a limit or a slot, including those waiting now
	Depth    int           // requests waiting now
	InFlight int           // admitted, done not yet called
}

// NewQueue creates a queue with limits l (see Limits.Validate).
func (s *Scheduler) NewQueue(name string, l Limits) (*Queue, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("queue %q: %w", name, err)
	}
	q := &Queue{s: s, name: name, activeIdx: -1}
	for c := range q.doneFns {
		q.doneFns[c] = func() { q.complete(Class(c)) }
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	q.apply(l, s.now())
	q.p = s.vtime
	s.queues[q] = struct{}{}
	return q, nil
}

// Name returns the name the queue was created with.
func (q *Queue) Name() string { return q.name }

// Limits returns the queue's current limits as set (zero fields unset).
func (q *Queue) Limits() Limits {
	q.s.mu.Lock()
	defer q.s.mu.Unlock()
	return q.lim
}

// SetLimits replaces the queue's limits. It takes effect at once, for
// requests already waiting too: a bucket keeps the tokens it had accrued
// (cut to the new bank), a newly set limit starts with an empty bank.
func (q *Queue) SetLimits(l Limits) error {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("queue %q: %w", q.name, err)
	}
	s := q.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if q.closed {
		return fmt.Errorf("queue %q: %w", q.name, ErrClosed)
	}
	q.apply(l, s.now())
	s.dispatchLocked()
	return nil
}

// apply installs validated limits at now.
//
// A changed reservation forgives the R tag's lead (rFin beyond now): the
// lead was counted at the old rates, and after a tiny reservation (the
// controller's first rounds) one reserved 64 KiB request moves it minutes
// ahead, so a raised reservation would give the queue nothing reserved
// until then. Forgiving it gives a queue served at its reservation at most
// one request more per change.
func (q *Queue) apply(l Limits, now float64) {
	hadRes := q.reserved
	if (l.ReservationIOPS != q.lim.ReservationIOPS || l.ReservationBPS != q.lim.ReservationBPS) && q.rFin > now {
		q.rFin = now
	}
	q.lim = l
	q.weight = l.weight()
	q.burst = l.burst().Seconds()
	rates := [numBuckets]float64{
		bIOPS: l.IOPS, bBPS: l.BPS,
		bReadIOPS: l.ReadIOPS, bReadBPS: l.ReadBPS,
		bWriteIOPS: l.WriteIOPS, bWriteBPS: l.WriteBPS,
	}
	q.limited = false
	for i, r := range rates {
		q.b[i].set(r, q.burst, now)
		if r > 0 {
			q.limited = true
		}
	}
	q.reserved = l.hasReservation()
	if q.reserved && !hadRes && q.rFin < now {
		q.rFin = now
	}
}

// Close removes the queue from its scheduler. Requests waiting in it are
// released (admitted at once, even beyond MaxInFlight), not failed; later
// Admit calls on it pass straight through, uncounted. Requests already
// admitted still call their done functions as usual. Close is idempotent.
func (q *Queue) Close() {
	s := q.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if q.closed {
		return
	}
	q.closed = true
	delete(s.queues, q)
	if q.nWaiting == 0 {
		return
	}
	now := s.now()
	for c := range q.fifo {
		for w := q.fifo[c].head; w != nil; w = q.fifo[c].head {
			q.fifo[c].remove(w)
			q.nWaiting--
			s.nWaiting--
			q.count(w.class, w.cost, w.bytes, math.Max(0, now-w.arrived))
			q.inFlight++
			s.inFlight++
			w.dispatched = true
			w.at = now
			w.ready <- struct{}{}
		}
	}
	s.deactivateLocked(q)
	s.noteHeldLocked(now)
}

// count accounts one admitted request of class c that waited waited
// seconds (the caller adds it to the in-flight counts).
func (q *Queue) count(c Class, cost float64, bytes int64, waited float64) {
	q.st.ops++
	q.st.bytes += uint64(bytes)
	cc := &q.st.class[c]
	cc.ops++
	cc.bytes += uint64(bytes)
	cc.units += uint64(cost)
	cc.waited += waited
	cc.inFlight++
	sa := &q.s.admitted[c]
	sa.Ops++
	sa.Bytes += uint64(bytes)
	sa.Units += uint64(cost)
}

// Stats returns a snapshot of the queue's counters.
func (q *Queue) Stats() QueueStats {
	s := q.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st := QueueStats{
		Name:          q.name,
		Limits:        q.lim,
		AdmittedOps:   q.st.ops,
		AdmittedBytes: q.st.bytes,
		ReservedOps:   q.st.reserved,
		Depth:         q.nWaiting,
		InFlight:      q.inFlight,
	}
	now := s.now()
	for c, cc := range q.st.class {
		waited := cc.waited + q.fifo[c].waitedBy(now)
		st.Classes[c] = ClassStats{Ops: cc.ops, Bytes: cc.bytes, Units: cc.units,
			Waited: time.Duration(waited * 1e9), Depth: q.fifo[c].n, InFlight: cc.inFlight}
	}
	// The classes' waits, so that they add up to it exactly.
	st.ThrottledTime = st.Classes[Read].Waited + st.Classes[Write].Waited + st.Classes[Other].Waited
	return st
}

// complete is the done function of every request of class c admitted
// through q.
func (q *Queue) complete(c Class) {
	s := q.s
	s.mu.Lock()
	if q.inFlight <= 0 || q.st.class[c].inFlight <= 0 {
		s.mu.Unlock()
		panic(fmt.Sprintf("qos: queue %q: done called more often than Admit succeeded", q.name))
	}
	q.inFlight--
	q.st.class[c].inFlight--
	s.inFlight--
	s.dispatchLocked()
	s.mu.Unlock()
}

// activate is called when a request arrives at a queue with none waiting:
// an idle queue does not bank reservation (mClock's max(now, prev) rule).
func (q *Queue) activate(now float64) {
	if q.reserved && q.rFin < now {
		q.rFin = now
	}
}

// pick returns the oldest waiting request of q whose class is within all
// its limits at now, or nil and the earliest time one will be.
func (q *Queue) pick(now float64) (*waiter, float64) {
	var best *waiter
	wake := math.Inf(1)
	for c := range q.fifo {
		h := q.fifo[c].head
		if h == nil || (best != nil && h.seq > best.seq) {
			continue
		}
		if q.limited {
			if d := q.classWait(Class(c), now); d > 0 {
				wake = math.Min(wake, now+d)
				continue
			}
		}
		best = h
	}
	return best, wake
}

// classWait returns 0 if a request of class c may go at now, or how many
// seconds until every limit that applies to c has budget.
func (q *Queue) classWait(c Class, now float64) float64 {
	d := q.b[bIOPS].wait(now)
	switch c {
	case Read:
		d = max(d, q.b[bBPS].wait(now), q.b[bReadIOPS].wait(now), q.b[bReadBPS].wait(now))
	case Write:
		d = max(d, q.b[bBPS].wait(now), q.b[bWriteIOPS].wait(now), q.b[bWriteBPS].wait(now))
	}
	return d
}

// charge takes a request's cost from every limit that applies to it.
func (q *Queue) charge(c Class, cost float64, bytes int64, now float64) {
	q.b[bIOPS].take(cost, now)
	switch c {
	case Read:
		q.b[bBPS].take(float64(bytes), now)
		q.b[bReadIOPS].take(cost, now)
		q.b[bReadBPS].take(float64(bytes), now)
	case Write:
		q.b[bBPS].take(float64(bytes), now)
		q.b[bWriteIOPS].take(cost, now)
		q.b[bWriteBPS].take(float64(bytes), now)
	}
}

// resInterval is how far one request moves the R tag: the request's share
// of the more generous of the two reservations.
func (q *Queue) resInterval(c Class, cost float64, bytes, costUnit int64) float64 {
	iv := math.Inf(1)
	if r := q.lim.ReservationIOPS; r > 0 {
		iv = cost / r
	}
	if r := q.lim.ReservationBPS; r > 0 {
		b := float64(bytes)
		if c == Other || bytes == 0 {
			b = float64(costUnit)
		}
		iv = math.Min(iv, b/r)
	}
	return iv
}

// waitedBy is how long the requests still in l have waited at now (in
// seconds). The counters add a request's wait when it leaves the queue;
// Stats adds this, so that a queue whose requests all wait (nothing
// admitted for a whole report interval) does not look idle to the
// controller, which would then give it nothing and keep it waiting.
func (l *waitList) waitedBy(now float64) float64 {
	var sum float64
	for w := l.head; w != nil; w = w.next {
		sum += max(0, now-w.arrived)
	}
	return sum
}

// waitList is an intrusive FIFO of waiters.
type waitList struct {
	head, tail *waiter
	n          int
}

func (l *waitList) push(w *waiter) {
	w.next = nil
	w.prev = l.tail
	if l.tail != nil {
		l.tail.next = w
	} else {
		l.head = w
	}
	l.tail = w
	l.n++
}

func (l *waitList) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		l.tail = w.prev
	}
	w.prev, w.next = nil, nil
	l.n--
}
