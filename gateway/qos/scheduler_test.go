package qos

import (
	"testing"
	"time"
)

// Device for these tests: MaxInFlight slots × 1 ms each.

func TestWeights2to1(t *testing.T) {
	m := newSim(t, 2, time.Millisecond) // 2000 ops/s
	a := m.queue("a", Limits{Weight: 2})
	b := m.queue("b", Limits{Weight: 1})
	m.client(a, Read, 8)
	m.client(b, Write, 8)
	m.run(10 * time.Second)
	na, nb := ops(a), ops(b)
	t.Logf("a %v b %v ratio %.4f", na, nb, na/nb)
	if r := na / nb; r < 1.9 || r > 2.1 {
		t.Errorf("weights 2:1 gave %v:%v = %.3f", na, nb, r)
	}
	within(t, "total ops (work conserving)", na+nb, 20000, 20)
}

// Weights divide by cost, not by request count: 64 KiB requests (8 units)
// against 4 KiB ones (1 unit) at equal weight get 1/8 the requests.
func TestWeightsCountCost(t *testing.T) {
	m := newSim(t, 1, time.Millisecond)
	a := m.queue("a", Limits{})
	b := m.queue("b", Limits{})
	m.client(a, Read, 8, 64<<10)
	m.client(b, Read, 8, 4<<10)
	m.run(9 * time.Second)
	na, nb := ops(a), ops(b)
	if r := nb / na; r < 7.6 || r > 8.4 {
		t.Errorf("small:large request ratio %v:%v = %.2f, want 8", nb, na, r)
	}
}

func TestReservationUnderContention(t *testing.T) {
	m := newSim(t, 1, time.Millisecond) // 1000 ops/s
	a := m.queue("a", Limits{ReservationIOPS: 600, Weight: 1})
	b := m.queue("b", Limits{Weight: 4}) // by weight alone a would get 200
	m.client(a, Read, 8)
	m.client(b, Read, 8)
	m.run(10 * time.Second)
	na, nb := ops(a), ops(b)
	t.Logf("a %v (reserved %v) b %v", na, a.Stats().ReservedOps, nb)
	if na < 0.99*6000 {
		t.Errorf("reserved 600/s of 1000/s, got %v in 10 s (b %v)", na, nb)
	}
	if na > 6100 {
		t.Errorf("a got %v: more than its reservation although its weight is lower", na)
	}
	within(t, "total (work conserving)", na+nb, 10000, 10)
	if r := a.Stats().ReservedOps; float64(r) < 0.95*na {
		t.Errorf("reserved ops %v of %v", r, na)
	}
}

// A reservation is a floor, not an extra: when the weight share is larger,
// the queue gets the weight share.
func TestReservationBelowWeightShare(t *testing.T) {
	m := newSim(t, 1, time.Millisecond)
	a := m.queue("a", Limits{ReservationIOPS: 100})
	b := m.queue("b", Limits{})
	m.client(a, Read, 8)
	m.client(b, Read, 8)
	m.run(10 * time.Second)
	within(t, "a with a small reservation and equal weight", ops(a), 5000, 100)
}

// Reservations are not limits: alone, a reserved queue uses the device.
func TestReservationIsNotALimit(t *testing.T) {
	m := newSim(t, 1, time.Millisecond)
	a := m.queue("a", Limits{ReservationIOPS: 300})
	m.client(a, Read, 8)
	m.run(10 * time.Second)
	within(t, "ops", ops(a), 10000, 10)
}

func TestReservationBPS(t *testing.T) {
	m := newSim(t, 1, time.Millisecond)
	a := m.queue("a", Limits{ReservationBPS: 600 * 4096})
	b := m.queue("b", Limits{Weight: 10})
	m.client(a, Write, 8, 4096)
	m.client(b, Write, 8, 4096)
	m.run(10 * time.Second)
	if na := ops(a); na < 5940 {
		t.Errorf("reserved 600 × 4 KiB/s, got %v ops in 10 s", na)
	}
}

// Limits hold even with spare capacity, and the spare goes to others.
func TestLimitNeverExceeded(t *testing.T) {
	m := newSim(t, 4, 4*time.Millisecond) // 1000 ops/s
	a := m.queue("a", Limits{IOPS: 300, Weight: 10, ReservationIOPS: 300})
	b := m.queue("b", Limits{})
	m.client(a, Read, 16)
	m.client(b, Read, 16)
	for i := 1; i <= 100; i++ {
		m.run(100 * time.Millisecond)
		if n := ops(a); n > 300*float64(i)/10+1 {
			t.Fatalf("at %d ms a has %v ops, limit 300/s", i*100, n)
		}
	}
	within(t, "a", ops(a), 3000, 30)
	within(t, "b gets the rest", ops(b), 7000, 70)
}

