package controller

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// Algorithm computes one round of assignments from SLOs, capacities and
// demand. Implementations must be deterministic and must not keep Input.
type Algorithm interface {
	Name() string
	Assign(in Input) Output
}

// Input is one round's view of the cluster.
type Input struct {
	// Tenants is every tenant the controller knows, sorted by name: those
	// with an SLO and those some gateway reported. A tenant without an SLO
	// has a zero SLO (no minimum, no maximum). Tenants named only in Loads
	// are added with a zero SLO.
	Tenants []SLO
	// Gateways are the live gateways, sorted by ID.
	Gateways []GatewayLoad
}

// GatewayLoad is one gateway: its capacity and the tenants with work on it.
type GatewayLoad struct {
	ID string
	// Capacity per resource; +Inf is unknown (no capacity-derived limit).
	Capacity Rates
	Loads    []Load
}

// Load is one tenant's demand on one gateway.
type Load struct {
	Tenant string
	// Demand is the measured rate the tenant asked for (finite). It splits
	// the tenant's minimum over gateways and, unless Unbounded, caps what
	// the tenant is given there (times 1+Headroom).
	Demand Rates
	// Unbounded says the tenant wants more than Demand on this gateway: it
	// was held back by its limit (or by the device), so it takes whatever
	// share it is given.
	Unbounded [NumResources]bool
}

// active reports whether l has work for resource r.
func (l Load) active(r Resource) bool { return l.Demand.Get(r) > 0 || l.Unbounded[r] }

// Assignment is one tenant's share of one gateway.
type Assignment struct {
	// Limit is the rate cap the gateway enforces; +Inf means no cap; 0
	// means nothing (the gateway enforces a token rate).
	Limit Rates
	// Minimum is the part of Limit that is the tenant's minimum (the
	// gateway may reserve it).
	Minimum Rates
}

// Output is one round's result.
type Output struct {
	// Assignments[gateway][tenant] lists, per input gateway, every tenant
	// named in its loads and every tenant whose assignment there differs
	// from the gateway's default; every other input tenant gets
	// Defaults[gateway] (see Get). Sparse: at 10,000 tenants a tenant is
	// on a few dozen of 1,000 gateways, and listing it everywhere cost
	// more than computing the round.
	Assignments map[string]map[string]Assignment
	// Defaults[gateway] is the assignment of every input tenant that
	// Assignments[gateway] does not list: its share of the capacity
	// nobody wants (step 4), or nothing (a zero Limit) on a full gateway.
	// Its Minimum is always zero.
	Defaults map[string]Assignment
	// Shortfalls lists minimums that could not be placed (the best
	// assignment is still given).
	Shortfalls []Shortfall
}

// Get returns tenant's assignment on gateway: its entry in Assignments,
// or the gateway's default.
func (o Output) Get(gateway, tenant string) Assignment {
	if a, ok := o.Assignments[gateway][tenant]; ok {
		return a
	}
	return o.Defaults[gateway]
}

// Feasible reports whether every minimum was placed.
func (o Output) Feasible() bool { return len(o.Shortfalls) == 0 }

// Shortfall is a tenant's minimum that does not fit.
type Shortfall struct {
	Tenant   string  `json:"tenant"`
	Resource string  `json:"resource"`
	Want     float64 `json:"want"`   // the minimum, capped by the tenant's demand
	Placed   float64 `json:"placed"` // what the round could guarantee
	Reason   string  `json:"reason"`
}

// DefaultHeadroom is the Headroom of the controller's default algorithm.
const DefaultHeadroom = 0.1

