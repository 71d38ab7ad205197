package gateway

import (
	"maps"
	"slices"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// Per-tenant counters for the cluster controller's reports, and the
// device-saturation signal its capacity measurement uses.

// OpTotals are one tenant's cumulative counters for one operation (reads
// or writes) on this gateway.
type OpTotals struct {
	Bytes uint64 `json:"bytes"` // bytes of completed requests
	// Units is the cost units of those requests (what QoS IOPS count):
	// max(requests, bytes / cost unit), exact when every request is at
	// most one unit or a whole number of units, a little low for a mix of
	// unaligned sizes (the volume counters keep totals, not sizes).
	Units uint64 `json:"units"`
	IOs   uint64 `json:"ios"` // requests completed (failed ones included)
	// Waited is the time requests spent waiting in the tenant's queues
	// (its assignment queue and its static rules' queues) before
	// admission, for a limit or for the device.
	Waited time.Duration `json:"waited_ns"`
	// Queued is the requests waiting in those queues or admitted by them
	// and not yet complete, now (IO that no queue routes is not seen).
	Queued int `json:"queued"`
}

// TenantTotals are one tenant's counters on this gateway.
type TenantTotals struct {
	Tenant string   `json:"tenant"`
	Read   OpTotals `json:"read"`
	Write  OpTotals `json:"write"`
}

// tenantMeter keeps the cumulative counters monotonic and remembers the
// last saturation sample. Guarded by rules.mu.
type tenantMeter struct {
	last   map[string]TenantTotals // as last returned
	offset map[string]TenantTotals // added to the raw sums (see monotonic)

	heldAt   time.Time     // when DeviceSaturated last sampled
	heldLast time.Duration // the scheduler's HeldTime then
}

// TenantCounters returns the cumulative counters of every tenant with a
// volume on this gateway, sorted by tenant. Bytes and requests come from
// the volumes' counters (every door, every path), waits and queue depths
// from the queues that route the tenant's IO. The totals never go
// backwards: when a source shrinks (a volume or a queue deleted) the
// difference is carried in an offset, so a rate computed from two calls
// stays right.
func (g *Gateway) TenantCounters() []TenantTotals {
	raw := map[string]*TenantTotals{}
	for _, v := range g.Volumes() { // before rules.mu: wrap takes it
		t := v.Info().Tenant
		tt := raw[t]
		if tt == nil {
			tt = &TenantTotals{Tenant: t}
			raw[t] = tt
		}
		addVolumeOp(&tt.Read, &v.counters, OpRead, g.rules.sched)
		addVolumeOp(&tt.Write, &v.counters, OpWrite, g.rules.sched)
	}
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	addQueue := func(t string, q *qos.Queue) {
		if tt := raw[t]; tt != nil {
			st := q.Stats()
			addQueueClass(&tt.Read, st.Classes[qos.Read])
			addQueueClass(&tt.Write, st.Classes[qos.Write])
		}
	}
	for t, q := range g.rules.ctl.queues {
		addQueue(t, q)
	}
	for _, rq := range g.rules.byID {
		addQueue(rq.rule.Tenant, rq.queue)
	}
	m := &g.rules.ctl.meter
	if m.last == nil {
		m.last, m.offset = map[string]TenantTotals{}, map[string]TenantTotals{}
	}
	out := make([]TenantTotals, 0, len(raw))
	for _, t := range slices.Sorted(maps.Keys(raw)) {
		last, off := m.last[t], m.offset[t]
		tt := TenantTotals{Tenant: t,
			Read:  monotonic(raw[t].Read, &off.Read, last.Read),
			Write: monotonic(raw[t].Write, &off.Write, last.Write)}
		m.last[t], m.offset[t] = tt, off
		out = append(out, tt)
	}
	for t := range m.last {
		if raw[t] == nil {
			delete(m.last, t)
			delete(m.offset, t)
		}
	}
	return out
}

func addVolumeOp(o *OpTotals, c *counters, op Op, s *qos.Scheduler) {
	var ios, bytes uint64
	for d := range c.byDoorOp {
		ios += c.byDoorOp[d][op].ops.Load()
		bytes += c.byDoorOp[d][op].bytes.Load()
	}
	o.IOs += ios
	o.Bytes += bytes
	if ios > 0 {
		units, _ := s.Cost(qos.Read, int64(bytes))
		o.Units += max(ios, uint64(units))
	}
}

func addQueueClass(o *OpTotals, cs qos.ClassStats) {
	o.Waited += cs.Waited
	o.Queued += cs.Depth + cs.InFlight
}

// monotonic returns raw plus *off, raising *off where that would fall
// below last (Queued is a level, not a counter, and is left alone).
func monotonic(raw OpTotals, off *OpTotals, last OpTotals) OpTotals {
	up := func(raw uint64, off *uint64, last uint64) uint64 {
		if raw+*off < last {
			*off = last - raw
		}
		return raw + *off
	}
	out := OpTotals{Queued: raw.Queued}
	out.Bytes = up(raw.Bytes, &off.Bytes, last.Bytes)
	out.Units = up(raw.Units, &off.Units, last.Units)
	out.IOs = up(raw.IOs, &off.IOs, last.IOs)
	if raw.Waited+off.Waited < last.Waited {
		off.Waited = last.Waited - raw.Waited
	}
	out.Waited = raw.Waited + off.Waited
	return out
}

// SaturatedFraction is the share of an interval during which the device
// must have held work back for DeviceSaturated to report saturation.
const SaturatedFraction = 0.1

// DeviceSaturated reports whether, since its previous call, the device
// held work back for at least SaturatedFraction of the time: requests that
// their limits let go waited for a scheduler slot (--qos-slots) or for the
// configured capacity (--qos-capacity-iops). Waiting for a limit does not
// count. Only IO that some queue routes is seen (the fast path never
// waits). The first call only starts the interval and reports false.
func (g *Gateway) DeviceSaturated() bool {
	held := g.rules.sched.Stats().HeldTime
	now := time.Now()
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	m := &g.rules.ctl.meter
	prevAt, prev := m.heldAt, m.heldLast
	m.heldAt, m.heldLast = now, held
	if prevAt.IsZero() {
		return false
	}
	dt := now.Sub(prevAt)
	return dt > 0 && float64(held-prev) >= SaturatedFraction*float64(dt)
}

// RoutedTotals returns the reads and writes the QoS scheduler admitted
// since the gateway started: the IO that static rules and controller
// assignments route. The fast path (IO no queue routes) is not counted:
// the scheduler's slots and capacity bound only routed IO, so only routed
// IO measures them (the controller's capacity estimate uses it). Waited
// and Queued are left zero.
func (g *Gateway) RoutedTotals() (read, write OpTotals) {
	a := g.rules.sched.Stats().Admitted
	conv := func(x qos.Admitted) OpTotals { return OpTotals{Bytes: x.Bytes, Units: x.Units, IOs: x.Ops} }
	return conv(a[qos.Read]), conv(a[qos.Write])
}
