package controller

import (
	"math"
	"slices"
	"sort"
)

// share runs steps 2–4 from the placed minimums (per edge).
func (p *problem) share(xm []float64, maxSteps int) *solution {
	if maxSteps <= 0 {
		maxSteps = 32
	}
	s := newSharing(p, xm)
	s.progressiveFill(maxSteps)
	s.conserveWork()
	s.spreadLeftover()
	return &solution{p: p, x: s.x, xm: xm, def: s.def, extra: s.extra}
}

// sharing is the state of steps 2–4: the limits so far and what is left
// of each gateway's capacity, each tenant's maximum and each edge's room.
type sharing struct {
	p      *problem
	x      []float64 // limits, per edge
	spare  []float64 // per gateway
	budget []float64 // per tenant: its maximum less what it has
	room   []float64 // per edge: its demand ceiling less what it has
	// Step 4's results off the edges: per gateway, the limit of every
	// tenant without an edge there and without a maximum (def), and of
	// each tenant with a maximum and no edge there (extra, by tenant).
	def   []float64
	extra []map[int]float64
}

func newSharing(p *problem, xm []float64) *sharing {
	s := &sharing{p: p, x: append([]float64(nil), xm...),
		spare: make([]float64, p.nG), budget: make([]float64, p.nT), room: make([]float64, len(xm)),
		def: make([]float64, p.nG), extra: make([]map[int]float64, p.nG)}
	for g := range s.spare {
		s.spare[g] = max(0, p.cap[g]-p.load(s.x, g))
	}
	for t := range s.budget {
		used := 0.0
		for _, e := range p.tg[t] {
			used += s.x[e]
		}
		s.budget[t] = max(0, p.max[t]-used) // +Inf stays +Inf
	}
	for e := range s.room {
		s.room[e] = max(0, p.edge[e]-s.x[e])
	}
	return s
}

// give adds v to the limit of edge e.
func (s *sharing) give(e int, v float64) {
	s.x[e] += v
	if math.IsInf(v, 1) {
		s.room[e] = 0
	} else if !math.IsInf(s.room[e], 1) {
		s.room[e] = max(0, s.room[e]-v)
	}
	s.take(s.p.eg[e], s.p.et[e], v)
}

// take counts v against gateway g's spare and tenant t's budget.
func (s *sharing) take(g, t int, v float64) {
	if !math.IsInf(s.spare[g], 1) {
		s.spare[g] = max(0, s.spare[g]-v)
	}
	if !math.IsInf(s.budget[t], 1) {
		s.budget[t] = max(0, s.budget[t]-v)
	}
}

// progressiveFill is step 2: every tenant with budget grows by the same
// delta per step, spread over its gateways' fair slots, until no one can.
//
// It walks tenants, so it works on tenant-major copies of the edges (the
// slots of tenant t are off[t]..off[t+1], in gateway order), written back
// at the end. A tenant's budget, an edge's room and a gateway's spare only
// shrink, so an edge that cannot grow (no room, or a gateway without
// spare) never can again, nor a tenant without budget: each step drops
// them from the tenants' lists of live slots and from the list of active
// tenants (both kept in order), and visits only what is left.
func (s *sharing) progressiveFill(maxSteps int) {
	p := s.p
	nE := len(p.eg)
	f := &filling{s: s, off: make([]int, p.nT+1), sg: make([]int, nE), sx: make([]float64, nE),
		sroom: make([]float64, nE), sdem: make([]float64, nE), live: make([]int, nE), n: make([]int, p.nT), order: make([]int, nE),
		slot: make([]float64, nE), count: make([]int, p.nG), fair: make([]float64, p.nG), buf: make([]float64, p.nG)}
	for t := 0; t < p.nT; t++ {
		f.off[t+1] = f.off[t] + len(p.tg[t])
		for j, e := range p.tg[t] {
			i := f.off[t] + j
			f.sg[i], f.sx[i], f.sroom[i], f.sdem[i], f.live[i], f.order[i] = p.eg[e], s.x[e], s.room[e], p.dem[e], i, j
		}
		if f.n[t] = len(p.tg[t]); f.n[t] > 0 {
			f.active = append(f.active, t)
		}
	}
	for step := 0; step < maxSteps && f.step(); step++ {
	}
	for t := 0; t < p.nT; t++ {
		for j, e := range p.tg[t] {
			s.x[e], s.room[e] = f.sx[f.off[t]+j], f.sroom[f.off[t]+j]
		}
	}
}

// filling is progressiveFill's state: per slot (tenant-major edge) its
// gateway, limit, room and demand; per tenant its live slots
// (live[off[t]:off[t]+n[t]]); the active tenants; per step the slots'
// fair values (aligned with live), and per gateway the contenders and
// the fair share.
type filling struct {
	s               *sharing
	off, sg         []int
	sx, sroom, sdem []float64
	live, n, order  []int // order: per tenant, its live slots' positions by fair value, largest first
	active          []int
	slot            []float64
	count           []int
	fair, buf       []float64
}