// Crystal is Crystal's Algorithm 1 (minimum SLO, then an equal share of the
// spare), made demand-aware and work conserving. Per resource:
//
//  1. Minimums: each tenant's minimum, capped by its maximum and by what it
//     asks for, is split over the gateways where it has work in proportion
//     to its demand there. Overloaded gateways push minimums to other
//     gateways where the same tenants have work (augmenting paths, so every
//     minimum is placed whenever any placement can); what still does not fit
//     is cut max-min fairly on the gateway (the largest first) and reported.
//  2. Spare: tenants that want more grow together by equal steps
//     (progressive filling), each taking from its least contended
//     gateways, until they reach their maximum, their demand, or full
//     gateways.
//  3. Work conservation: capacity still free on a gateway is shared equally
//     among its tenants that want more.
//  4. Leftover: capacity nobody wants is shared equally among every tenant
//     (within its maximum), so a tenant that starts IO has room at once.
//
// The work is sparse: steps 1–3 only touch edges (a tenant with work on a
// gateway), and step 4 gives every tenant without a maximum the same share
// of a gateway, kept once per gateway (Output.Defaults); only tenants with
// a maximum are followed one by one there.
type Crystal struct {
	// Headroom lets a tenant that was not held back grow: it is given up to
	// Demand×(1+Headroom). 0 gives exactly its demand.
	Headroom float64
	// MaxSteps bounds the progressive filling of step 2 (0 = 32). When
	// tenants share some gateways and not others it converges
	// geometrically; step 3 shares out per gateway whatever is left, so
	// the bound trades cluster-wide equality (within a few per cent) for
	// time.
	MaxSteps int
}

// Name implements Algorithm.
func (c Crystal) Name() string { return "crystal-min-slo-share-spare" }

// Assign implements Algorithm.
func (c Crystal) Assign(in Input) Output {
	tenants := inputTenants(in)
	idx := make(map[string]int, len(tenants))
	for ti, t := range tenants {
		idx[t.Tenant] = ti
	}
	loadTenant := make([][]int, len(in.Gateways)) // per gateway, per load: its tenant's index
	for gi, g := range in.Gateways {
		loadTenant[gi] = make([]int, len(g.Loads))
		for li, l := range g.Loads {
			loadTenant[gi][li] = idx[l.Tenant]
		}
	}
	var solved [NumResources]*solution
	out := Output{}
	for r := Resource(0); r < NumResources; r++ {
		p := newProblem(in, tenants, loadTenant, r, c.Headroom)
		xm, want := p.placeMinimums()
		out.Shortfalls = append(out.Shortfalls, p.shortfalls(xm, want)...)
		solved[r] = p.share(xm, c.MaxSteps)
	}
	out.Assignments, out.Defaults = assemble(in, tenants, &solved)
	return out
}

// solution is one resource's result: per edge the limit and the minimum,
// per gateway the default limit and the tenants (without an edge there)
// whose limit differs from it.
type solution struct {
	p     *problem
	x, xm []float64
	def   []float64
	extra []map[int]float64
}

// assemble builds the Output's maps from the resources' solutions: per
// gateway the tenants of its loads, of its edges and of its exceptions,
// each with every resource's value, and the default.
func assemble(in Input, tenants []SLO, solved *[NumResources]*solution) (map[string]map[string]Assignment, map[string]Assignment) {
	nT := len(tenants)
	idx := make(map[string]int, nT)
	for ti, t := range tenants {
		idx[t.Tenant] = ti
	}
	assigns := make(map[string]map[string]Assignment, len(in.Gateways))
	defaults := make(map[string]Assignment, len(in.Gateways))
	scratch := make([]Assignment, nT)
	mark := make([]bool, nT)
	var listed []int
	for gi, g := range in.Gateways {
		var def Assignment
		for r, sol := range solved {
			def.Limit.Set(Resource(r), sol.def[gi])
		}
		defaults[g.ID] = def
		listed = listed[:0]
		add := func(t int) {
			if !mark[t] {
				mark[t] = true
				scratch[t] = def
				listed = append(listed, t)
			}
		}
		for _, l := range g.Loads {
			add(idx[l.Tenant])
		}
		for r, sol := range solved {
			for t, v := range sol.extra[gi] {
				add(t)
				scratch[t].Limit.Set(Resource(r), v)
			}
			for _, e := range sol.p.gt[gi] {
				t := sol.p.et[e]
				add(t)
				scratch[t].Limit.Set(Resource(r), sol.x[e])
				scratch[t].Minimum.Set(Resource(r), sol.xm[e])
			}
		}
		m := make(map[string]Assignment, len(listed))
		for _, t := range listed {
			m[tenants[t].Tenant] = scratch[t]
			mark[t] = false
		}
		assigns[g.ID] = m
	}
	return assigns, defaults
}

