package gateway

import (
	"sync/atomic"
	"time"
)

// latencyBuckets are the upper bounds of the latency histogram, in seconds
// (Prometheus style: cumulative on export, per-bucket in memory).
var latencyBuckets = [...]float64{
	25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1,
}

// opCounters count one (door, op) pair of one volume. Plain atomics: the hot
// path does a handful of uncontended adds and no allocation.
type opCounters struct {
	ops     atomic.Uint64
	bytes   atomic.Uint64
	errors  atomic.Uint64
	panics  atomic.Uint64 // failed with ErrIO because they panicked (also in errors)
	nanos   atomic.Uint64 // total latency
	buckets [len(latencyBuckets) + 1]atomic.Uint64
}

type counters struct {
	byDoorOp [numDoors][numOps]opCounters
}

func (c *counters) record(d Door, op Op, n int64, took time.Duration, err error) {
	if d >= numDoors || op >= numOps {
		return
	}
	oc := &c.byDoorOp[d][op]
	oc.ops.Add(1)
	if err != nil {
		oc.errors.Add(1)
	} else {
		oc.bytes.Add(uint64(n))
	}
	oc.nanos.Add(uint64(took))
	s := took.Seconds()
	i := 0
	for i < len(latencyBuckets) && s > latencyBuckets[i] {
		i++
	}
	oc.buckets[i].Add(1)
}

func (c *counters) panicked(d Door, op Op) {
	if d < numDoors && op < numOps {
		c.byDoorOp[d][op].panics.Add(1)
	}
}

// used calls fn for every (door, op) pair that has counted an op, with its
// op count n (the Stats snapshot and the Prometheus collector both show
// only these).
func (c *counters) used(fn func(d Door, op Op, oc *opCounters, n uint64)) {
	for d := Door(0); d < numDoors; d++ {
		for op := Op(0); op < numOps; op++ {
			oc := &c.byDoorOp[d][op]
			if n := oc.ops.Load(); n != 0 {
				fn(d, op, oc, n)
			}
		}
	}
}

// OpStats is a snapshot of one (door, op) pair's counters.
type OpStats struct {
	Door        string  `json:"door"`
	Op          string  `json:"op"`
	Ops         uint64  `json:"ops"`
	Bytes       uint64  `json:"bytes"`
	Errors      uint64  `json:"errors"`
	Panics      uint64  `json:"panics,omitempty"` // of the errors, requests that panicked
	MeanLatency float64 `json:"mean_latency_seconds"`
}

// Stats returns the non-zero counters of the volume.
func (v *Volume) Stats() []OpStats {
	var out []OpStats
	v.counters.used(func(d Door, op Op, oc *opCounters, n uint64) {
		out = append(out, OpStats{
			Door: d.String(), Op: op.String(), Ops: n, Bytes: oc.bytes.Load(),
			Errors: oc.errors.Load(), Panics: oc.panics.Load(), MeanLatency: float64(oc.nanos.Load()) / float64(n) / 1e9,
		})
	})
	return out
}
