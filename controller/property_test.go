package controller

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// checkInvariants checks out against in for every resource:
//   - every number is a non-negative number, Minimum ≤ Limit;
//   - per gateway, the limits sum to at most its capacity;
//   - per tenant, the limits sum to at most its maximum;
//   - minimums sit only where the tenant has work, within what it asks;
//   - minimums are all met exactly when some placement can meet them (an
//     independent max-flow decides), and a shortfall is reported otherwise;
//   - work conserving: a gateway keeps capacity idle only if no tenant
//     with work there wants more, and (leftover step) every tenant is at its
//     maximum.
func checkInvariants(t *testing.T, in Input, alg Crystal, out Output) {
	t.Helper()
	tenants := inputTenants(in)
	idx := make(map[string]int, len(tenants))
	for ti, tn := range tenants {
		idx[tn.Tenant] = ti
	}
	limRow, minRow := make([]float64, len(tenants)), make([]float64, len(tenants))
	// row sets limRow and minRow to gateway g's assignments for resource r
	// (the default, then the listed tenants).
	row := func(g string, r Resource) {
		def, hasDef := out.Defaults[g]
		for ti := range limRow {
			limRow[ti], minRow[ti] = def.Limit.Get(r), def.Minimum.Get(r)
		}
		for tn, a := range out.Assignments[g] {
			limRow[idx[tn]], minRow[idx[tn]] = a.Limit.Get(r), a.Minimum.Get(r)
		}
		if !hasDef && len(out.Assignments[g]) != len(tenants) {
			t.Fatalf("%s: %d of %d tenants assigned on %s, and no default", r, len(out.Assignments[g]), len(tenants), g)
		}
	}
	for r := Resource(0); r < NumResources; r++ {
		nG, nT := len(in.Gateways), len(tenants)
		edge := make([][]float64, nG)
		maxOf := make([]float64, nT)
		want := make([]float64, nT)
		total := make([]float64, nT)
		placed := make([]float64, nT)
		for ti, tn := range tenants {
			maxOf[ti] = tn.Max.Get(r)
			if maxOf[ti] == 0 {
				maxOf[ti] = inf
			}
		}
		for gi, g := range in.Gateways {
			edge[gi] = make([]float64, nT)
			for _, l := range g.Loads {
				ti := idx[l.Tenant]
				switch {
				case l.Unbounded[r]:
					edge[gi][ti] = inf
				case l.Demand.Get(r) > 0 && !math.IsInf(edge[gi][ti], 1):
					edge[gi][ti] += l.Demand.Get(r) * (1 + alg.Headroom)
				}
			}
		}
		for gi, g := range in.Gateways {
			c := g.Capacity.Get(r)
			sum := 0.0
			row(g.ID, r)
			for ti, tn := range tenants {
				lim, m := limRow[ti], minRow[ti]
				if math.IsNaN(lim) || math.IsNaN(m) || lim < 0 || m < 0 || m > lim+tol(lim) {
					t.Fatalf("%s: %s on %s: limit %v minimum %v", r, tn.Tenant, g.ID, lim, m)
				}
				if m > edge[gi][ti]+tol(m) {
					t.Errorf("%s: %s has minimum %v on %s where it asks for %v", r, tn.Tenant, m, g.ID, edge[gi][ti])
				}
				sum += lim
				total[ti] += lim
				placed[ti] += m
			}
			if !math.IsInf(c, 1) && sum > c+tol(c) {
				t.Errorf("%s: %s assigned %v over capacity %v", r, g.ID, sum, c)
			}
		}
		sumWant := 0.0
		for ti, tn := range tenants {
			asks := 0.0
			for gi := range in.Gateways {
				asks += edge[gi][ti]
			}
			want[ti] = math.Min(math.Min(tn.Min.Get(r), maxOf[ti]), asks)
			sumWant += want[ti]
			if total[ti] > maxOf[ti]+tol(maxOf[ti]) {
				t.Errorf("%s: %s assigned %v above its maximum %v", r, tn.Tenant, total[ti], maxOf[ti])
			}
			if placed[ti] > want[ti]+tol(want[ti]) {
				t.Errorf("%s: %s placed minimum %v above what it wants, %v", r, tn.Tenant, placed[ti], want[ti])
			}
		}
		caps := make([]float64, nG)
		for gi, g := range in.Gateways {
			caps[gi] = g.Capacity.Get(r)
		}
		flow := maxFlow(want, edge, caps)
		feasible := flow >= sumWant-tol(sumWant)
		reported := false
		for _, s := range out.Shortfalls {
			reported = reported || s.Resource == r.String()
		}
		if feasible {
			for ti, tn := range tenants {
				if placed[ti] < want[ti]-tol(want[ti]) {
					t.Errorf("%s: feasible (max flow %v of %v) but %s placed %v of %v", r, flow, sumWant, tn.Tenant, placed[ti], want[ti])
				}
			}
		}
		if feasible == reported {
			t.Errorf("%s: feasible=%v (max flow %v of %v) but shortfall reported=%v: %+v", r, feasible, flow, sumWant, reported, out.Shortfalls)
		}
		// Work conservation.
		for gi, g := range in.Gateways {
			c := g.Capacity.Get(r)
			if math.IsInf(c, 1) {
				continue
			}
			sum := 0.0
			row(g.ID, r)
			for ti := range tenants {
				sum += limRow[ti]
			}
			if sum >= c-tol(c) {
				continue
			}
			for ti, tn := range tenants {
				atMax := total[ti] >= maxOf[ti]-tol(maxOf[ti])
				lim := limRow[ti]
				if edge[gi][ti] > 0 && lim < edge[gi][ti]-tol(lim) && !atMax {
					t.Errorf("%s: %s has %v idle but %s wants more (limit %v, asks %v)", r, g.ID, c-sum, tn.Tenant, lim, edge[gi][ti])
				}
				if !atMax {
					t.Errorf("%s: %s has %v idle but %s is below its maximum", r, g.ID, c-sum, tn.Tenant)
				}
			}
		}
	}
}