// inputTenants returns in.Tenants plus tenants named only in loads, sorted.
func inputTenants(in Input) []SLO {
	seen := make(map[string]bool, len(in.Tenants))
	out := make([]SLO, 0, len(in.Tenants))
	for _, t := range in.Tenants {
		if !seen[t.Tenant] {
			seen[t.Tenant] = true
			out = append(out, t)
		}
	}
	for _, g := range in.Gateways {
		for _, l := range g.Loads {
			if !seen[l.Tenant] {
				seen[l.Tenant] = true
				out = append(out, SLO{Tenant: l.Tenant})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tenant < out[j].Tenant })
	return out
}

// problem is one resource's allocation problem, stored by edge: a tenant
// with work on a gateway. Edges are numbered gateway by gateway, tenants
// in index order within a gateway.
type problem struct {
	r        Resource
	nG, nT   int
	gw       []string
	tn       []string
	cap      []float64 // per gateway; +Inf unknown
	min, max []float64 // per tenant; max +Inf when none
	eg, et   []int     // per edge: its gateway and tenant
	dem      []float64 // per edge: demand
	edge     []float64 // per edge: what the tenant may be given there (+Inf unbounded)
	tg       [][]int   // per tenant, its edges (by gateway)
	gt       [][]int   // per gateway, its edges (by tenant)
	eps      float64
	sorted   []float64 // scratch for spread
}

// pending is one tenant's accumulated load on the gateway being read.
type pending struct {
	t         int
	dem, edge float64
}

// newProblem builds resource r's problem; loadTenant[g][l] is the index
// in tenants of the tenant of in.Gateways[g].Loads[l].
func newProblem(in Input, tenants []SLO, loadTenant [][]int, r Resource, headroom float64) *problem {
	nG, nT := len(in.Gateways), len(tenants)
	p := &problem{r: r, nG: nG, nT: nT, gw: make([]string, nG), tn: make([]string, nT),
		cap: make([]float64, nG), min: make([]float64, nT), max: make([]float64, nT),
		tg: make([][]int, nT), gt: make([][]int, nG)}
	scale := 1.0
	for ti, t := range tenants {
		p.tn[ti] = t.Tenant
		p.min[ti] = t.Min.Get(r)
		p.max[ti] = t.Max.Get(r)
		if p.max[ti] <= 0 {
			p.max[ti] = math.Inf(1)
		}
		scale = math.Max(scale, finite(p.min[ti]))
	}
	slot := make([]int, nT) // tenant → 1 + its index in row (0: none yet)
	var row []pending
	loads := 0
	for _, g := range in.Gateways {
		loads += len(g.Loads)
	}
	p.eg, p.et = make([]int, 0, loads), make([]int, 0, loads)
	p.dem, p.edge = make([]float64, 0, loads), make([]float64, 0, loads)
	for gi, g := range in.Gateways {
		p.gw[gi] = g.ID
		p.cap[gi] = g.Capacity.Get(r)
		scale = math.Max(scale, finite(p.cap[gi]))
		row = row[:0]
		for li, l := range g.Loads {
			ti := loadTenant[gi][li]
			if !l.active(r) {
				continue
			}
			if slot[ti] == 0 {
				row = append(row, pending{t: ti})
				slot[ti] = len(row)
			}
			pe := &row[slot[ti]-1]
			d := l.Demand.Get(r)
			pe.dem += d
			switch {
			case l.Unbounded[r]:
				pe.edge = math.Inf(1)
			case !math.IsInf(pe.edge, 1):
				pe.edge += d * (1 + headroom)
			}
			scale = math.Max(scale, finite(d))
		}
		byTenant := func(a, b pending) int { return a.t - b.t }
		if !slices.IsSortedFunc(row, byTenant) { // reports list tenants sorted
			slices.SortFunc(row, byTenant)
		}
		for _, pe := range row {
			slot[pe.t] = 0
			if pe.edge <= 0 {
				continue
			}
			p.eg, p.et = append(p.eg, gi), append(p.et, pe.t)
			p.dem, p.edge = append(p.dem, pe.dem), append(p.edge, pe.edge)
		}
	}
	p.eps = 1e-9 * scale
	p.index()
	return p
}

// index builds gt and tg from the edges (numbered gateway by gateway,
// tenant by tenant within one): gt[g] are consecutive edge numbers, tg[t]
// a counting sort of them by tenant, in one backing array each.
func (p *problem) index() {
	nE := len(p.eg)
	ids := make([]int, nE)
	for e := range ids {
		ids[e] = e
	}
	for e := 0; e < nE; {
		g, start := p.eg[e], e
		for e < nE && p.eg[e] == g {
			e++
		}
		p.gt[g] = ids[start:e:e]
	}
	off := make([]int, p.nT+1)
	for _, t := range p.et {
		off[t+1]++
	}
	for t := 0; t < p.nT; t++ {
		off[t+1] += off[t]
	}
	byT := make([]int, nE)
	next := append([]int(nil), off[:p.nT]...)
	for e, t := range p.et {
		byT[next[t]] = e
		next[t]++
	}
	for t := 0; t < p.nT; t++ {
		if off[t] < off[t+1] {
			p.tg[t] = byT[off[t]:off[t+1]:off[t+1]]
		}
	}
}

func finite(v float64) float64 {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return 0
	}
	return v
}

