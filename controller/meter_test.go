package controller

import (
	"math"
	"testing"
	"time"
)

func TestMeter(t *testing.T) {
	m := NewMeter()
	t0 := time.Unix(100, 0)
	capacity := Rates{ReadBPS: 500 * mb}
	rep := m.Report(t0, "g1", capacity, []TenantCounters{{Tenant: "gold", Read: Counters{Bytes: 1 << 30, Units: 1000, IOs: 1000}}})
	if rep.Interval != 0 || rep.Tenants[0].Read.BPS != 0 || rep.Capacity != capacity || rep.Gateway != "g1" {
		t.Fatalf("first report %+v", rep)
	}
	// One second later: 64 MiB in 1024 requests of 8 units each; 4 queued;
	// requests waited 0.5 s in total (on average half a request waiting).
	rep = m.Report(t0.Add(time.Second), "g1", capacity, []TenantCounters{
		{Tenant: "gold", Read: Counters{Bytes: 1<<30 + 64*mb, Units: 1000 + 8192, IOs: 2024, Waited: 500 * time.Millisecond, Queued: 4}},
		{Tenant: "new", Write: Counters{Bytes: 4096, Units: 1, IOs: 1, Waited: time.Millisecond}},
	})
	if err := rep.Validate(); err != nil {
		t.Fatal(err)
	}
	r := rep.Tenants[0].Read
	if rep.Interval != time.Second || r.BPS != 64*mb || r.IOPS != 8192 || !r.Throttled {
		t.Errorf("gold read %+v", r)
	}
	if math.Abs(r.DemandBPS-(64*mb+4*64*1024)) > 1e-6 || math.Abs(r.DemandIOPS-(8192+32)) > 1e-9 {
		t.Errorf("gold demand %+v", r)
	}
	if w := rep.Tenants[1].Write; w.BPS != 4096 || w.Throttled {
		t.Errorf("new tenant's writes %+v", w)
	}
	// Counters that went backwards (a queue recreated) count from zero.
	rep = m.Report(t0.Add(2*time.Second), "g1", capacity, []TenantCounters{{Tenant: "gold", Read: Counters{Bytes: 1000, IOs: 1}}})
	if r := rep.Tenants[0].Read; r.BPS != 1000 || r.Throttled || len(rep.Tenants) != 1 {
		t.Errorf("after reset %+v", rep.Tenants)
	}
}

func TestCapacityEstimator(t *testing.T) {
	e := CapacityEstimator{Initial: Rates{ReadBPS: 100}, Floor: Rates{ReadBPS: 10}}
	// Tenants press their limits, the device has room: probe upwards.
	if got := e.Observe(Rates{ReadBPS: 95}, false).ReadBPS; got != 105 {
		t.Errorf("probe: %v", got)
	}
	// More than estimated: take it.
	if got := e.Observe(Rates{ReadBPS: 150}, false).ReadBPS; got != 150 {
		t.Errorf("raise: %v", got)
	}
	// Saturated at 120: follow it down.
	var got float64
	for i := 0; i < 30; i++ {
		got = e.Observe(Rates{ReadBPS: 120}, true).ReadBPS
	}
	if math.Abs(got-120) > 0.1 {
		t.Errorf("saturated: %v", got)
	}
	// Light load changes nothing; the floor holds.
	if got := e.Observe(Rates{ReadBPS: 5}, false).ReadBPS; math.Abs(got-120) > 0.1 {
		t.Errorf("light load: %v", got)
	}
	// Unknown stays unknown until saturation measures it.
	if got := e.Observe(Rates{WriteBPS: 50}, false).WriteBPS; got != 0 {
		t.Errorf("unknown: %v", got)
	}
	if got := e.Observe(Rates{WriteBPS: 50}, true).WriteBPS; got != 50 {
		t.Errorf("measured: %v", got)
	}
}

// A configured ceiling (the scheduler's paced capacity) stops the probe:
// tenants pressing limits that sum to it do not raise the estimate above
// what the scheduler can ever admit.
func TestCapacityEstimatorCeiling(t *testing.T) {
	e := CapacityEstimator{Ceiling: Rates{ReadBPS: 100}}
	if got := e.Observe(Rates{ReadBPS: 100}, true).ReadBPS; got != 100 {
		t.Fatalf("measured: %v", got)
	}
	for i := 0; i < 20; i++ {
		if got := e.Observe(Rates{ReadBPS: 99}, false).ReadBPS; got > 100 {
			t.Fatalf("interval %d: probed to %v above the ceiling 100", i, got)
		}
	}
	// A burst above the ceiling (a bank spent at once) is not taken either.
	if got := e.Observe(Rates{ReadBPS: 130}, false).ReadBPS; got != 100 {
		t.Errorf("burst: %v", got)
	}
	// Below the ceiling the estimate still follows a saturated device down.
	var got float64
	for i := 0; i < 30; i++ {
		got = e.Observe(Rates{ReadBPS: 70}, true).ReadBPS
	}
	if math.Abs(got-70) > 0.1 {
		t.Errorf("saturated below the ceiling: %v", got)
	}
	// Without a ceiling field the resource probes as before.
	if got := e.Observe(Rates{WriteBPS: 50}, true).WriteBPS; got != 50 {
		t.Errorf("write measured: %v", got)
	}
	if got := e.Observe(Rates{WriteBPS: 50}, false).WriteBPS; got <= 50 {
		t.Errorf("write probe: %v", got)
	}
}