// step runs one step of progressive filling and reports whether another
// may follow.
func (f *filling) step() bool {
	s, p := f.s, f.s.p
	f.contenders()
	if len(f.active) == 0 {
		return false
	}
	delta := math.Inf(1)
	anyInf := false
	for _, t := range f.active {
		sum := 0.0
		base := f.off[t]
		for j, i := range f.live[base : base+f.n[t]] {
			v := min(f.sroom[i], f.fair[f.sg[i]])
			f.slot[base+j] = v
			sum += v
		}
		anyInf = anyInf || math.IsInf(sum, 1)
		delta = min(delta, min(s.budget[t], sum))
	}
	if delta <= p.eps {
		return false
	}
	for _, t := range f.active {
		base, n := f.off[t], f.n[t]
		live, fs := f.live[base:base+n], f.slot[base:base+n]
		if anyInf || n == 1 || math.IsInf(delta, 1) {
			takes := p.spread(delta, fs, func(j int) float64 { return f.sdem[live[j]] }, f.buf, f.order[base:base+n])
			for j, v := range takes {
				if v > 0 {
					f.give(t, live[j], v)
				}
			}
			continue
		}
		// spread's common case (finite slots, finite delta), inline.
		order := f.order[base : base+n]
		sortOrder(order, fs)
		level, sum := 0.0, 0.0
		for k, j := range order {
			sum += fs[j]
			level = (sum - delta) / float64(k+1)
			if k+1 == n || level >= fs[order[k+1]] {
				break
			}
		}
		level = max(0, level)
		f.giveAll(t, live, fs, level)
	}
	return !math.IsInf(delta, 1)
}

// giveAll gives tenant t, on each live slot, what its fair value fs has
// above level: give, for finite amounts, without branches (the same
// arithmetic: a slot at or below level gets +0, which changes nothing,
// and +Inf less a finite amount stays +Inf).
func (f *filling) giveAll(t int, live []int, fs []float64, level float64) {
	s := f.s
	b := s.budget[t]
	for j, v := range fs {
		v = max(v-level, 0)
		i := live[j]
		f.sx[i] += v
		f.sroom[i] = max(f.sroom[i]-v, 0)
		g := f.sg[i]
		s.spare[g] = max(s.spare[g]-v, 0)
		b = max(b-v, 0)
	}
	s.budget[t] = b
}

// give adds v to tenant t's slot i.
func (f *filling) give(t, i int, v float64) {
	f.sx[i] += v
	if math.IsInf(v, 1) {
		f.sroom[i] = 0
	} else if !math.IsInf(f.sroom[i], 1) {
		f.sroom[i] = max(0, f.sroom[i]-v)
	}
	f.s.take(f.sg[i], t, v)
}

// contenders drops from the active tenants those without budget, and from
// each one's live slots those without room or on a gateway without spare;
// it counts the live slots per gateway and sets fair to the gateway's
// spare per contender.
func (f *filling) contenders() {
	s, p := f.s, f.s.p
	clear(f.count)
	kept := f.active[:0]
	for _, t := range f.active {
		if s.budget[t] <= p.eps {
			continue
		}
		base, k := f.off[t], 0
		for _, i := range f.live[base : base+f.n[t]] {
			if g := f.sg[i]; s.spare[g] > p.eps && f.sroom[i] > p.eps {
				f.live[base+k] = i
				k++
				f.count[g]++
			}
		}
		if k < f.n[t] {
			for j := range k { // positions moved: sorted again from scratch
				f.order[base+j] = j
			}
		}
		if f.n[t] = k; k > 0 {
			kept = append(kept, t)
		}
	}
	f.active = kept
	for g, n := range f.count {
		if n > 0 {
			f.fair[g] = s.spare[g] / float64(n)
		}
	}
}

// conserveWork is step 3: per gateway, spare capacity goes to the tenants
// with work there, within their room and budget.
func (s *sharing) conserveWork() {
	p := s.p
	var caps []float64
	for g := 0; g < p.nG; g++ {
		if s.spare[g] <= p.eps {
			continue
		}
		caps = caps[:0]
		for _, e := range p.gt[g] {
			c := 0.0
			if t := p.et[e]; s.budget[t] > p.eps {
				c = min(s.room[e], s.budget[t])
			}
			caps = append(caps, c)
		}
		for i, v := range fill(s.spare[g], caps) {
			if v > 0 {
				s.give(p.gt[g][i], v)
			}
		}
	}
}