// placeMinimums is step 1. It returns the placed minimums (per edge) and
// what each tenant wanted placed.
func (p *problem) placeMinimums() (xm, want []float64) {
	xm = make([]float64, len(p.eg))
	want = make([]float64, p.nT)
	for t := 0; t < p.nT; t++ {
		w := math.Min(p.min[t], p.max[t])
		total := 0.0
		for _, e := range p.tg[t] {
			total += p.edge[e]
		}
		w = math.Min(w, total)
		if w <= p.eps {
			continue
		}
		want[t] = w
		p.splitByDemand(t, w, xm)
	}
	p.reroute(xm)
	p.cut(xm)
	return xm, want
}

// splitByDemand places w of tenant t over its edges in proportion to its
// demand there, no edge above its cap. w must not exceed the caps' sum.
func (p *problem) splitByDemand(t int, w float64, x []float64) {
	free := append([]int(nil), p.tg[t]...)
	remaining := w
	for len(free) > 0 && remaining > p.eps {
		weights := make([]float64, len(free))
		sum := 0.0
		for i, e := range free {
			weights[i] = p.dem[e]
			sum += weights[i]
		}
		if sum <= 0 {
			for i := range weights {
				weights[i] = 1
			}
			sum = float64(len(weights))
		}
		var keep []int
		clamped := false
		for i, e := range free {
			if remaining*weights[i]/sum >= p.edge[e]-x[e] {
				remaining -= p.edge[e] - x[e]
				x[e] = p.edge[e]
				clamped = true
			} else {
				keep = append(keep, e)
			}
		}
		if !clamped {
			for i, e := range free {
				x[e] += remaining * weights[i] / sum
			}
			return
		}
		free = keep
	}
}

// load returns what x puts on gateway g.
func (p *problem) load(x []float64, g int) float64 {
	s := 0.0
	for _, e := range p.gt[g] {
		s += x[e]
	}
	return s
}

// reroute moves minimums off overloaded gateways along augmenting paths
// gateway →(a tenant's minimum there)→ gateway where the same tenant has
// room → … → a gateway with spare capacity.
func (p *problem) reroute(x []float64) {
	load := make([]float64, p.nG)
	for g := range load {
		load[g] = p.load(x, g)
	}
	parentG := make([]int, p.nG) // the edge through which a gateway was reached
	parentT := make([]int, p.nT) // the edge from which a tenant was reached
	for iter := 0; iter < 4*(p.nG*p.nT+p.nG+p.nT); iter++ {
		var queue []int
		for g := range parentG {
			parentG[g] = -2 // unvisited
		}
		for t := range parentT {
			parentT[t] = -1
		}
		for g := 0; g < p.nG; g++ {
			if load[g] > p.cap[g]+p.eps {
				parentG[g] = -1 // a source
				queue = append(queue, g)
			}
		}
		if len(queue) == 0 {
			return
		}
		sink := p.augmentingPath(x, load, queue, parentG, parentT)
		if sink < 0 {
			return // no way to move anything: the rest is cut
		}
		// Bottleneck along the path, walked back from the sink.
		b := p.cap[sink] - load[sink]
		g := sink
		for parentG[g] >= 0 {
			to := parentG[g]
			from := parentT[p.et[to]]
			b = math.Min(b, p.edge[to]-x[to])
			b = math.Min(b, x[from])
			g = p.eg[from]
		}
		b = math.Min(b, load[g]-p.cap[g])
		g = sink
		for parentG[g] >= 0 {
			to := parentG[g]
			from := parentT[p.et[to]]
			x[to] += b
			x[from] = math.Max(0, x[from]-b)
			g = p.eg[from]
		}
		load[sink] += b
		load[g] -= b
	}
}

