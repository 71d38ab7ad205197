package controller

import (
	"time"
)

// Counters are one tenant's cumulative counters for one op (reads or
// writes) on a gateway, as the gateway counts them.
type Counters struct {
	Bytes uint64 // bytes of requests admitted
	Units uint64 // cost units admitted (what IOPS limits count)
	IOs   uint64 // requests admitted
	// Waited is the total time requests spent waiting before admission
	// (for a limit or for the device), including those still waiting.
	Waited time.Duration
	// Queued is the number of requests waiting or in flight now.
	Queued int
}

// TenantCounters are one tenant's counters on a gateway.
type TenantCounters struct {
	Tenant string
	Read   Counters
	Write  Counters
}

// throttledQueue: an op counts as throttled when on average at least this
// many of its requests were waiting over the interval (Little's law:
// waited time / interval).
const throttledQueue = 0.25

// Meter turns a gateway's cumulative counters into Reports: rates over the
// time since the previous call. It is not safe for concurrent use (the
// Agent calls Report from one goroutine).
type Meter struct {
	prev map[string]TenantCounters
	at   time.Time
}

// NewMeter returns a Meter; its first Report has zero rates.
func NewMeter() *Meter { return &Meter{prev: map[string]TenantCounters{}} }

// Report returns the report for the interval since the previous call.
// Tenants are reported in the order given; a counter that went backwards
// (a queue was recreated) counts from zero.
func (m *Meter) Report(now time.Time, gateway string, capacity Rates, tenants []TenantCounters) Report {
	rep := Report{Gateway: gateway, Capacity: capacity, Tenants: make([]TenantReport, 0, len(tenants))}
	dt := now.Sub(m.at)
	first := m.at.IsZero() || dt <= 0
	if !first {
		rep.Interval = dt
	}
	next := make(map[string]TenantCounters, len(tenants))
	for _, tc := range tenants {
		next[tc.Tenant] = tc
		p, seen := m.prev[tc.Tenant]
		tr := TenantReport{Tenant: tc.Tenant}
		if !first {
			if !seen {
				p = TenantCounters{}
			}
			tr.Read = opReport(p.Read, tc.Read, dt)
			tr.Write = opReport(p.Write, tc.Write, dt)
		}
		rep.Tenants = append(rep.Tenants, tr)
	}
	m.prev, m.at = next, now
	return rep
}

func opReport(prev, cur Counters, dt time.Duration) OpReport {
	sec := dt.Seconds()
	delta := func(a, b uint64) float64 {
		if b < a {
			return float64(b)
		}
		return float64(b - a)
	}
	bytes, units, ios := delta(prev.Bytes, cur.Bytes), delta(prev.Units, cur.Units), delta(prev.IOs, cur.IOs)
	waited := cur.Waited - prev.Waited
	if waited < 0 {
		waited = cur.Waited
	}
	op := OpReport{BPS: bytes / sec, IOPS: units / sec}
	op.DemandBPS, op.DemandIOPS = op.BPS, op.IOPS
	if cur.Queued > 0 && ios > 0 {
		op.DemandBPS += float64(cur.Queued) * bytes / ios / sec
		op.DemandIOPS += float64(cur.Queued) * units / ios / sec
	}
	op.Throttled = waited.Seconds()/sec >= throttledQueue
	return op
}

// CapacityEstimator measures a gateway's capacity per resource from what
// it achieved. While the device is saturated (requests wait for the device,
// not for limits) the estimate follows the achieved total (a moving
// average); while it is not, an achieved total above the estimate raises
// it at once, and a total near the estimate (every tenant pressing its
// limits) raises it by Probe per interval, so that the controller hands
// out more until the device pushes back. Not safe for concurrent use.
type CapacityEstimator struct {
	// Initial is the estimate before anything is measured (0 unknown).
	Initial Rates
	// Floor: the estimate never drops below it.
	Floor Rates
	// Ceiling: where a field is set, the estimate never rises above it.
	// A gateway that paces its routed IO at a configured capacity
	// (--qos-capacity-iops) can never do more; without a ceiling the probe
	// would keep raising the estimate while tenants press limits that sum
	// to that capacity, and the controller would hand out more than the
	// scheduler admits (which then divides it by reservation and weight,
	// not by the controller's shares).
	Ceiling Rates
	// Probe is the growth per interval while tenants press their limits
	// (default 0.05).
	Probe float64

	est    Rates
	primed bool
}

// Observe feeds one interval: the total achieved rate over every tenant
// and whether the device was saturated. It returns the estimate to report.
func (e *CapacityEstimator) Observe(achieved Rates, saturated bool) Rates {
	if !e.primed {
		e.est, e.primed = e.Initial, true
	}
	probe := e.Probe
	if probe <= 0 {
		probe = 0.05
	}
	for r := Resource(0); r < NumResources; r++ {
		a, est := achieved.Get(r), e.est.Get(r)
		switch {
		case est <= 0:
			// Unknown until saturation shows it (below), or stays unknown.
			if saturated && a > 0 {
				est = a
			}
		case saturated && a >= 0.5*est:
			est = 0.7*est + 0.3*a
		case !saturated && a > est:
			est = a
		case !saturated && a >= 0.9*est:
			est *= 1 + probe
		}
		if c := e.Ceiling.Get(r); c > 0 {
			est = min(est, c)
		}
		e.est.Set(r, max(est, e.Floor.Get(r)))
	}
	return e.est
}