// spreadLeftover is step 4: leftover nobody wants, to everyone within
// their maximum; a maximum is spread evenly over the gateways with
// leftover rather than spent on the first ones. Every tenant without a
// maximum gets the same share of a gateway (its water level), so they are
// counted, not visited: their share goes to the gateway's default and to
// their edges there. Tenants with a maximum are followed one by one.
func (s *sharing) spreadLeftover() {
	p := s.p
	var left []int
	for g := 0; g < p.nG; g++ {
		if s.spare[g] > p.eps {
			left = append(left, g)
		}
	}
	if len(left) == 0 {
		return
	}
	var bounded []int // tenants with a maximum, in index order
	for t := 0; t < p.nT; t++ {
		if !math.IsInf(p.max[t], 1) {
			bounded = append(bounded, t)
		}
	}
	nInf := p.nT - len(bounded)
	edgeOf := make([]int, p.nT) // tenant → 1 + its edge on the gateway at hand
	caps := make([]float64, len(bounded))
	var sorted []float64
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
		sum := 0.0
		for j, t := range bounded {
			caps[j] = s.budget[t] / parts
			sum += caps[j]
		}
		if nInf > 0 {
			sum = math.Inf(1)
		}
		// fill(spare, caps of every tenant), with the +Inf caps counted.
		level := math.Inf(1)
		if !math.IsInf(s.spare[g], 1) && sum > s.spare[g] {
			sorted = append(sorted[:0], caps...)
			sort.Float64s(sorted)
			level = sortedWaterLevel(s.spare[g], sorted, nInf)
		}
		for _, e := range p.gt[g] {
			edgeOf[p.et[e]] = e + 1
		}
		given := 0.0
		if nInf > 0 && level > 0 {
			s.def[g] += level
			given += level * float64(nInf)
			for _, e := range p.gt[g] {
				if math.IsInf(s.budget[p.et[e]], 1) {
					s.x[e] += level
				}
			}
		}
		if len(bounded) > 0 && s.extra[g] == nil {
			s.extra[g] = make(map[int]float64, len(bounded))
		}
		for j, t := range bounded {
			v := min(caps[j], level)
			if edgeOf[t] == 0 {
				s.extra[g][t] += max(v, 0) // listed even at 0: the default does not apply
			}
			if v <= 0 {
				continue
			}
			if edgeOf[t] != 0 {
				s.x[edgeOf[t]-1] += v
			}
			given += v
			s.budget[t] = max(0, s.budget[t]-v)
		}
		if !math.IsInf(s.spare[g], 1) {
			s.spare[g] = max(0, s.spare[g]-given)
		}
		for _, e := range p.gt[g] {
			edgeOf[p.et[e]] = 0
		}
	}
}

// spread splits delta of one tenant over its slots fs, taking from the
// largest slots first so that the slots left are as even as possible;
// unbounded slots absorb everything, in proportion to demand (dem(i) is
// the tenant's demand behind slot i). The result reuses buf. order, when
// not nil, is a permutation of fs's indexes, sorted here largest value
// first: progressive filling keeps each tenant's from one step to the
// next, where it is nearly sorted already (the same values, so the same
// result, as sorting a copy).
func (p *problem) spread(delta float64, fs []float64, dem func(int) float64, buf []float64, order []int) []float64 {
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
			infSum += dem(i)
			nInf++
		}
	}
	if nInf > 0 {
		for i, f := range fs {
			if !math.IsInf(f, 1) {
				continue
			}
			if infSum > 0 {
				takes[i] = delta * dem(i) / infSum
			} else {
				takes[i] = delta / float64(nInf)
			}
		}
		return takes
	}
	// Level λ with Σ max(0, f−λ) = delta: take the slots largest first.
	level := 0.0
	if order != nil {
		sortOrder(order, fs)
		sum := 0.0
		for k, j := range order {
			sum += fs[j]
			level = (sum - delta) / float64(k+1)
			if k+1 == len(order) || level >= fs[order[k+1]] {
				break
			}
		}
	} else {
		p.sorted = append(p.sorted[:0], fs...)
		sortDescending(p.sorted)
		sum := 0.0
		for k, f := range p.sorted {
			sum += f
			level = (sum - delta) / float64(k+1)
			if k+1 == len(p.sorted) || level >= p.sorted[k+1] {
				break
			}
		}
	}
	level = max(0, level)
	for i, f := range fs {
		takes[i] = max(0, f-level)
	}
	return takes
}

// sortOrder sorts order (indexes of fs, no NaNs) by fs, largest first:
// insertion sort, linear on the nearly sorted orders it is given.
func sortOrder(order []int, fs []float64) {
	for i := 1; i < len(order); i++ {
		o := order[i]
		v, j := fs[o], i
		for j > 0 && fs[order[j-1]] < v {
			order[j] = order[j-1]
			j--
		}
		order[j] = o
	}
}

// sortDescending sorts a (no NaNs) largest first: insertion sort for the
// few gateways a tenant usually has, the library sort beyond.
func sortDescending(a []float64) {
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

// fill shares total among caps max-min fairly: each gets min(cap, L), as
// much as total allows. An infinite total gives every cap in full.
func fill(total float64, caps []float64) []float64 {
	out := make([]float64, len(caps))
	sum := 0.0
	for _, c := range caps {
		sum += c
	}
	if math.IsInf(total, 1) || sum <= total {
		copy(out, caps)
		return out
	}
	level := waterLevel(total, caps)
	for i, c := range caps {
		out[i] = min(c, level)
	}
	return out
}