// augmentingPath searches breadth first from the overloaded gateways in
// queue for a gateway with spare capacity, and returns it (-1: none).
func (p *problem) augmentingPath(x, load []float64, queue, parentG, parentT []int) int {
	for len(queue) > 0 {
		g := queue[0]
		queue = queue[1:]
		for _, e := range p.gt[g] {
			t := p.et[e]
			if parentT[t] >= 0 || x[e] <= p.eps {
				continue
			}
			parentT[t] = e
			for _, e2 := range p.tg[t] {
				g2 := p.eg[e2]
				if parentG[g2] != -2 || p.edge[e2]-x[e2] <= p.eps {
					continue
				}
				parentG[g2] = e2
				if p.cap[g2]-load[g2] > p.eps {
					return g2
				}
				queue = append(queue, g2)
			}
		}
	}
	return -1
}

// cut trims each still-overloaded gateway to its capacity, max-min fairly:
// every minimum above a level L is cut to L.
func (p *problem) cut(x []float64) {
	var row []float64
	for g := 0; g < p.nG; g++ {
		if len(p.gt[g]) == 0 || p.load(x, g) <= p.cap[g]+p.eps {
			continue
		}
		row = row[:0]
		for _, e := range p.gt[g] {
			row = append(row, x[e])
		}
		level := waterLevel(p.cap[g], row)
		for _, e := range p.gt[g] {
			x[e] = math.Min(x[e], level)
		}
	}
}

// waterLevel returns L with Σ min(v, L) = total, for total < Σ v.
func waterLevel(total float64, vals []float64) float64 {
	s := append([]float64(nil), vals...)
	sort.Float64s(s)
	return sortedWaterLevel(total, s, 0)
}

// sortedWaterLevel is waterLevel over s (sorted ascending) and nInf more
// values that are +Inf.
func sortedWaterLevel(total float64, s []float64, nInf int) float64 {
	remaining := total
	n := len(s) + nInf
	for i, v := range s {
		k := float64(n - i)
		if v*k >= remaining {
			return remaining / k
		}
		remaining -= v
	}
	if nInf > 0 {
		return remaining / float64(nInf)
	}
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1]
}

// shortfalls reports tenants whose placed minimum is short of what they
// wanted.
func (p *problem) shortfalls(xm, want []float64) []Shortfall {
	var out []Shortfall
	totalWant, totalCap := 0.0, 0.0
	for t := 0; t < p.nT; t++ {
		totalWant += want[t]
	}
	for g := 0; g < p.nG; g++ {
		totalCap += p.cap[g]
	}
	for t := 0; t < p.nT; t++ {
		placed := 0.0
		for _, e := range p.tg[t] {
			placed += xm[e]
		}
		if want[t]-placed <= 1e-6*math.Max(1, want[t]) {
			continue
		}
		var reason string
		if totalWant > totalCap {
			reason = fmt.Sprintf("minimums of all tenants with work (%.4g) exceed the capacity of the live gateways (%.4g)", totalWant, totalCap)
		} else {
			var full []string
			for _, e := range p.tg[t] {
				if g := p.eg[e]; p.load(xm, g) >= p.cap[g]-p.eps {
					full = append(full, p.gw[g])
				}
			}
			reason = "the gateways where the tenant has work are full of minimums: " + strings.Join(full, ", ")
		}
		out = append(out, Shortfall{Tenant: p.tn[t], Resource: p.r.String(), Want: want[t], Placed: placed, Reason: reason})
	}
	return out
}
