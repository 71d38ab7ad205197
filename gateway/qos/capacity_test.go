package qos

import (
	"testing"
	"time"
)

// With a device that is never busy (tiny service time, many slots) weights
// and reservations do nothing unless dispatch is paced to a capacity. With
// CapacityIOPS set they divide it, and the total holds the capacity.
func TestCapacityPacingMakesWeightsAct(t *testing.T) {
	m := newSim(t, 1000, time.Microsecond)
	if err := m.s.SetCapacity(3000); err != nil {
		t.Fatal(err)
	}
	a := m.queue("a", Limits{Weight: 2})
	b := m.queue("b", Limits{Weight: 1})
	m.client(a, Write, 32)
	m.client(b, Write, 32)
	m.run(10 * time.Second)
	within(t, "total ops in 10 s at capacity 3000/s", ops(a)+ops(b), 30000, 300)
	within(t, "weight ratio", ops(a)/ops(b), 2, 0.05)
}

func TestCapacityPacingWithReservation(t *testing.T) {
	m := newSim(t, 1000, time.Microsecond)
	m.s.SetCapacity(1000)
	a := m.queue("a", Limits{Weight: 1, ReservationIOPS: 600})
	b := m.queue("b", Limits{Weight: 9})
	m.client(a, Write, 32)
	m.client(b, Write, 32)
	m.run(10 * time.Second)
	if got := ops(a); got < 5900 {
		t.Errorf("reserved queue got %.0f of 10000 ops, want >= 6000 less rounding", got)
	}
	within(t, "total ops", ops(a)+ops(b), 10000, 100)
}

// Without a capacity the fast device gives every request straight away:
// weights do not act (the documented reason to set a capacity).
func TestNoCapacityFastDeviceIgnoresWeights(t *testing.T) {
	m := newSim(t, 1000, time.Microsecond)
	a := m.queue("a", Limits{Weight: 2})
	b := m.queue("b", Limits{Weight: 1})
	m.client(a, Write, 4)
	m.client(b, Write, 4)
	m.run(time.Second)
	within(t, "ratio without pacing", ops(a)/ops(b), 1, 0.05)
	if err := m.s.SetCapacity(-1); err == nil {
		t.Error("negative capacity accepted")
	}
}