// Work conserving: a limited queue alone leaves the device to an unlimited
// one, and an unlimited queue alone gets all of it.
func TestWorkConserving(t *testing.T) {
	m := newSim(t, 4, 4*time.Millisecond)
	a := m.queue("a", Limits{IOPS: 200})
	b := m.queue("b", Limits{})
	m.client(a, Read, 16)
	cb := m.client(b, Read, 16)
	cb.stopped = true
	m.run(5 * time.Second)
	within(t, "a alone, limited", ops(a), 1000, 10)
	cb.stopped = false
	m.run(5 * time.Second)
	within(t, "a with b", ops(a), 2000, 20)
	within(t, "b beside limited a", ops(b), 4000, 40)
}

// An idle queue does not bank credit: when it wakes it shares from then on
// instead of taking the device for as long as it was idle.
func TestIdleQueueBanksNoCredit(t *testing.T) {
	m := newSim(t, 1, time.Millisecond)
	a := m.queue("a", Limits{})
	b := m.queue("b", Limits{})
	ca := m.client(a, Read, 8)
	ca.stopped = true
	m.client(b, Read, 8)
	m.run(5 * time.Second)
	ca.stopped = false
	na, nb := ops(a), ops(b)
	m.run(time.Second)
	within(t, "a in the second after waking", ops(a)-na, 500, 10)
	within(t, "b in that second", ops(b)-nb, 500, 10)
}

// Nor does a queue held back by its limit: when the limit is lifted it
// shares by weight at once.
func TestLimitedQueueBanksNoCredit(t *testing.T) {
	m := newSim(t, 1, time.Millisecond)
	a := m.queue("a", Limits{IOPS: 100})
	b := m.queue("b", Limits{})
	m.client(a, Read, 8)
	m.client(b, Read, 8)
	m.run(5 * time.Second)
	within(t, "a limited", ops(a), 500, 5)
	if err := a.SetLimits(Limits{}); err != nil {
		t.Fatal(err)
	}
	na, nb := ops(a), ops(b)
	m.run(time.Second)
	within(t, "a in the second after the limit was lifted", ops(a)-na, 500, 10)
	within(t, "b in that second", ops(b)-nb, 500, 10)
}

func TestPriority(t *testing.T) {
	m := newSim(t, 1, time.Millisecond)
	hi := m.queue("hi", Limits{Priority: 1})
	lo := m.queue("lo", Limits{Weight: 100})
	lores := m.queue("lores", Limits{ReservationIOPS: 200})
	m.client(hi, Read, 8)
	m.client(lo, Read, 8)
	m.client(lores, Read, 8)
	m.run(10 * time.Second)
	within(t, "reserved low-priority queue", ops(lores), 2000, 20)
	within(t, "high priority", ops(hi), 8000, 20)
	if n := ops(lo); n > 2 {
		t.Errorf("unreserved low-priority queue got %v ops while a higher one was saturating", n)
	}
	// A higher-priority queue over its limit does not block lower ones.
	if err := hi.SetLimits(Limits{Priority: 1, IOPS: 100}); err != nil {
		t.Fatal(err)
	}
	m.run(time.Second) // drain what hi banked
	nh, nl, nr := ops(hi), ops(lo), ops(lores)
	m.run(10 * time.Second)
	within(t, "limited high priority", ops(hi)-nh, 1000, 10)
	within(t, "reserved low", ops(lores)-nr, 2000, 20)
	within(t, "unreserved low gets the rest", ops(lo)-nl, 7000, 30)
}

func TestSetLimitsMidRun(t *testing.T) {
	m := newSim(t, 64, time.Millisecond)
	q := m.queue("a", Limits{IOPS: 1000})
	m.client(q, Write, 32)
	m.run(5 * time.Second)
	within(t, "before", ops(q), 5000, 5)
	if err := q.SetLimits(Limits{IOPS: 200}); err != nil {
		t.Fatal(err)
	}
	n := ops(q)
	m.run(time.Second)
	within(t, "first second after lowering", ops(q)-n, 200, 3)
	if err := q.SetLimits(Limits{IOPS: 5000, Burst: time.Second}); err != nil {
		t.Fatal(err)
	}
	n = ops(q)
	m.run(time.Second)
	within(t, "first second after raising", ops(q)-n, 5000, 10)
	if err := q.SetLimits(Limits{WriteBPS: 400 * 4096}); err != nil {
		t.Fatal(err)
	}
	n = ops(q)
	m.run(time.Second)
	within(t, "first second after switching to a byte limit", ops(q)-n, 400, 5)
}

