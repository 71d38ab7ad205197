package main

import (
	"testing"

	"github.com/sluice-storage/sluice/controller"
)

func TestCapacityCeiling(t *testing.T) {
	if got := capacityCeiling(0, 8<<10); !got.IsZero() {
		t.Errorf("no pacing: ceiling %+v, want none", got)
	}
	// 5120 units/s of 8 KiB: 40 MiB/s of reads or of writes.
	got := capacityCeiling(5120, 8<<10)
	want := controller.Rates{ReadBPS: 40 << 20, WriteBPS: 40 << 20, ReadIOPS: 5120, WriteIOPS: 5120}
	if got != want {
		t.Errorf("ceiling %+v, want %+v", got, want)
	}
	// The estimator it bounds stops probing there.
	e := controller.CapacityEstimator{Ceiling: got}
	e.Observe(controller.Rates{ReadBPS: 40 << 20}, true)
	for i := 0; i < 10; i++ {
		if r := e.Observe(controller.Rates{ReadBPS: 39 << 20}, false); r.ReadBPS > 40<<20 {
			t.Fatalf("estimate %v above the paced capacity", r.ReadBPS)
		}
	}
}