func tol(v float64) float64 {
	if math.IsInf(v, 1) {
		return 0
	}
	return 1e-6 * math.Max(1, math.Abs(v))
}

// maxFlow is the largest total of minimums that fits: source → tenant
// (want) → gateway (edge caps) → sink (capacity). Dinic's algorithm on
// adjacency lists (the 1,000-gateway simulation checks 170,000 edges);
// infinite capacities become "more than everything".
func maxFlow(want []float64, edge [][]float64, caps []float64) float64 {
	nT, nG := len(want), len(caps)
	n := 2 + nT + nG
	src, sink := 0, 1
	big := 1.0
	for _, w := range want {
		big += w
	}
	type arc struct {
		to  int
		c   float64
		rev int // index of the reverse arc in adj[to]
	}
	adj := make([][]arc, n)
	add := func(u, v int, c float64) {
		c = math.Min(c, big)
		if c <= 0 {
			return
		}
		adj[u] = append(adj[u], arc{to: v, c: c, rev: len(adj[v])})
		adj[v] = append(adj[v], arc{to: u, rev: len(adj[u]) - 1})
	}
	for t := 0; t < nT; t++ {
		add(src, 2+t, want[t])
		for g := 0; g < nG; g++ {
			add(2+t, 2+nT+g, edge[g][t])
		}
	}
	for g := 0; g < nG; g++ {
		add(2+nT+g, sink, caps[g])
	}
	eps := 1e-12 * big
	level := make([]int, n)
	next := make([]int, n)
	var push func(u int, f float64) float64
	push = func(u int, f float64) float64 {
		if u == sink {
			return f
		}
		for ; next[u] < len(adj[u]); next[u]++ {
			a := &adj[u][next[u]]
			if a.c <= eps || level[a.to] != level[u]+1 {
				continue
			}
			if d := push(a.to, math.Min(f, a.c)); d > 0 {
				a.c -= d
				adj[a.to][a.rev].c += d
				return d
			}
		}
		return 0
	}
	flow := 0.0
	for {
		for i := range level {
			level[i] = -1
		}
		level[src] = 0
		queue := []int{src}
		for len(queue) > 0 {
			u := queue[0]
			queue = queue[1:]
			for _, a := range adj[u] {
				if a.c > eps && level[a.to] < 0 {
					level[a.to] = level[u] + 1
					queue = append(queue, a.to)
				}
			}
		}
		if level[sink] < 0 {
			return flow
		}
		clear(next)
		for {
			f := push(src, inf)
			if f <= 0 {
				break
			}
			flow += f
		}
	}
}

