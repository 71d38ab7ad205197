package controller

// The dense implementation of Crystal as it was before the sparse rewrite
// (commit b3ff3c0), kept as the reference the sparse one is compared
// against (TestSparseMatchesDense). Test-only: nG×nT matrices per resource.

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// denseCrystal is Crystal's Algorithm 1 (minimum SLO, then an equal share of the
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
type denseCrystal struct {
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
func (c denseCrystal) Name() string { return "crystal-min-slo-share-spare" }

// Assign implements Algorithm.
func (c denseCrystal) Assign(in Input) Output {
	tenants := denseInputTenants(in)
	out := Output{Assignments: make(map[string]map[string]Assignment, len(in.Gateways))}
	for _, g := range in.Gateways {
		out.Assignments[g.ID] = make(map[string]Assignment, len(tenants))
	}
	for r := Resource(0); r < NumResources; r++ {
		p := denseNewProblem(in, tenants, r, c.Headroom)
		xm, want := p.placeMinimums()
		out.Shortfalls = append(out.Shortfalls, p.shortfalls(xm, want)...)
		x := p.share(xm, c.MaxSteps)
		for gi, g := range in.Gateways {
			m := out.Assignments[g.ID]
			for ti, t := range tenants {
				a := m[t.Tenant]
				a.Limit.Set(r, x[gi*p.nT+ti])
				a.Minimum.Set(r, xm[gi*p.nT+ti])
				m[t.Tenant] = a
			}
		}
	}
	return out
}

// denseInputTenants returns in.Tenants plus tenants named only in loads, sorted.
func denseInputTenants(in Input) []SLO {
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

// denseProblem is one resource's allocation denseProblem. Matrices are flat,
// indexed g*nT+t.
type denseProblem struct {
	r        Resource
	nG, nT   int
	gw       []string
	tn       []string
	cap      []float64 // per gateway; +Inf unknown
	min, max []float64 // per tenant; max +Inf when none
	dem      []float64 // demand per edge
	edge     []float64 // what the tenant may be given on the gateway: +Inf unbounded, 0 no work
	tg       [][]int   // per tenant, the gateways where it has work
	gt       [][]int   // per gateway, the tenants with work there
	eps      float64
	sorted   []float64 // scratch for spread
}

func denseNewProblem(in Input, tenants []SLO, r Resource, headroom float64) *denseProblem {
	nG, nT := len(in.Gateways), len(tenants)
	p := &denseProblem{r: r, nG: nG, nT: nT, gw: make([]string, nG), tn: make([]string, nT),
		cap: make([]float64, nG), min: make([]float64, nT), max: make([]float64, nT),
		dem: make([]float64, nG*nT), edge: make([]float64, nG*nT)}
	scale := 1.0
	idx := make(map[string]int, nT)
	for ti, t := range tenants {
		idx[t.Tenant] = ti
		p.tn[ti] = t.Tenant
		p.min[ti] = t.Min.Get(r)
		p.max[ti] = t.Max.Get(r)
		if p.max[ti] <= 0 {
			p.max[ti] = math.Inf(1)
		}
		scale = math.Max(scale, denseFinite(p.min[ti]))
	}
	for gi, g := range in.Gateways {
		p.gw[gi] = g.ID
		p.cap[gi] = g.Capacity.Get(r)
		scale = math.Max(scale, denseFinite(p.cap[gi]))
		for _, l := range g.Loads {
			ti, ok := idx[l.Tenant]
			if !ok || !l.active(r) {
				continue
			}
			d := l.Demand.Get(r)
			p.dem[gi*nT+ti] += d
			switch {
			case l.Unbounded[r]:
				p.edge[gi*nT+ti] = math.Inf(1)
			case !math.IsInf(p.edge[gi*nT+ti], 1):
				p.edge[gi*nT+ti] += d * (1 + headroom)
			}
			scale = math.Max(scale, denseFinite(d))
		}
	}
	p.eps = 1e-9 * scale
	p.tg, p.gt = make([][]int, nT), make([][]int, nG)
	for g := 0; g < nG; g++ {
		for t := 0; t < nT; t++ {
			if p.edge[g*nT+t] > 0 {
				p.tg[t] = append(p.tg[t], g)
				p.gt[g] = append(p.gt[g], t)
			}
		}
	}
	return p
}

func denseFinite(v float64) float64 {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return 0
	}
	return v
}

func (p *denseProblem) active(g, t int) bool { return p.edge[g*p.nT+t] > 0 }

// placeMinimums is step 1. It returns the placed minimums and what each
// tenant wanted placed.
func (p *denseProblem) placeMinimums() (xm, want []float64) {
	xm = make([]float64, p.nG*p.nT)
	want = make([]float64, p.nT)
	for t := 0; t < p.nT; t++ {
		w := math.Min(p.min[t], p.max[t])
		total := 0.0
		for _, g := range p.tg[t] {
			total += p.edge[g*p.nT+t]
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

// splitByDemand places w of tenant t over its gateways in proportion to its
// demand there, no edge above its cap. w must not exceed the caps' sum.
func (p *denseProblem) splitByDemand(t int, w float64, x []float64) {
	free := append([]int(nil), p.tg[t]...)
	remaining := w
	for len(free) > 0 && remaining > p.eps {
		weights := make([]float64, len(free))
		sum := 0.0
		for i, g := range free {
			weights[i] = p.dem[g*p.nT+t]
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
		for i, g := range free {
			k := g*p.nT + t
			if remaining*weights[i]/sum >= p.edge[k]-x[k] {
				remaining -= p.edge[k] - x[k]
				x[k] = p.edge[k]
				clamped = true
			} else {
				keep = append(keep, g)
			}
		}
		if !clamped {
			for i, g := range free {
				x[g*p.nT+t] += remaining * weights[i] / sum
			}
			return
		}
		free = keep
	}
}

// load returns what x puts on gateway g (x is non-zero only where
// tenants have work).
func (p *denseProblem) load(x []float64, g int) float64 {
	s := 0.0
	for _, t := range p.gt[g] {
		s += x[g*p.nT+t]
	}
	return s
}

// reroute moves minimums off overloaded gateways along augmenting paths
// gateway →(a tenant's minimum there)→ gateway where the same tenant has
// room → … → a gateway with spare capacity.
func (p *denseProblem) reroute(x []float64) {
	load := make([]float64, p.nG)
	for g := range load {
		load[g] = p.load(x, g)
	}
	parentG := make([]int, p.nG) // tenant through which a gateway was reached
	parentT := make([]int, p.nT) // gateway from which a tenant was reached
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
		sink := -1
		for len(queue) > 0 && sink < 0 {
			g := queue[0]
			queue = queue[1:]
			for _, t := range p.gt[g] {
				if sink >= 0 {
					break
				}
				if parentT[t] >= 0 || x[g*p.nT+t] <= p.eps {
					continue
				}
				parentT[t] = g
				for _, g2 := range p.tg[t] {
					k := g2*p.nT + t
					if parentG[g2] != -2 || p.edge[k]-x[k] <= p.eps {
						continue
					}
					parentG[g2] = t
					if p.cap[g2]-load[g2] > p.eps {
						sink = g2
						break
					}
					queue = append(queue, g2)
				}
			}
		}
		if sink < 0 {
			return // no way to move anything: the rest is cut
		}
		// Bottleneck along the path, walked back from the sink.
		b := p.cap[sink] - load[sink]
		g := sink
		for parentG[g] >= 0 {
			t := parentG[g]
			from := parentT[t]
			b = math.Min(b, p.edge[g*p.nT+t]-x[g*p.nT+t])
			b = math.Min(b, x[from*p.nT+t])
			g = from
		}
		b = math.Min(b, load[g]-p.cap[g])
		g = sink
		for parentG[g] >= 0 {
			t := parentG[g]
			from := parentT[t]
			x[g*p.nT+t] += b
			x[from*p.nT+t] = math.Max(0, x[from*p.nT+t]-b)
			g = from
		}
		load[sink] += b
		load[g] -= b
	}
}

// cut trims each still-overloaded gateway to its capacity, max-min fairly:
// every minimum above a level L is cut to L.
func (p *denseProblem) cut(x []float64) {
	for g := 0; g < p.nG; g++ {
		if p.load(x, g) <= p.cap[g]+p.eps {
			continue
		}
		row := x[g*p.nT : (g+1)*p.nT]
		level := denseWaterLevel(p.cap[g], row)
		for t := range row {
			row[t] = math.Min(row[t], level)
		}
	}
}

// denseWaterLevel returns L with Σ min(v, L) = total, for total < Σ v.
func denseWaterLevel(total float64, vals []float64) float64 {
	s := append([]float64(nil), vals...)
	sort.Float64s(s)
	remaining := total
	for i, v := range s {
		k := float64(len(s) - i)
		if v*k >= remaining {
			return remaining / k
		}
		remaining -= v
	}
	return s[len(s)-1]
}

// shortfalls reports tenants whose placed minimum is short of what they
// wanted.
func (p *denseProblem) shortfalls(xm, want []float64) []Shortfall {
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
		for g := 0; g < p.nG; g++ {
			placed += xm[g*p.nT+t]
		}
		if want[t]-placed <= 1e-6*math.Max(1, want[t]) {
			continue
		}
		var reason string
		if totalWant > totalCap {
			reason = fmt.Sprintf("minimums of all tenants with work (%.4g) exceed the capacity of the live gateways (%.4g)", totalWant, totalCap)
		} else {
			var full []string
			for g := 0; g < p.nG; g++ {
				if p.active(g, t) && p.load(xm, g) >= p.cap[g]-p.eps {
					full = append(full, p.gw[g])
				}
			}
			reason = "the gateways where the tenant has work are full of minimums: " + strings.Join(full, ", ")
		}
		out = append(out, Shortfall{Tenant: p.tn[t], Resource: p.r.String(), Want: want[t], Placed: placed, Reason: reason})
	}
	return out
}

// share runs steps 2–4 from the placed minimums and returns the limits.
func (p *denseProblem) share(xm []float64, maxSteps int) []float64 {
	if maxSteps <= 0 {
		maxSteps = 32
	}
	s := denseNewSharing(p, xm)
	s.progressiveFill(maxSteps)
	s.conserveWork()
	s.spreadLeftover()
	return s.x
}

// denseSharing is the state of steps 2–4: the limits so far and what is left
// of each gateway's capacity, each tenant's maximum and each edge's room.
type denseSharing struct {
	p      *denseProblem
	x      []float64 // limits, by gateway*nT + tenant
	spare  []float64 // by gateway
	budget []float64 // by tenant: its maximum less what it has
	room   []float64 // by edge: its demand ceiling less what it has
}

func denseNewSharing(p *denseProblem, xm []float64) *denseSharing {
	nT := p.nT
	s := &denseSharing{p: p, x: append([]float64(nil), xm...),
		spare: make([]float64, p.nG), budget: make([]float64, nT), room: make([]float64, p.nG*nT)}
	for g := range s.spare {
		s.spare[g] = math.Max(0, p.cap[g]-p.load(s.x, g))
	}
	for t := range s.budget {
		used := 0.0
		for g := 0; g < p.nG; g++ {
			used += s.x[g*nT+t]
		}
		s.budget[t] = math.Max(0, p.max[t]-used) // +Inf stays +Inf
	}
	for k := range s.room {
		if p.edge[k] > 0 {
			s.room[k] = math.Max(0, p.edge[k]-s.x[k])
		}
	}
	return s
}

// give adds v to tenant t's limit on gateway g.
func (s *denseSharing) give(g, t int, v float64) {
	k := g*s.p.nT + t
	s.x[k] += v
	if math.IsInf(v, 1) {
		s.room[k] = 0
	} else if !math.IsInf(s.room[k], 1) {
		s.room[k] = math.Max(0, s.room[k]-v)
	}
	s.take(g, t, v)
}

// take counts v against gateway g's spare and tenant t's budget.
func (s *denseSharing) take(g, t int, v float64) {
	if !math.IsInf(s.spare[g], 1) {
		s.spare[g] = math.Max(0, s.spare[g]-v)
	}
	if !math.IsInf(s.budget[t], 1) {
		s.budget[t] = math.Max(0, s.budget[t]-v)
	}
}

// progressiveFill is step 2: every tenant with budget grows by the same
// delta per step, spread over its gateways' fair slots, until no one can.
func (s *denseSharing) progressiveFill(maxSteps int) {
	p, nT := s.p, s.p.nT
	count := make([]int, p.nG)
	fair := make([]float64, p.nG) // spare per contender, fixed for a step
	slots := make([]float64, p.nG)
	var gs []int
	var fs []float64
	for step := 0; step < maxSteps; step++ {
		s.contenders(count, fair)
		delta, found := math.Inf(1), false
		for t := 0; t < nT; t++ {
			if s.budget[t] <= p.eps {
				continue
			}
			sum, has := 0.0, false
			for _, g := range p.tg[t] {
				if count[g] > 0 && s.room[g*nT+t] > p.eps {
					sum += math.Min(s.room[g*nT+t], fair[g])
					has = true
				}
			}
			if has {
				found = true
				delta = math.Min(delta, math.Min(s.budget[t], sum))
			}
		}
		if !found || delta <= p.eps {
			return
		}
		for t := 0; t < nT; t++ {
			if s.budget[t] <= p.eps {
				continue
			}
			gs, fs = gs[:0], fs[:0]
			for _, g := range p.tg[t] {
				if count[g] > 0 && s.room[g*nT+t] > p.eps {
					gs = append(gs, g)
					fs = append(fs, math.Min(s.room[g*nT+t], fair[g]))
				}
			}
			if len(gs) == 0 {
				continue
			}
			takes := p.spread(t, delta, gs, fs, slots)
			for i, g := range gs {
				if takes[i] > 0 {
					s.give(g, t, takes[i])
				}
			}
		}
		if math.IsInf(delta, 1) {
			return
		}
	}
}

// contenders counts, per gateway with spare, the tenants that can still
// grow there, and sets fair to the spare per contender.
func (s *denseSharing) contenders(count []int, fair []float64) {
	p := s.p
	for g := range count {
		count[g] = 0
		if s.spare[g] <= p.eps {
			continue
		}
		for _, t := range p.gt[g] {
			if s.budget[t] > p.eps && s.room[g*p.nT+t] > p.eps {
				count[g]++
			}
		}
		if count[g] > 0 {
			fair[g] = s.spare[g] / float64(count[g])
		}
	}
}

// conserveWork is step 3: per gateway, spare capacity goes to the tenants
// with work there, within their room and budget.
func (s *denseSharing) conserveWork() {
	p := s.p
	var caps []float64
	for g := 0; g < p.nG; g++ {
		if s.spare[g] <= p.eps {
			continue
		}
		caps = caps[:0]
		for _, t := range p.gt[g] {
			c := 0.0
			if s.budget[t] > p.eps {
				c = math.Min(s.room[g*p.nT+t], s.budget[t])
			}
			caps = append(caps, c)
		}
		for i, v := range denseFill(s.spare[g], caps) {
			if v > 0 {
				s.give(g, p.gt[g][i], v)
			}
		}
	}
}

// spreadLeftover is step 4: leftover nobody wants, to everyone within
// their maximum; a maximum is spread evenly over the gateways with
// leftover rather than spent on the first ones.
func (s *denseSharing) spreadLeftover() {
	p := s.p
	var left []int
	for g := 0; g < p.nG; g++ {
		if s.spare[g] > p.eps {
			left = append(left, g)
		}
	}
	caps := make([]float64, p.nT)
	for i := 0; i < 2*len(left); i++ {
		// First pass: an even part of what is left of each budget per
		// gateway; second pass: whatever the first could not place.
		g, parts := left[i%len(left)], 1.0
		if i < len(left) {
			parts = float64(len(left) - i)
		}
		if s.spare[g] <= p.eps {
			continue
		}
		for t := range caps {
			caps[t] = s.budget[t] / parts // +Inf stays +Inf
		}
		for t, v := range denseFill(s.spare[g], caps) {
			if v > 0 {
				s.x[g*p.nT+t] += v
				s.take(g, t, v)
			}
		}
	}
}

// spread splits delta of tenant t over its slots fs (one per gateway in
// gs), taking from the largest slots first so that the slots left are as
// even as possible; unbounded slots absorb everything, in proportion to
// demand. The result reuses buf.
func (p *denseProblem) spread(t int, delta float64, gs []int, fs []float64, buf []float64) []float64 {
	takes := buf[:len(fs)]
	for i := range takes {
		takes[i] = 0
	}
	if math.IsInf(delta, 1) {
		for i, f := range fs {
			if math.IsInf(f, 1) {
				takes[i] = f
			}
		}
		return takes
	}
	if len(fs) == 1 {
		takes[0] = delta
		return takes
	}
	infSum, nInf := 0.0, 0
	for i, f := range fs {
		if math.IsInf(f, 1) {
			infSum += p.dem[gs[i]*p.nT+t]
			nInf++
		}
	}
	if nInf > 0 {
		for i, f := range fs {
			if !math.IsInf(f, 1) {
				continue
			}
			if infSum > 0 {
				takes[i] = delta * p.dem[gs[i]*p.nT+t] / infSum
			} else {
				takes[i] = delta / float64(nInf)
			}
		}
		return takes
	}
	// Level λ with Σ max(0, f−λ) = delta: take the slots largest first.
	p.sorted = append(p.sorted[:0], fs...)
	denseSortDescending(p.sorted)
	level, sum := 0.0, 0.0
	for k, f := range p.sorted {
		sum += f
		level = (sum - delta) / float64(k+1)
		if k+1 == len(p.sorted) || level >= p.sorted[k+1] {
			break
		}
	}
	level = math.Max(0, level)
	for i, f := range fs {
		takes[i] = math.Max(0, f-level)
	}
	return takes
}

// denseSortDescending sorts a (no NaNs) largest first: insertion sort for the
// few gateways a tenant usually has, the library sort beyond.
func denseSortDescending(a []float64) {
	if len(a) > 32 {
		slices.Sort(a)
		slices.Reverse(a)
		return
	}
	for i := 1; i < len(a); i++ {
		v, j := a[i], i
		for j > 0 && a[j-1] < v {
			a[j] = a[j-1]
			j--
		}
		a[j] = v
	}
}

// denseFill shares total among caps max-min fairly: each gets min(cap, L), as
// much as total allows. An infinite total gives every cap in full.
func denseFill(total float64, caps []float64) []float64 {
	out := make([]float64, len(caps))
	sum := 0.0
	for _, c := range caps {
		sum += c
	}
	if math.IsInf(total, 1) || sum <= total {
		copy(out, caps)
		return out
	}
	level := denseWaterLevel(total, caps)
	for i, c := range caps {
		out[i] = math.Min(c, level)
	}
	return out
}