// A request waiting for a very low limit goes as soon as the limit is
// raised, not when its old timer would have fired.
func TestSetLimitsWakesWaiters(t *testing.T) {
	m := newSim(t, 64, time.Millisecond)
	q := m.queue("a", Limits{IOPS: 0.01}) // one op per 100 s
	m.client(q, Read, 4)
	m.run(time.Second)
	if n := ops(q); n != 1 {
		t.Fatalf("ops = %v, want 1", n)
	}
	if err := q.SetLimits(Limits{IOPS: 1000}); err != nil {
		t.Fatal(err)
	}
	m.run(2 * time.Millisecond) // the debt of 1 op clears in 1 ms at the new rate
	if n := ops(q); n < 2 {
		t.Errorf("raising the limit did not release the waiter: ops = %v", n)
	}
}

// A raised reservation holds from the change: the R tag's lead, counted
// at a tiny old reservation (one 64 KiB request at 100 B/s moves it 655 s
// ahead), does not keep the queue from its new one.
func TestRaisedReservationHoldsAtOnce(t *testing.T) {
	m := newSim(t, 1, time.Millisecond) // 1000 ops/s
	a := m.queue("a", Limits{ReservationBPS: 100})
	b := m.queue("b", Limits{Weight: 9}) // by weight alone a gets 100/s
	m.client(a, Read, 8, 64<<10)
	m.client(b, Read, 8, 64<<10)
	m.run(2 * time.Second)
	if r := a.Stats().ReservedOps; r == 0 {
		t.Fatalf("no reserved op at 100 B/s in 2 s: the test needs one to move the R tag")
	}
	if err := a.SetLimits(Limits{ReservationBPS: 600 * 64 << 10}); err != nil {
		t.Fatal(err)
	}
	n := ops(a)
	m.run(time.Second)
	within(t, "a's ops in the second after its reservation went to 600/s", ops(a)-n, 600, 15)
}

// A queue whose requests all wait (nothing admitted in an interval) shows
// their wait in its stats before they are admitted: the controller's
// meter reads Waited per interval to tell a held-back tenant from an idle
// one, and took a fully stalled tenant for an idle one.
func TestStatsCountRequestsStillWaiting(t *testing.T) {
	m := newSim(t, 64, time.Millisecond)
	q := m.queue("a", Limits{ReadIOPS: 0.01}) // one op per 100 s
	m.client(q, Read, 4)
	m.run(time.Second)
	before := q.Stats()
	if before.AdmittedOps != 1 || before.Depth != 4 {
		t.Fatalf("admitted %d, waiting %d: want 1 and 4", before.AdmittedOps, before.Depth)
	}
	m.run(10 * time.Second)
	after := q.Stats()
	if after.AdmittedOps != 1 {
		t.Fatalf("admitted %d, want still 1", after.AdmittedOps)
	}
	// 4 requests waited 10 s more each.
	within(t, "reads' waited seconds over the 10 s", (after.Classes[Read].Waited - before.Classes[Read].Waited).Seconds(), 40, 0.1)
	within(t, "throttled seconds over the 10 s", (after.ThrottledTime - before.ThrottledTime).Seconds(), 40, 0.1)
}

func TestSlotsBoundInFlight(t *testing.T) {
	m := newSim(t, 3, time.Millisecond)
	a := m.queue("a", Limits{})
	b := m.queue("b", Limits{})
	m.client(a, Read, 10)
	m.client(b, Read, 10)
	for i := 0; i < 100; i++ {
		m.run(100 * time.Microsecond)
		m.s.mu.Lock()
		in := m.s.inFlight
		m.s.mu.Unlock()
		if in > 3 {
			t.Fatalf("%d in flight with 3 slots", in)
		}
		if st := a.Stats(); st.Depth+st.InFlight != 10 {
			t.Fatalf("queue a: depth %d + in flight %d != 10", st.Depth, st.InFlight)
		}
	}
}

// Virtual time is shifted back to zero when it grows large; shares hold
// across the shift.
func TestVirtualTimeRebase(t *testing.T) {
	m := newSim(t, 2, time.Millisecond)
	m.s.vtime = vRebase - 1000
	a := m.queue("a", Limits{Weight: 2})
	b := m.queue("b", Limits{Weight: 1})
	m.client(a, Read, 8)
	m.client(b, Read, 8)
	m.run(5 * time.Second)
	if m.s.vtime >= vRebase-1000 {
		t.Fatalf("no rebase: vtime %v", m.s.vtime)
	}
	if r := ops(a) / ops(b); r < 1.95 || r > 2.05 {
		t.Errorf("ratio across rebase %.3f, want 2", r)
	}
}