// randomInput draws a small cluster: some capacities unknown or zero,
// minimums and maximums on some tenants, loads with and without
// back-pressure.
func randomInput(rng *rand.Rand) Input {
	nG, nT := 1+rng.IntN(8), 1+rng.IntN(6)
	var in Input
	for t := 0; t < nT; t++ {
		slo := SLO{Tenant: fmt.Sprintf("t%d", t)}
		for r := Resource(0); r < NumResources; r++ {
			var mn, mx float64
			if rng.IntN(2) == 0 {
				mn = float64(rng.IntN(200))
			}
			if rng.IntN(3) == 0 {
				mx = mn + float64(rng.IntN(200))
			}
			slo.Min.Set(r, mn)
			slo.Max.Set(r, mx)
		}
		if rng.IntN(5) > 0 { // some tenants appear only in loads
			in.Tenants = append(in.Tenants, slo)
		}
	}
	for g := 0; g < nG; g++ {
		gl := GatewayLoad{ID: fmt.Sprintf("g%d", g)}
		for r := Resource(0); r < NumResources; r++ {
			c := float64(10 + rng.IntN(300))
			switch rng.IntN(12) {
			case 0:
				c = inf
			case 1:
				c = 0
			}
			gl.Capacity.Set(r, c)
		}
		for t := 0; t < nT; t++ {
			if rng.IntN(2) == 0 {
				continue
			}
			l := Load{Tenant: fmt.Sprintf("t%d", t)}
			for r := Resource(0); r < NumResources; r++ {
				if rng.IntN(4) > 0 {
					l.Demand.Set(r, float64(rng.IntN(120)))
				}
				l.Unbounded[r] = rng.IntN(2) == 0
			}
			gl.Loads = append(gl.Loads, l)
		}
		in.Gateways = append(in.Gateways, gl)
	}
	return in
}

func TestRandomisedInvariants(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 300
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < n; i++ {
		in := randomInput(rng)
		alg := Crystal{Headroom: []float64{0, 0.1, 0.5}[i%3]}
		out := alg.Assign(in)
		ok := t.Run(fmt.Sprintf("case%d", i), func(t *testing.T) { checkInvariants(t, in, alg, out) })
		if !ok {
			t.Logf("input: %+v", in)
			return
		}
	}
}

// With every tenant pressing on every gateway and no maximums, each
// tenant gets its minimum plus an equal share of the spare (Crystal's
// promise), however uneven the demand that splits the minimums.
func TestRandomisedEqualShare(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 300; i++ {
		nG, nT := 1+rng.IntN(8), 1+rng.IntN(6)
		var in Input
		capTotal, minTotal := 0.0, 0.0
		for g := 0; g < nG; g++ {
			c := float64(100 + rng.IntN(200))
			capTotal += c
			gl := GatewayLoad{ID: fmt.Sprintf("g%d", g), Capacity: readCap(c)}
			for tn := 0; tn < nT; tn++ {
				gl.Loads = append(gl.Loads, wants(fmt.Sprintf("t%d", tn), float64(1+rng.IntN(100))))
			}
			in.Gateways = append(in.Gateways, gl)
		}
		for tn := 0; tn < nT; tn++ {
			m := float64(rng.IntN(int(capTotal) / nT))
			minTotal += m
			in.Tenants = append(in.Tenants, minRead(fmt.Sprintf("t%d", tn), m))
		}
		out := Crystal{}.Assign(in)
		if !out.Feasible() {
			t.Fatalf("case %d: infeasible: %+v", i, out.Shortfalls)
		}
		share := (capTotal - minTotal) / float64(nT)
		tot := readTotals(expand(in, out))
		for _, slo := range in.Tenants {
			if got, want := tot[slo.Tenant], slo.Min.ReadBPS+share; math.Abs(got-want) > 1e-3*capTotal {
				t.Errorf("case %d: %s got %.4f, want min %.0f + share %.4f = %.4f", i, slo.Tenant, got, slo.Min.ReadBPS, share, want)
			}
		}
		checkInvariants(t, in, Crystal{}, out)
	}
}
