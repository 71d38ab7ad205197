package qos

import (
	"testing"
	"time"
)

// HeldTime grows while the capacity holds back requests that their limits
// let go, and not while queues wait only for their own limits.
func TestHeldTimeCapacityVersusLimits(t *testing.T) {
	m := newSim(t, 1000, time.Microsecond)
	m.s.SetCapacity(1000)
	a := m.queue("a", Limits{})
	b := m.queue("b", Limits{})
	m.client(a, Read, 16)
	m.client(b, Write, 16)
	m.run(5 * time.Second)
	if h := m.s.Stats().HeldTime; h < 4900*time.Millisecond {
		t.Errorf("unlimited queues over a 1000/s capacity: held %v of 5 s, want nearly all", h)
	}

	// The same clients limited to 300/s each (600 < 1000): they wait for
	// their limits, never for the device.
	m2 := newSim(t, 1000, time.Microsecond)
	m2.s.SetCapacity(1000)
	c := m2.queue("c", Limits{IOPS: 300})
	d := m2.queue("d", Limits{IOPS: 300})
	m2.client(c, Read, 16)
	m2.client(d, Write, 16)
	m2.run(5 * time.Second)
	if h := m2.s.Stats().HeldTime; h > 100*time.Millisecond {
		t.Errorf("queues held by their own limits: held %v of 5 s, want about 0", h)
	}
	within(t, "limited ops", ops(c)+ops(d), 3000, 100)
}

// Without a capacity, a slow device with every slot busy holds work back.
func TestHeldTimeSlots(t *testing.T) {
	m := newSim(t, 2, 10*time.Millisecond)
	a := m.queue("a", Limits{})
	m.client(a, Read, 8)
	m.run(2 * time.Second)
	if h := m.s.Stats().HeldTime; h < 1900*time.Millisecond {
		t.Errorf("2 slots, depth 8: held %v of 2 s, want nearly all", h)
	}
	st := m.s.Stats()
	if st.InFlight != 2 || st.Waiting != 6 {
		t.Errorf("stats %+v, want 2 in flight and 6 waiting", st)
	}
	// A lone client within the slots is never held.
	m2 := newSim(t, 8, 10*time.Millisecond)
	b := m2.queue("b", Limits{})
	m2.client(b, Read, 4)
	m2.run(2 * time.Second)
	if h := m2.s.Stats().HeldTime; h != 0 {
		t.Errorf("depth 4 on 8 slots: held %v, want 0", h)
	}
}

// Per-class counters split a queue's admissions, waits and depth by class
// and count cost units.
func TestClassStats(t *testing.T) {
	m := newSim(t, 1000, time.Millisecond)
	q := m.queue("q", Limits{ReadIOPS: 100})
	m.client(q, Read, 4, 64<<10) // 8 units each
	m.client(q, Write, 2, 4<<10) // 1 unit each
	m.client(q, Other, 1, 1<<20) // 1 unit, no bytes
	m.run(2 * time.Second)
	st := q.Stats()
	r, w, o := st.Classes[Read], st.Classes[Write], st.Classes[Other]
	if r.Units != 8*r.Ops || r.Bytes != 64<<10*r.Ops || w.Units != w.Ops || w.Bytes != 4<<10*w.Ops || o.Bytes != 0 || o.Units != o.Ops {
		t.Errorf("class counters %+v", st.Classes)
	}
	within(t, "read units in 2 s at 100/s", float64(r.Units), 200, 16)
	if r.Ops+w.Ops+o.Ops != st.AdmittedOps || r.Bytes+w.Bytes != st.AdmittedBytes {
		t.Errorf("classes %+v do not add up to %+v", st.Classes, st)
	}
	// The scheduler's totals keep what closed queues admitted (Close
	// releases the reads still waiting).
	q.Close()
	d := uint64(r.Depth)
	sa := m.s.Stats().Admitted
	if sa[Read] != (Admitted{r.Ops + d, r.Bytes + d*64<<10, r.Units + 8*d}) || sa[Write] != (Admitted{w.Ops, w.Bytes, w.Units}) || sa[Other].Ops != o.Ops {
		t.Errorf("scheduler admitted %+v, queue %+v", sa, st.Classes)
	}
	if r.Waited < time.Second || w.Waited != 0 || r.Waited+w.Waited+o.Waited != st.ThrottledTime {
		t.Errorf("waits: read %v, write %v, other %v, total %v", r.Waited, w.Waited, o.Waited, st.ThrottledTime)
	}
	if r.Depth+r.InFlight != 4 || w.Depth+w.InFlight > 2 || st.Depth != r.Depth+w.Depth+o.Depth {
		t.Errorf("depths %+v (queue depth %d)", st.Classes, st.Depth)
	}
}
