package controller

import (
	"maps"
	"math"
	"slices"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// bindingFraction: a tenant achieving at least this fraction of its limit
// on a resource is held back by that limit.
const bindingFraction = 0.9

// Token rates for a tenant assigned nothing on a gateway: a zero field in
// qos.Limits means "no limit", so nothing becomes this much (Crystal
// clamps 0 to 1 too). A request larger than the rate still goes at once
// (the buckets are meters with debt); the tenant gets a real share at the
// next round.
const (
	minLimitBPS  = 1
	minLimitIOPS = 1
)

// gatewayLimits is one gateway's limits of a round: the listed tenants'
// and the default of every other tenant of the round (+Inf = none).
type gatewayLimits struct {
	listed map[string]Rates
	def    Rates
}

// get returns tenant's limit, and false if the round did not know the
// tenant (known: the round's tenants).
func (l gatewayLimits) get(tenant string, known map[string]bool) (Rates, bool) {
	if r, ok := l.listed[tenant]; ok {
		return r, true
	}
	return l.def, known[tenant]
}

// runRound computes and publishes one round of assignment sets.
func (s *Server) runRound() {
	s.roundMu.Lock()
	defer s.roundMu.Unlock()
	now := s.clock.Now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	in := s.inputLocked(now)
	s.mu.Unlock()

	t0 := time.Now()
	out := s.alg.Assign(in)
	took := time.Since(t0)

	sets := make(map[string]AssignmentSet, len(in.Gateways))
	limits := make(map[string]gatewayLimits, len(in.Gateways))
	known := make(map[string]bool, len(in.Tenants))
	for _, t := range in.Tenants {
		known[t.Tenant] = true
	}
	s.mu.Lock()
	s.round++
	s.epoch = s.gen<<32 | s.round&(1<<32-1)
	for _, g := range in.Gateways {
		def := out.Defaults[g.ID]
		defLimits := LimitsFor(def)
		set := AssignmentSet{Epoch: s.epoch, Term: s.setTerm(), Gateway: g.ID, Default: &defLimits,
			Assignments: make(map[string]qos.Limits, len(out.Assignments[g.ID]))}
		lim := gatewayLimits{listed: make(map[string]Rates, len(out.Assignments[g.ID])), def: def.Limit}
		for t, a := range out.Assignments[g.ID] {
			set.Assignments[t] = LimitsFor(a)
			lim.listed[t] = a.Limit
		}
		sets[g.ID] = set
		limits[g.ID] = lim
	}
	s.known = known
	s.sets, s.limits, s.shortfalls, s.roundAt = sets, limits, out.Shortfalls, now
	close(s.wake)
	s.wake = make(chan struct{})
	epoch := s.epoch
	s.mu.Unlock()

	s.metrics.observeRound(took)
	s.log.Debug("round", "epoch", epoch, "gateways", len(in.Gateways), "tenants", len(in.Tenants), "took", took, "shortfalls", len(out.Shortfalls))
	for _, sf := range out.Shortfalls {
		s.log.Debug("minimum not placed", "tenant", sf.Tenant, "resource", sf.Resource, "want", sf.Want, "placed", sf.Placed, "reason", sf.Reason)
	}
}

// inputLocked builds the algorithm's input from the live gateways' reports.
func (s *Server) inputLocked(now time.Time) Input {
	tenants := map[string]SLO{}
	for t, slo := range s.slos {
		tenants[t] = slo
	}
	var in Input
	for _, id := range slices.Sorted(maps.Keys(s.gws)) {
		rc, ok := s.reports[id]
		if !ok || now.Sub(rc.at) > s.opts.ReportTimeout {
			continue
		}
		g := GatewayLoad{ID: id}
		for r := Resource(0); r < NumResources; r++ {
			c := rc.rep.Capacity.Get(r)
			if c <= 0 {
				c = math.Inf(1)
			}
			g.Capacity.Set(r, c)
		}
		last, haveLast := s.limits[id]
		for _, tr := range rc.rep.Tenants {
			if _, ok := tenants[tr.Tenant]; !ok {
				tenants[tr.Tenant] = SLO{Tenant: tr.Tenant}
			}
			lim, ok := last.get(tr.Tenant, s.known)
			g.Loads = append(g.Loads, LoadFromReport(tr, lim, haveLast && ok))
		}
		in.Gateways = append(in.Gateways, g)
	}
	for _, t := range slices.Sorted(maps.Keys(tenants)) {
		in.Tenants = append(in.Tenants, tenants[t])
	}
	return in
}

// LoadFromReport turns a tenant's report into the algorithm's Load.
// Demand is the larger of the achieved and the reported demand. A tenant
// whose op was throttled is Unbounded on the resources whose last limit
// (lastLimit, if haveLast) it reached; if it reached none of them (the
// device held it back, or it is new) it is Unbounded on both resources of
// the op. So a tenant held back by IOPS does not claim bandwidth it cannot
// use.
func LoadFromReport(tr TenantReport, lastLimit Rates, haveLast bool) Load {
	l := Load{Tenant: tr.Tenant}
	rates, dem := tr.rates(), tr.demand()
	for r := Resource(0); r < NumResources; r++ {
		l.Demand.Set(r, math.Max(rates.Get(r), dem.Get(r)))
	}
	for _, op := range [2][2]Resource{{ReadBW, ReadIOPS}, {WriteBW, WriteIOPS}} {
		if !tr.throttled(op[0]) {
			continue
		}
		var binding [2]bool
		for i, r := range op {
			lim := lastLimit.Get(r)
			binding[i] = haveLast && lim > 0 && !math.IsInf(lim, 1) && rates.Get(r) >= bindingFraction*lim
		}
		for i, r := range op {
			l.Unbounded[r] = binding[i] || !binding[0] && !binding[1]
		}
	}
	return l
}

// LimitsFor turns an assignment into the queue limits a gateway enforces:
// Limit per resource (no limit where it is +Inf, a token rate where it is
// 0) and the placed minimum as the reservation (reads and writes summed).
func LimitsFor(a Assignment) qos.Limits {
	return qos.Limits{
		ReadBPS:         limitRate(a.Limit.ReadBPS, minLimitBPS, 1),
		WriteBPS:        limitRate(a.Limit.WriteBPS, minLimitBPS, 1),
		ReadIOPS:        limitRate(a.Limit.ReadIOPS, minLimitIOPS, 100),
		WriteIOPS:       limitRate(a.Limit.WriteIOPS, minLimitIOPS, 100),
		ReservationBPS:  math.Floor(finite(a.Minimum.ReadBPS) + finite(a.Minimum.WriteBPS)),
		ReservationIOPS: math.Floor((finite(a.Minimum.ReadIOPS)+finite(a.Minimum.WriteIOPS))*100) / 100,
	}
}

// limitRate rounds a limit down to 1/scale (whole bytes, hundredths of
// an IO), at least floor; +Inf is no limit (0).
func limitRate(v, floor, scale float64) float64 {
	switch {
	case math.IsInf(v, 1) || math.IsNaN(v):
		return 0
	case v < floor:
		return floor
	}
	return math.Floor(v*scale) / scale
}

// Status returns the controller's view of the cluster.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	st := Status{Epoch: s.epoch, Round: s.roundAt, Algorithm: s.alg.Name(),
		Gateways: []GatewayStatus{}, Tenants: []TenantStatus{}, Shortfalls: append([]Shortfall{}, s.shortfalls...)}
	tenants := map[string]*TenantStatus{}
	var defaults Rates // the sum of the gateways' defaults
	tenant := func(name string) *TenantStatus {
		ts, ok := tenants[name]
		if !ok {
			ts = &TenantStatus{Tenant: name}
			tenants[name] = ts
		}
		return ts
	}
	for name, slo := range s.slos {
		ts := tenant(name)
		ts.HasSLO, ts.Min, ts.Max = true, slo.Min, slo.Max
	}
	for _, id := range slices.Sorted(maps.Keys(s.gws)) {
		gs := GatewayStatus{GatewayRegistration: s.gws[id], Unlimited: []string{}}
		rc, reported := s.reports[id]
		if reported {
			gs.Live = now.Sub(rc.at) <= s.opts.ReportTimeout
			gs.LastReport = rc.at
			gs.Capacity = rc.rep.Capacity
			gs.Epoch = rc.rep.Epoch
			gs.Tenants = len(rc.rep.Tenants)
			for r := Resource(0); r < NumResources; r++ {
				if rc.rep.Capacity.Get(r) <= 0 {
					gs.Unlimited = append(gs.Unlimited, r.String())
				}
			}
		}
		for _, tr := range rc.rep.Tenants {
			if !gs.Live {
				break
			}
			ts := tenant(tr.Tenant)
			ts.Gateways++
			addRates(&gs.Achieved, tr.rates())
			addRates(&ts.Achieved, tr.rates())
			addRates(&ts.Demand, tr.demand())
		}
		// Every tenant of the round not listed has the default: counted
		// once per gateway here, and per tenant as the sum of the
		// gateways' defaults less the default where it is listed.
		lim := s.limits[id]
		for t, r := range lim.listed {
			addRates(&gs.Assigned, r)
			ts := tenant(t)
			addRates(&ts.Assigned, r)
			subRates(&ts.Assigned, lim.def)
		}
		if lim.listed != nil {
			for r := Resource(0); r < NumResources; r++ {
				unlisted := float64(len(s.known) - len(lim.listed))
				gs.Assigned.Set(r, gs.Assigned.Get(r)+unlisted*finite(lim.def.Get(r)))
			}
			addRates(&defaults, lim.def)
		}
		st.Gateways = append(st.Gateways, gs)
	}
	for name := range s.known {
		addRates(&tenant(name).Assigned, defaults)
	}
	for _, name := range slices.Sorted(maps.Keys(tenants)) {
		st.Tenants = append(st.Tenants, *tenants[name])
	}
	return st
}

// subRates subtracts the finite fields of b from a.
func subRates(a *Rates, b Rates) {
	for r := Resource(0); r < NumResources; r++ {
		a.Set(r, a.Get(r)-finite(b.Get(r)))
	}
}

// addRates adds the finite fields of b to a.
func addRates(a *Rates, b Rates) {
	for r := Resource(0); r < NumResources; r++ {
		a.Set(r, a.Get(r)+finite(b.Get(r)))
	}
}
